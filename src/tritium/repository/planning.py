"""Deciding what a load will build, from the files alone: which models the repositories hold, the config
(file or a client's override), the versions its policy selects, and what changed since the last load.

Nothing here builds or runs a model; the planning functions run on a load thread (they read files).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import json_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.autocomplete import version_dirs
from tritium.config.parse import check_config_values, config_path, read_model_config
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError
from tritium.core.names import name_problem, shown

from .fingerprint import model_fingerprint, version_fingerprint
from .state import NAMESPACE_SEPARATOR, ModelEntry, State, VersionSlot
from .storage import ModelSource, ModelStorage
from .versions import select_versions

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a load will build, decided from the files before anything is built."""

    #: The config read (or given as an override); ``None`` when there is no config file.
    config: mc.ModelConfig | None
    model_dir: str
    fingerprint: str
    #: Version -> fingerprint of every version the policy selects, ascending.
    versions: dict[int, str]
    #: The config is a client's override (repository API), not the operator's file.
    from_client: bool = False

    @property
    def wanted(self) -> list[int]:
        return list(self.versions)


class PollFailure(InternalError):
    """The model's config cannot be read: Triton treats the folder as no model at all."""


def scan(storages: Sequence[ModelStorage], ignored: set[str], failures: list[TritiumError] | None = None,
         namespacing: bool = False) -> dict[str, ModelSource | None]:
    """Model key -> where it is, for every model in the repositories.  The key is the model's name; a name in
    two repositories maps to ``None``, or with ``namespacing`` each copy has its own key,
    ``<repository>\0<name>``.

    Folders whose names cannot be model names are skipped, with a warning the first time (``ignored``
    remembers them).  A repository that cannot be read raises, unless ``failures`` collects the errors
    (then the other repositories are still scanned).
    """
    found = _scan(storages, ignored, failures)
    if not namespacing:
        return {name: sources[0] if len(sources) == 1 else None for name, sources in found.items()}
    keyed: dict[str, ModelSource | None] = {}
    for name, sources in found.items():
        if len(sources) == 1:
            keyed[name] = sources[0]
        else:
            for source in sources:
                keyed[os.path.dirname(str(source)) + NAMESPACE_SEPARATOR + name] = source
    return keyed


def _scan(storages: Sequence[ModelStorage], ignored: set[str],
          failures: list[TritiumError] | None) -> dict[str, list[ModelSource]]:
    found: dict[str, list[ModelSource]] = {}
    for storage in storages:
        try:
            entries = storage.list_models()
        except TritiumError as e:
            if failures is None:
                raise
            log.error("%s", e)
            failures.append(e)
            continue
        for entry in entries:
            if entry.startswith("."):
                continue
            problem = name_problem(entry)
            if problem is not None:
                if entry not in ignored:
                    ignored.add(entry)
                    log.warning("model folder '%s' of repository '%s' is ignored: %s", shown(entry),
                                storage.location, problem)
                continue
            found.setdefault(entry, []).append(ModelSource(storage, entry))
    return found


def plan_load(name: str, model_dir: str, config_json: str | None, config_name: str) -> Plan:
    """Read the config (or the override) and pick the versions, without building anything.

    Raises :class:`PollFailure` when the config file cannot be read.
    """
    config: mc.ModelConfig | None
    if config_json is not None:
        try:
            config = json_format.Parse(config_json, mc.ModelConfig())
        except json_format.ParseError as e:
            raise InvalidArgumentError(f"failed to load '{name}': Invalid config override: {e}") from None
        check_config_values(config, name)
        source = "config override\0" + config_json
    else:
        try:
            config = read_model_config(model_dir, config_name, name)
        except TritiumError as e:
            raise PollFailure(str(e)) from None
        source = config_path(model_dir, config_name)
    policy = config.version_policy if config is not None and config.HasField("version_policy") else None
    versions = select_versions(policy or mc.ModelVersionPolicy(), version_dirs(model_dir))
    if not versions:
        raise InvalidArgumentError(
            f"at least one version must be available under the version policy of model '{name}'"
        )
    return Plan(config, model_dir, model_fingerprint(model_dir, source),
                {v: version_fingerprint(model_dir, v) for v in versions}, from_client=config_json is not None)


def changes(entry: ModelEntry, plan: Plan, rebuild: bool) -> tuple[list[int], list[VersionSlot]]:
    """The versions to build, and the serving versions the policy no longer selects (to drop).

    A serving version whose files did not change is kept, unless ``rebuild`` (the config or the model-level
    files changed, or the load has file overrides).
    """
    build = []
    for version in plan.wanted:
        slot = entry.versions.get(version)
        if not rebuild and slot is not None and slot.state is State.READY \
                and slot.fingerprint == plan.versions[version]:
            continue
        build.append(version)
    drop = [slot for v, slot in entry.versions.items() if v not in plan.wanted and slot.state is State.READY]
    return build, drop


def fingerprints(found: Mapping[str, ModelSource | None]) -> dict[str, str]:
    """Name -> fingerprint of every model folder found (what the poller compares between polls)."""
    prints: dict[str, str] = {name: "duplicate" for name, source in found.items() if source is None}
    by_storage: dict[int, tuple[ModelStorage, list[str]]] = {}
    for name, source in found.items():
        if source is not None:
            by_storage.setdefault(id(source.storage), (source.storage, []))[1].append(name)
    for storage, names in by_storage.values():
        prints.update(storage.fingerprints(names))
    return prints
