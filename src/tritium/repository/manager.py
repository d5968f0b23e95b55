"""The model repository: finds models, loads their versions, tracks their states.

A model's life is LOADING → READY (or UNAVAILABLE with a reason), and
UNLOADING → UNAVAILABLE.  A model that fails to load never takes the server or
another model down: its reason is kept for the index, readiness and the log.
Loading runs on worker threads (``--model-load-thread-count`` at a time) so the
event loop keeps serving while models load.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InferenceHandle, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from tritium.backends.registry import BackendRegistry
from tritium.config.autocomplete import fill_backend_fields, version_dirs
from tritium.config.parse import config_path, load_config_file
from tritium.config.validate import normalize, validate
from tritium.core.devices import available_gpus
from tritium.core.errors import (
    InternalError,
    InvalidArgumentError,
    ModelConfigError,
    NotFoundError,
    TritiumError,
    UnavailableError,
)
from tritium.core.model import Model
from tritium.options import ServerOptions
from tritium.scheduler.base import Scheduler
from tritium.scheduler.direct import DirectScheduler
from tritium.scheduler.dynamic import DynamicBatcher
from tritium.scheduler.workers import InstanceWorker

from .versions import select_versions

log = logging.getLogger(__name__)


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

    def refresh(self) -> None:
        ready = [v for v, slot in self.versions.items() if slot.state is State.READY and slot.model is not None]
        self.latest = self.versions[max(ready)].model if ready else None


class ModelRepositoryManager:
    def __init__(self, options: ServerOptions, backends: BackendRegistry) -> None:
        self._options = options
        self._backends = backends
        self._models: dict[str, ModelEntry] = {}
        self._gpus = available_gpus()
        self._load_slots = asyncio.Semaphore(max(1, options.model_load_thread_count))
        #: Lets backends call this server's models (Python-backend BLS); set by the server.
        self.inference: InferenceHandle | None = None

    # -- discovery --------------------------------------------------------------------------------

    def scan(self) -> dict[str, str | None]:
        """Model name -> directory for every model in the repositories; ``None`` when the name is in two."""
        found: dict[str, str | None] = {}
        for repository in self._options.model_repositories:
            try:
                entries = sorted(os.listdir(repository))
            except OSError as e:
                raise InvalidArgumentError(f"failed to open model repository '{repository}': {e}") from None
            for entry in entries:
                path = os.path.join(repository, entry)
                if not os.path.isdir(path) or entry.startswith("."):
                    continue
                found[entry] = None if entry in found else path
        return found

    # -- lifecycle --------------------------------------------------------------------------------

    async def load_startup_models(self) -> list[str]:
        """Load what the control mode says to load at start; returns the names that failed."""
        found = self.scan()
        if self._options.model_control_mode == "explicit":
            wanted = self._options.load_models
            names = sorted(found) if "*" in wanted else list(dict.fromkeys(wanted))
        else:
            names = sorted(found)
        for name, path in found.items():
            if path is not None and name not in self._models:
                self._models[name] = ModelEntry(name, path)
        await asyncio.gather(*(self.load(name, found) for name in names), return_exceptions=True)
        return [name for name in names if not self._entry_ready(name)]

    async def load(self, name: str, found: dict[str, str | None] | None = None) -> None:
        """Load (or reload) every version of ``name`` its policy selects; raise on failure."""
        found = self.scan() if found is None else found
        if name not in found:
            raise InvalidArgumentError(f"failed to load '{name}', failed to poll from model repository")
        path = found[name]
        if path is None:
            entry = self._models.setdefault(name, ModelEntry(name, ""))
            entry.state, entry.reason = State.UNAVAILABLE, f"model '{name}' appears in multiple repositories"
            log.error("failed to load '%s': %s", name, entry.reason)
            raise InvalidArgumentError(entry.reason)
        entry = self._models.setdefault(name, ModelEntry(name, path))
        entry.model_dir = path
        entry.state, entry.reason = State.LOADING, ""
        started = time.monotonic()
        log.info("loading model '%s' from %s", name, path)
        loop = asyncio.get_running_loop()
        async with self._load_slots:
            try:
                slots = await asyncio.to_thread(self._build, name, path, loop)
            except TritiumError as e:
                entry.state, entry.reason = State.UNAVAILABLE, str(e)
                log.error("failed to load '%s': %s", name, e)
                raise
            except Exception as e:  # a bug while loading must not take the server down
                entry.state, entry.reason = State.UNAVAILABLE, f"{type(e).__name__}: {e}"
                log.exception("failed to load '%s'", name)
                raise InternalError(entry.reason) from None
        for slot in slots:
            if slot.state is State.READY:
                log.info("successfully loaded '%s' version %d in %.3fs", name, slot.version, time.monotonic() - started)
            else:
                log.error("failed to load '%s' version %d: %s", name, slot.version, slot.reason)
        failed = [slot for slot in slots if slot.state is not State.READY]
        old = entry.versions
        if len(failed) == len(slots) and any(s.state is State.READY for s in old.values()):
            # A failed reload leaves the versions that were serving in place.
            entry.state, entry.reason = State.READY, ""
            raise InvalidArgumentError(failed[0].reason)
        entry.versions = {slot.version: slot for slot in slots}
        entry.refresh()
        if len(failed) == len(slots):
            entry.state, entry.reason = State.UNAVAILABLE, failed[0].reason
        else:
            entry.state, entry.reason = State.READY, ""
        for slot in old.values():
            await self._retire(slot)
        if entry.state is not State.READY:
            raise InvalidArgumentError(entry.reason)

    async def unload(self, name: str) -> None:
        entry = self._models.get(name)
        if entry is None:
            raise InvalidArgumentError(f"failed to unload '{name}', no version is available")
        slots = list(entry.versions.values())
        entry.state = State.UNAVAILABLE
        entry.reason = "unloaded"
        for slot in slots:
            if slot.state is State.READY:
                slot.state = State.UNLOADING  # no new requests; in-flight ones finish
        entry.refresh()
        for slot in slots:
            await self._retire(slot)

    async def unload_all(self, timeout: float | None = None) -> None:
        await asyncio.gather(*(self.unload(name) for name in list(self._models)), return_exceptions=True)

    async def _retire(self, slot: VersionSlot) -> None:
        """Stop taking requests for ``slot``, let in-flight ones finish, then free it."""
        model = slot.model
        if slot.state in (State.READY, State.UNLOADING) and model is not None:
            slot.state = State.UNLOADING
            await model.scheduler.drain()
            model.scheduler.close()
        slot.model = None
        await asyncio.to_thread(_finalize, slot)
        slot.state, slot.reason = State.UNAVAILABLE, slot.reason or "unloaded"

    # -- building a model (runs on a load thread) ---------------------------------------------------

    def _build(self, name: str, model_dir: str, loop: asyncio.AbstractEventLoop) -> list[VersionSlot]:
        options = self._options
        path = config_path(model_dir, options.model_config_name)
        config = load_config_file(path, name)
        auto_complete = not options.strict_model_config
        if config is None:
            if not auto_complete:
                raise ModelConfigError(f"failed to load model '{name}': {path} not found and auto-complete is disabled")
            config = mc.ModelConfig()
        fill_backend_fields(config, model_dir)
        _refuse_unsupported_features(config, name)
        available = version_dirs(model_dir)
        if not config.name:
            config.name = name
        backend = self._backends.get(config.backend) if config.backend else None
        versions = select_versions(
            config.version_policy if config.HasField("version_policy") else mc.ModelVersionPolicy(), available
        )
        if not versions:
            raise InvalidArgumentError(
                f"at least one version must be available under the version policy of model '{name}'"
            )
        if backend is not None and auto_complete:
            backend.auto_complete_config(self._context(name, versions[-1], model_dir, config))
        cpu_count = backend.default_instance_count("KIND_CPU") if backend else 1
        normalize(config, name, self._gpus, cpu_count)
        validate(config, name, self._gpus)
        assert backend is not None  # validate() refuses configs without a backend
        return [self._build_version(name, version, model_dir, config, backend, loop) for version in versions]

    def _context(self, name: str, version: int, model_dir: str, config: mc.ModelConfig) -> ModelContext:
        settings = dict(self._options.backend_config.get("*", {}))
        settings.update(self._options.backend_config.get(config.backend, {}))
        return ModelContext(name, version, model_dir, config, settings, self.inference)

    def _build_version(self, name, version, model_dir, config, backend, loop) -> VersionSlot:  # type: ignore[no-untyped-def]
        slot = VersionSlot(version)
        ctx = self._context(name, version, model_dir, config)
        try:
            slot.model_state = backend.model_initialize(ctx)
            for spec in _instance_specs(config):
                slot.instances.append(slot.model_state.instance_initialize(spec))
            workers = [InstanceWorker(instance, loop) for instance in slot.instances]
            scheduler: Scheduler
            if config.HasField("dynamic_batching") and config.max_batch_size > 0:
                ragged = [i.name for i in config.input if i.allow_ragged_batch]
                scheduler = DynamicBatcher(workers, loop, config.max_batch_size, config.dynamic_batching, ragged)
            else:
                scheduler = DirectScheduler(workers, loop)
            slot.model = Model(name, version, config, scheduler)
            slot.state = State.READY
        except TritiumError as e:
            slot.state, slot.reason = State.UNAVAILABLE, str(e)
            _finalize(slot)
        except Exception as e:
            log.exception("failed to load '%s' version %d", name, version)
            slot.state, slot.reason = State.UNAVAILABLE, f"{type(e).__name__}: {e}"
            _finalize(slot)
        return slot

    # -- queries ----------------------------------------------------------------------------------

    def get(self, name: str, version: int = -1) -> Model:
        """The READY model for ``name`` (latest ready version when ``version`` is -1).

        Raises :class:`NotFoundError` with Triton's texts when there is none.
        """
        entry = self._models.get(name)
        if entry is None or not entry.versions:
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
        entry = self._models.get(name)
        if entry is None:
            return []
        return [str(v) for v, slot in sorted(entry.versions.items()) if slot.state is State.READY]

    def ready_models(self, name: str = "") -> list[Model]:
        """Every READY model version (of ``name`` only, when given), sorted by name then version."""
        names = [name] if name else sorted(self._models)
        found = []
        for n in names:
            entry = self._models.get(n)
            if entry is None:
                continue
            for _, slot in sorted(entry.versions.items()):
                if slot.state is State.READY and slot.model is not None:
                    found.append(slot.model)
        return found

    def _entry_ready(self, name: str) -> bool:
        entry = self._models.get(name)
        return entry is not None and entry.state is State.READY

    def all_ready(self) -> bool:
        """Every model the control mode asked for is READY (for ``--strict-readiness``)."""
        return all(e.state is State.READY for e in self._models.values() if e.state is not State.UNKNOWN)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index: every model found, loaded or not, with versions, states and reasons."""
        found = self.scan()
        rows: list[dict[str, str]] = []
        for name in sorted(set(found) | set(self._models)):
            entry = self._models.get(name)
            if entry is None or (not entry.versions and entry.state is State.UNKNOWN):
                if not ready_only:
                    rows.append({"name": name})
                continue
            if not entry.versions:
                if not ready_only:
                    rows.append({"name": name, "state": entry.state.value, "reason": entry.reason})
                continue
            for version in sorted(entry.versions):
                slot = entry.versions[version]
                if ready_only and slot.state is not State.READY:
                    continue
                rows.append({"name": name, "version": str(version), "state": slot.state.value, "reason": slot.reason})
        return rows


def _refuse_unsupported_features(config: mc.ModelConfig, name: str) -> None:
    """Fail the load of a model that needs what tritium cannot do yet, rather than serve it wrongly."""
    if config.platform == "ensemble":
        raise UnavailableError(f"model '{name}': ensembles are not available in this version of tritium")
    if config.HasField("sequence_batching"):
        raise UnavailableError(f"model '{name}': sequence batching is not available in this version of tritium")
    if config.model_transaction_policy.decoupled and config.backend != "python":
        raise UnavailableError(f"model '{name}': decoupled models are only available with the python backend")
    if config.model_warmup:
        log.warning("model '%s': model_warmup is not available in this version of tritium; loading without warmup", name)
    if config.response_cache.enable:
        log.warning("model '%s': the response cache is not available in this version of tritium; caching is off", name)


def _instance_specs(config: mc.ModelConfig) -> list[InstanceSpec]:
    specs = []
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        devices: Sequence[int] = list(group.gpus) if group.kind == mc.ModelInstanceGroup.KIND_GPU else [0]
        for device in devices:
            for index in range(group.count):
                suffix = f"_{index}" if len(devices) == 1 else f"_{device}_{index}"
                specs.append(InstanceSpec(group.name + suffix, kind, device, group))
    return specs


def _finalize(slot: VersionSlot) -> None:
    for instance in slot.instances:
        try:
            instance.finalize()
        except Exception:
            log.exception("instance %s failed to finalize", instance.spec.name)
    slot.instances.clear()
    if slot.model_state is not None:
        try:
            slot.model_state.finalize()
        except Exception:
            log.exception("model state failed to finalize")
        slot.model_state = None
