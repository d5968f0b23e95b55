"""What the repository knows about its models: entries, version slots, their states and reasons, the index.

A model's life is LOADING → READY (or UNAVAILABLE with a reason), and UNLOADING → UNAVAILABLE.  The
queries here (:meth:`ModelTable.get` above all, on every request) only read this state; the manager
changes it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tritium.backends.base import ModelInstanceState, ModelState
from tritium.core.errors import InvalidArgumentError, NotFoundError, TritiumError, UnavailableError
from tritium.core.model import Model
from tritium.core.names import check_model_name

from .overrides import OverrideDir

#: Between a repository and a model name in the key of a model whose name is in several repositories
#: (``--model-namespacing``); no model name or path holds it.
NAMESPACE_SEPARATOR = "\0"


def name_of(key: str) -> str:
    """The model name of a repository key (the key itself unless namespaced)."""
    return key.rpartition(NAMESPACE_SEPARATOR)[2]


#: Triton's reason for a model name that is in more than one repository (none of them loads).
DUPLICATE = "model appears in two or more repositories"


class State(enum.Enum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass
class VersionSlot:
    """One version of one model: its state and, when READY, the model serving it."""

    version: int
    state: State = State.LOADING
    reason: str = ""
    model: Model | None = None
    #: Kept so the instances can be finalized on unload.
    model_state: ModelState | None = None
    instances: list[ModelInstanceState] = field(default_factory=list)
    #: What the version was built from (files, config); a reload rebuilds it only when this changes.
    fingerprint: str = ""
    #: The temporary model directory of a load with file overrides, removed when its last version goes.
    override: OverrideDir | None = None
    #: Gives the instances' rate-limiter resources back when the version is freed (rate limiting on).
    unregister: Callable[[], None] | None = None


@dataclass
class ModelEntry:
    """A model of the repository and the versions known for it."""

    name: str
    model_dir: str
    state: State = State.UNKNOWN
    reason: str = ""
    versions: dict[int, VersionSlot] = field(default_factory=dict)
    #: The highest READY version's model, kept current by :meth:`refresh` (looked up on every request).
    latest: Model | None = None
    #: The config file could not be read: Triton lists such a model by name only, and it is no model for readiness.
    poll_failed: bool = False
    #: Model-level fingerprint (config, files outside version folders) of the versions loaded.
    fingerprint: str = ""
    #: Loads and unloads of one model run one at a time; different models load in parallel.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Loads of this model under way (or waiting for the lock).
    loads: int = 0

    def refresh(self) -> None:
        ready = [v for v, slot in self.versions.items() if slot.state is State.READY and slot.model is not None]
        self.latest = self.versions[max(ready)].model if ready else None

    def mark_loading(self, versions: list[int]) -> None:
        """``versions`` are about to be built: those not serving show LOADING, and so does a model not serving."""
        for version in versions:
            current = self.versions.get(version)
            if current is None or current.state is not State.READY:
                self.versions[version] = VersionSlot(version, State.LOADING)
        if self.latest is None:
            self.state, self.reason = State.LOADING, ""

    def install(self, slot: VersionSlot) -> VersionSlot | None:
        """Put a freshly built ``slot`` in its version's place; returns the READY slot it replaces (to retire).

        A failed build leaves the version that was serving in place.
        """
        old = self.versions.get(slot.version)
        if slot.state is not State.READY and old is not None and old.state is State.READY:
            return None
        self.versions[slot.version] = slot
        if old is not None and old is not slot and old.state is State.READY:
            return old
        return None

    def settle(self, fingerprint: str, reason: str) -> None:
        """After a load or unload: the latest model, and the model's state (``reason`` when none serves)."""
        self.refresh()
        self.fingerprint = fingerprint
        if self.latest is not None:
            self.state, self.reason = State.READY, ""
        else:
            self.state, self.reason = State.UNAVAILABLE, reason


class ModelTable:
    """The models by name, and the read-only questions the server asks about them."""

    def __init__(self) -> None:
        #: By key: the model's name, or with ``--model-namespacing`` ``<repository>\0<name>`` for a name that is
        #: in several repositories (:func:`.planning.scan`).
        self._models: dict[str, ModelEntry] = {}
        #: With ``--model-namespacing``: names in several repositories -> how many (what clients cannot address).
        self._ambiguous: dict[str, int] = {}

    def enable_namespacing(self) -> None:
        """Namespaced keys (``<repository>\0<name>``) are in the table: lookups by a client's name must never
        reach one, so :meth:`get` checks names first (the ``off`` path keeps the plain lookup)."""
        plain_get = self.get

        def get(name: str, version: int = -1) -> Model:
            if NAMESPACE_SEPARATOR in name:
                check_model_name(name)  # raises: a client cannot name a namespace
            return plain_get(name, version)

        self.get = get  # type: ignore[method-assign]

    def _client_entry(self, name: str) -> ModelEntry | None:
        return None if NAMESPACE_SEPARATOR in name else self._models.get(name)

    def get(self, name: str, version: int = -1) -> Model:
        """The READY model for ``name`` (latest ready version when ``version`` is -1).

        Raises :class:`NotFoundError` with Triton's texts when there is none.
        """
        entry = self._models.get(name)
        if entry is None or not entry.versions:
            if entry is None:
                check_model_name(name)  # only on this failure path: a known name is valid by construction
                if name in self._ambiguous:
                    raise InvalidArgumentError(
                        f"There are {self._ambiguous[name]} identifiers of model '{name}' in global map, model "
                        "namespace must be provided to resolve ambiguity.")
            raise NotFoundError(f"Request for unknown model: '{name}' is not found")
        if version < 0:
            if entry.latest is not None:
                return entry.latest
            raise NotFoundError(f"Request for unknown model: '{name}' has no available versions")
        slot = entry.versions.get(version)
        if slot is None:
            raise NotFoundError(f"Request for unknown model: '{name}' version {version} is not found")
        if slot.state is not State.READY or slot.model is None:
            raise UnavailableError(f"Request for unknown model: '{name}' version {version} is not at ready state")
        return slot.model

    def is_ready(self, name: str, version: int = -1) -> bool:
        try:
            self.get(name, version)
        except TritiumError:
            return False
        return True

    def ready_versions(self, name: str) -> list[str]:
        entry = self._client_entry(name)
        if entry is None:
            return []
        return [str(v) for v, slot in sorted(entry.versions.items()) if slot.state is State.READY]

    def ready_models(self, name: str = "") -> list[Model]:
        """Every READY model version (of ``name`` only, when given), sorted by name then version."""
        names = [name] if name else sorted(self._models)
        found = []
        for n in names:
            entry = self._models.get(n) if not name else self._client_entry(n)
            if entry is None:
                continue
            for _, slot in sorted(entry.versions.items()):
                if slot.state is State.READY and slot.model is not None:
                    found.append(slot.model)
        return found

    def all_ready(self) -> bool:
        """Every model that should be loaded is READY (for ``--strict-readiness``), as Triton counts.

        Versions unloaded on purpose and models whose config cannot be read (no model at all) do not count.
        """
        for entry in self._models.values():
            if not entry.versions:
                if entry.state is State.LOADING or (
                    entry.state is State.UNAVAILABLE and not entry.poll_failed and entry.reason != "unloaded"
                ):
                    return False
                continue
            for slot in entry.versions.values():
                if slot.state is State.READY or slot.state is State.UNLOADING:
                    continue
                if slot.state is State.UNAVAILABLE and slot.reason == "unloaded":
                    continue
                return False
        return True

    def rows(self, found: set[str], ready_only: bool = False, duplicates: set[str] | frozenset[str] = frozenset(),
             order: Callable[[str], Any] | None = None) -> list[dict[str, str]]:
        """The repository index as Triton shows it, of the models ``found`` in the repositories: sorted by name;
        models never loaded by name only; otherwise one row per version, ``reason`` only when not empty.

        Unlike Triton 2.51, which lists it by name only, a model whose config cannot be read is UNAVAILABLE with
        the reason, so that a user reading the index sees why.  A model whose folder is gone is no longer listed
        (as Triton), unless a version of it still serves or loads (one loaded from a client's files).  A name in
        several repositories (``duplicates``) is UNAVAILABLE with Triton's reason, whatever else is known of it.
        Rows are ordered by key, or by ``order`` (with namespacing: repository, then name); each shows the name.
        """
        rows: list[dict[str, str]] = []
        for key in sorted(found | set(self._models), key=order):
            name = name_of(key)
            if key in duplicates:
                if not ready_only:
                    rows.append(_row(name, None, State.UNAVAILABLE, DUPLICATE))
                continue
            entry = self._models.get(key)
            if key not in found and (entry is None or not _in_service(entry)):
                continue
            if entry is None or (not entry.versions and entry.state is State.UNKNOWN):
                if not ready_only:
                    rows.append({"name": name})
                continue
            if not entry.versions or (entry.poll_failed and entry.latest is None):
                if not ready_only:
                    rows.append(_row(name, None, entry.state, entry.reason))
                continue
            for version in sorted(entry.versions):
                slot = entry.versions[version]
                if ready_only and slot.state is not State.READY:
                    continue
                rows.append(_row(name, version, slot.state, slot.reason))
        return rows


def _in_service(entry: ModelEntry) -> bool:
    """A version of ``entry`` serves, loads or drains."""
    return entry.state is State.LOADING or any(
        slot.state in (State.READY, State.LOADING, State.UNLOADING) for slot in entry.versions.values())


def _row(name: str, version: int | None, state: State, reason: str) -> dict[str, str]:
    row = {"name": name}
    if version is not None:
        row["version"] = str(version)
    row["state"] = state.value
    if reason:
        row["reason"] = reason
    return row
