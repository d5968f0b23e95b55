"""The model repository: finds models, loads their versions, tracks their states.

A model's life is LOADING → READY (or UNAVAILABLE with a reason), and
UNLOADING → UNAVAILABLE.  A model that fails to load never takes the server or
another model down: its reason is kept for the index, readiness and the log.
Loading runs on worker threads (``--model-load-thread-count`` at a time) so the
event loop keeps serving while models load.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from google.protobuf import json_format

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InferenceHandle, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from tritium.backends.registry import BackendRegistry, check_model
from tritium.config.ensemble import check_composing_models, composing_models, ensemble_steps, is_ensemble
from tritium.config.autocomplete import fill_backend_fields, version_dirs
from tritium.config.parse import config_path, read_model_config
from tritium.config.paths import check_config_paths, inside_model_dir, relative_text
from tritium.config.validate import check_instance_groups, normalize, validate
from tritium.core.devices import available_gpus
from tritium.core.errors import (
    InternalError,
    InvalidArgumentError,
    ModelConfigError,
    NotFoundError,
    TritiumError,
    UnavailableError,
    status_text,
)
from tritium.core.model import Model
from tritium.core.names import check_model_name, name_problem, shown
from tritium.core.stats import LatencySummaries
from tritium.options import ServerOptions
from tritium.scheduler.base import Scheduler
from tritium.scheduler.direct import DirectScheduler
from tritium.scheduler.dynamic import DynamicBatcher
from tritium.scheduler.ensemble import EnsembleScheduler
from tritium.scheduler.sequence import SequenceBatcher, sequence_settings
from tritium.scheduler.workers import InstanceWorker

from .ensembles import dependents_of, read_ensemble_config
from .fingerprint import model_fingerprint, version_fingerprint
from .overrides import OverrideDir, check_override_name
from .overrides import remove_all as remove_overrides
from .versions import select_versions
from .warmup import warm_up

log = logging.getLogger(__name__)

#: Ensembles whose composing models the current task is loading (to refuse ensembles that contain themselves).
_loading_ensembles: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("loading_ensembles", default=())


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


class ModelRepositoryManager:
    def __init__(self, options: ServerOptions, backends: BackendRegistry) -> None:
        self._options = options
        self._backends = backends
        self._models: dict[str, ModelEntry] = {}
        self._gpus = available_gpus()
        #: ``--model-load-thread-count`` threads build models; a slow one holds only its own thread.
        self._load_pool = ThreadPoolExecutor(max(1, options.model_load_thread_count), thread_name_prefix="model-load")
        #: Versions being drained and finalized in the background (an unload answers before they finish).
        self._retiring: set[asyncio.Task[None]] = set()
        #: Lets backends call this server's models (Python-backend BLS); set by the server.
        self.inference: InferenceHandle | None = None
        #: Repository folders whose names cannot be model names (warned about once).
        self._ignored_names: set[str] = set()

    # -- discovery --------------------------------------------------------------------------------

    def scan(self) -> dict[str, str | None]:
        """Model name -> directory for every model in the repositories; ``None`` when the name is in two."""
        found: dict[str, str | None] = {}
        for repository in self._options.model_repositories:
            try:
                entries = sorted(os.listdir(repository))
            except OSError as e:  # the path is the operator's: in the log, not in what a client reads
                log.error("failed to open model repository '%s': %s", repository, e)
                raise InvalidArgumentError(f"failed to open a model repository: {e.strerror}") from None
            for entry in entries:
                path = os.path.join(repository, entry)
                if entry.startswith(".") or not os.path.isdir(path):
                    continue
                problem = name_problem(entry)
                if problem is not None:
                    if entry not in self._ignored_names:
                        self._ignored_names.add(entry)
                        log.warning("model folder '%s' of repository '%s' is ignored: %s", shown(entry), repository,
                                    problem)
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
        results = await asyncio.gather(*(self.load(name, found) for name in names), return_exceptions=True)
        return [name for name, result in zip(names, results) if isinstance(result, BaseException)]

    async def load(self, name: str, found: dict[str, str | None] | None = None, *, config: str | None = None,
                   files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) the versions of ``name`` its policy selects; raise on failure.

        ``config`` (JSON) replaces the config file; ``files`` (paths like ``1/model.onnx``) make a temporary
        model folder.  New versions are built in full (warmup included) while the old ones keep serving,
        then swapped in; replaced and dropped versions are drained and finalized in the background.
        Versions whose files and config did not change are kept as they are.
        """
        check_model_name(name)  # before anything touches the file system
        if files:
            # a refused request changes nothing: no folder written, no entry made or changed
            if config is None:
                raise InvalidArgumentError(f"failed to load '{name}': file overrides need the 'config' parameter too")
            for relative in files:
                check_override_name(relative, name)
        found = self.scan() if found is None else found
        if name not in found and not files:
            raise InternalError(f"failed to load '{name}', failed to poll from model repository")
        path = found.get(name, "")  # a model made only of file overrides has no folder in the repository
        if path is None:
            entry = self._models.setdefault(name, ModelEntry(name, ""))
            entry.state, entry.reason = State.UNAVAILABLE, f"model '{name}' appears in multiple repositories"
            log.error("failed to load '%s': %s", name, entry.reason)
            raise InvalidArgumentError(entry.reason)
        entry = self._models.setdefault(name, ModelEntry(name, path))
        entry.loads += 1
        try:
            await self._load_composing(entry, path, config)
            async with entry.lock:
                await self._load_locked(entry, path, config, files)
        finally:
            entry.loads -= 1
            if not entry.loads and not path and not entry.model_dir and entry.latest is None \
                    and self._models.get(name) is entry:
                # a model made only of a client's files that does not serve leaves no entry behind
                del self._models[name]

    async def _load_composing(self, entry: ModelEntry, model_dir: str, config_json: str | None) -> None:
        """Before an ensemble loads, load the composing models that are not serving yet (explicit mode included).

        A failure makes the ensemble UNAVAILABLE naming the composing model; ensembles of ensembles that
        include themselves are refused instead of loading forever.
        """
        config = read_ensemble_config(model_dir, self._options.model_config_name, config_json)
        if config is None:
            return
        name = entry.name
        chain = _loading_ensembles.get()
        token = _loading_ensembles.set(chain + (name,))
        try:
            for step_model, _ in composing_models(config):
                if step_model in chain or step_model == name:
                    raise ModelConfigError(f"in ensemble '{name}', composing model '{step_model}' leads back to "
                                           f"ensemble '{name}': ensembles must not contain themselves")
                child = self._models.get(step_model)
                if child is None or child.latest is None or child.lock.locked():
                    try:
                        await self.load(step_model)
                    except TritiumError as e:
                        raise UnavailableError(f"in ensemble '{name}', composing model '{step_model}' failed to "
                                               f"load: {e}") from None
        except TritiumError as e:
            if entry.latest is None:
                entry.state, entry.reason = State.UNAVAILABLE, str(e)
                for slot in entry.versions.values():
                    if slot.state is State.UNAVAILABLE:
                        slot.reason = str(e)
            log.error("failed to load '%s': %s", name, e)
            raise
        finally:
            _loading_ensembles.reset(token)

    async def _load_locked(self, entry: ModelEntry, path: str, config: str | None,
                           files: Mapping[str, bytes] | None) -> None:
        name = entry.name
        loop = asyncio.get_running_loop()
        override: OverrideDir | None = None
        model_dir = path
        if files:
            if config is None:
                raise InvalidArgumentError(f"failed to load '{name}': file overrides need the 'config' parameter too")
            override = OverrideDir.create(name, files)
            model_dir = override.path
        try:
            plan = await loop.run_in_executor(self._load_pool, self._plan, name, model_dir, config)
        except _PollFailure as e:
            if override is not None:
                override.remove()
            entry.poll_failed, entry.reason = True, str(e)
            if not entry.versions:
                entry.state = State.UNAVAILABLE
            # the operator's log names the folder; what clients read names paths relative to it
            log.error("failed to load '%s' from %s: %s", name, model_dir, e)
            raise InternalError(f"failed to load '{name}', failed to poll from model repository") from None
        except TritiumError as e:
            if override is not None:
                override.remove()
            # the operator's log names the folder; what clients read names paths relative to it
            e = type(e)(relative_text(e.message, model_dir), e.status)
            if entry.latest is None:
                entry.state, entry.reason = State.UNAVAILABLE, str(e)
            reason = str(e)  # (said once: some reasons name the model already)
            prefix = f"failed to load '{name}'"
            log.error("%s (from %s)", reason if reason.startswith(prefix) else f"{prefix}: {reason}", model_dir)
            raise e from None
        entry.poll_failed = False
        entry.model_dir = path
        same = override is None and plan.fingerprint == entry.fingerprint
        build = []
        for version in plan.wanted:
            slot = entry.versions.get(version)
            if same and slot is not None and slot.state is State.READY and slot.fingerprint == plan.versions[version]:
                continue
            build.append(version)
        drop = [slot for v, slot in entry.versions.items() if v not in plan.wanted and slot.state is State.READY]
        if not build and not drop:
            log.info("model '%s' is already loaded and unchanged", name)
            return
        for version in build:
            current = entry.versions.get(version)
            if current is None or current.state is not State.READY:
                entry.versions[version] = VersionSlot(version, State.LOADING)
        if entry.latest is None:
            entry.state, entry.reason = State.LOADING, ""
        started = time.monotonic()
        slots: list[VersionSlot] = []
        if build:
            log.info("loading model '%s' version%s %s from %s", name, "s" if len(build) > 1 else "",
                     ", ".join(map(str, build)), model_dir)
            try:
                slots = await loop.run_in_executor(self._load_pool, self._build, name, plan, build, loop)
            except TritiumError as e:
                slots = [VersionSlot(v, State.UNAVAILABLE, str(e)) for v in build]
            except Exception as e:  # a bug while loading must not take the server down
                log.exception("failed to load '%s'", name)
                slots = [VersionSlot(v, State.UNAVAILABLE, f"{type(e).__name__}: {e}") for v in build]
        failed = [slot for slot in slots if slot.state is not State.READY]
        for slot in failed:  # a reason reaches clients (index, load answer): paths relative to the model folder
            slot.reason = relative_text(slot.reason, model_dir)
        retire: list[VersionSlot] = []
        for slot in slots:
            slot.fingerprint = plan.versions[slot.version]
            old = entry.versions.get(slot.version)
            if slot.state is State.READY:
                log.info("successfully loaded '%s' version %d in %.3fs", name, slot.version, time.monotonic() - started)
                if override is not None:
                    slot.override = override
                    override.acquire()
            else:
                log.error("failed to load '%s' version %d: %s", name, slot.version, slot.reason)
                if old is not None and old.state is State.READY:
                    continue  # a failed reload leaves the version that was serving in place
            entry.versions[slot.version] = slot
            if old is not None and old is not slot and old.state is State.READY:
                retire.append(old)
        if not failed or any(entry.versions[v].state is State.READY for v in plan.wanted):
            retire.extend(drop)  # versions the policy no longer selects go once the wanted ones serve
        for old in retire:
            old.state = State.UNLOADING  # no new requests; in-flight ones finish
        entry.refresh()
        entry.fingerprint = "" if failed else plan.fingerprint
        if entry.latest is not None:
            entry.state, entry.reason = State.READY, ""
        else:
            entry.state, entry.reason = State.UNAVAILABLE, failed[0].reason if failed else "unloaded"
        if override is not None and not any(slot.override is override for slot in slots):
            override.remove()
        for old in retire:
            self._spawn_retire(old)
        if failed:
            raise InvalidArgumentError(
                f"load failed for model '{name}': "
                + "".join(f"version {s.version} is at UNAVAILABLE state: {s.reason};\n" for s in failed)
            )

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop serving every version of ``name``; draining and finalizing go on in the background.

        Unknown or never-loaded models are fine (as in Triton).  Serving ensembles that call ``name`` go with
        it (UNAVAILABLE, naming it).  ``unload_dependents`` on an ensemble also unloads the composing models
        loaded with it that no other serving ensemble calls (Triton's "unload model and dependents").
        """
        entry = self._models.get(name)
        if entry is None:
            check_model_name(name)  # an unknown name: say so when it cannot be a model's name at all
            return
        composing = composing_models(entry.latest.config) if entry.latest and is_ensemble(entry.latest.config) else []
        await self._unload_one(entry)
        for ensemble in dependents_of(name, self.ready_models()):
            await self.unload(ensemble)
            self._models[ensemble].reason = f"composing model '{name}' was unloaded"
        if unload_dependents:
            for child, _ in composing:
                if not dependents_of(child, self.ready_models()):
                    await self.unload(child, True)

    async def _unload_one(self, entry: ModelEntry) -> None:
        async with entry.lock:
            retire = [slot for slot in entry.versions.values() if slot.state is State.READY]
            for slot in retire:
                slot.state = State.UNLOADING
            entry.refresh()
            entry.fingerprint = ""
            if retire or entry.state is State.READY:
                entry.state, entry.reason = State.UNAVAILABLE, "unloaded"
            for slot in retire:
                self._spawn_retire(slot)

    async def unload_all(self) -> None:
        """Unload every model and wait until each has drained and been finalized (shutdown)."""
        await asyncio.gather(*(self.unload(name) for name in list(self._models)), return_exceptions=True)
        await self.wait_retired()
        remove_overrides()
        self._load_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_retired(self) -> None:
        """Wait until every version being unloaded has been finalized."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def _spawn_retire(self, slot: VersionSlot) -> None:
        task = asyncio.ensure_future(self._retire(slot))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, slot: VersionSlot) -> None:
        """Let in-flight requests of ``slot`` finish (up to ``--exit-timeout-secs``), then free it."""
        model = slot.model
        if model is not None:
            slot.state = State.UNLOADING
            try:
                await asyncio.wait_for(_drain(model), timeout=self._options.exit_timeout_secs)
            except asyncio.TimeoutError:
                log.warning("model '%s' version %d still has requests in flight after %ss; unloading it",
                            model.name, slot.version, self._options.exit_timeout_secs)
            model.scheduler.close()
        slot.model = None
        await asyncio.get_running_loop().run_in_executor(None, _finalize, slot)
        slot.state, slot.reason = State.UNAVAILABLE, "unloaded"
        if slot.override is not None:
            slot.override.release()
            slot.override = None
        if model is not None:
            log.info("successfully unloaded '%s' version %d", model.name, slot.version)

    # -- building a model (runs on a load thread) ---------------------------------------------------

    def _plan(self, name: str, model_dir: str, config_json: str | None) -> _Plan:
        """Read the config (or the override) and pick the versions, without building anything."""
        config: mc.ModelConfig | None
        if config_json is not None:
            try:
                config = json_format.Parse(config_json, mc.ModelConfig())
            except json_format.ParseError as e:
                raise InvalidArgumentError(f"failed to load '{name}': Invalid config override: {e}") from None
            source = "config override\0" + config_json
        else:
            try:
                config = read_model_config(model_dir, self._options.model_config_name, name)
            except TritiumError as e:
                raise _PollFailure(str(e)) from None
            source = config_path(model_dir, self._options.model_config_name)
        policy = config.version_policy if config is not None and config.HasField("version_policy") else None
        versions = select_versions(policy or mc.ModelVersionPolicy(), version_dirs(model_dir))
        if not versions:
            raise InvalidArgumentError(
                f"at least one version must be available under the version policy of model '{name}'"
            )
        return _Plan(config, model_dir, model_fingerprint(model_dir, source),
                     {v: version_fingerprint(model_dir, v) for v in versions}, from_client=config_json is not None)

    def fingerprints(self, found: Mapping[str, str | None]) -> dict[str, str]:
        """Name -> fingerprint of every model folder found (what the poller compares between polls)."""
        prints: dict[str, str] = {}
        for name, model_dir in found.items():
            if model_dir is None:
                prints[name] = "duplicate"
                continue
            parts = [model_fingerprint(model_dir)]
            parts += [version_fingerprint(model_dir, v) for v in sorted(version_dirs(model_dir))]
            prints[name] = ":".join(parts)
        return prints

    def _build(self, name: str, plan: _Plan, versions: Sequence[int],
               loop: asyncio.AbstractEventLoop) -> list[VersionSlot]:
        options = self._options
        model_dir = plan.model_dir
        auto_complete = not options.strict_model_config
        if plan.config is None:
            if not auto_complete:
                path = os.path.relpath(config_path(model_dir, options.model_config_name), model_dir)
                raise ModelConfigError(f"failed to load model '{name}': {path} not found and auto-complete is disabled")
            config = mc.ModelConfig()
        else:
            config = mc.ModelConfig()
            config.CopyFrom(plan.config)
        fill_backend_fields(config, model_dir)
        # nothing of the model is read or run before every path its config names is known to stay inside
        check_config_paths(config, model_dir, versions, name, plan.from_client)
        _refuse_unsupported_features(config, name)
        if not config.name:
            config.name = name
        backend = self._backends.get(config.backend, config.runtime) if config.backend else None
        if backend is not None and auto_complete:
            try:
                backend.auto_complete_config(self._context(name, versions[-1], model_dir, config, plan.from_client))
            except TritiumError as e:  # the reason reads as Triton's for a failed load: "Internal: ..."
                raise type(e)(status_text(e), e.status) from None
        cpu_count = backend.default_instance_count("KIND_CPU") if backend else 1
        # KIND_AUTO means GPU only where the backend declares it can place instances there
        gpus = self._gpus if backend is None or "KIND_GPU" in backend.instance_kinds else []
        normalize(config, name, gpus, cpu_count)
        validate(config, name)
        check_config_paths(config, model_dir, versions, name, plan.from_client)  # auto-complete may add some
        if is_ensemble(config):
            return [self._build_ensemble(name, version, config) for version in versions]
        assert backend is not None  # validate() refuses configs without a backend
        check_model(backend, config, name)
        slots = []
        for version in versions:
            slot = self._build_version(name, version, model_dir, config, backend, loop, plan.from_client)
            if slot.state is State.READY and config.model_warmup:
                _warm_up(slot, model_dir)
            slots.append(slot)
        return slots

    def _build_ensemble(self, name: str, version: int, config: mc.ModelConfig) -> VersionSlot:
        """An ensemble version: its graph checked against the loaded composing models, no instances."""
        steps = ensemble_steps(config, name)
        check_composing_models(config, name, steps, lambda m, v: self.get(m, v).config)
        scheduler = EnsembleScheduler(name, steps, [o.name for o in config.output], self.get)
        return VersionSlot(version, State.READY, model=Model(name, version, config, scheduler))

    def _context(self, name: str, version: int, model_dir: str, config: mc.ModelConfig,
                 from_client: bool = False) -> ModelContext:
        settings = dict(self._options.backend_config.get("*", {}))
        settings.update(self._options.backend_config.get(config.backend, {}))
        return ModelContext(name, version, model_dir, config, settings, self.inference,
                            config_from_client=from_client)

    def _build_version(self, name, version, model_dir, config, backend, loop,  # type: ignore[no-untyped-def]
                       from_client=False) -> VersionSlot:
        slot = VersionSlot(version)
        ctx = self._context(name, version, model_dir, config, from_client)
        try:
            check_instance_groups(config, name, self._gpus)
            sequence = sequence_settings(config, model_dir) if config.HasField("sequence_batching") else None
            slot.model_state = backend.model_initialize(ctx)
            for spec in _instance_specs(config):
                slot.instances.append(slot.model_state.instance_initialize(spec))
            workers = [InstanceWorker(i, loop, self._options.inline_execute_us / 1e6) for i in slot.instances]
            scheduler: Scheduler
            if sequence is not None:
                scheduler = SequenceBatcher(workers, loop, config, sequence)
            elif config.HasField("dynamic_batching") and config.max_batch_size > 0:
                ragged = [i.name for i in config.input if i.allow_ragged_batch]
                scheduler = DynamicBatcher(workers, loop, config.max_batch_size, config.dynamic_batching, ragged)
            else:
                scheduler = DirectScheduler(workers, loop)
            if self._options.metrics_summary_latencies:
                scheduler.stats.summaries = LatencySummaries()
            slot.model = Model(name, version, config, scheduler, _read_labels(config, model_dir, name))
            slot.state = State.READY
        except TritiumError as e:  # a version's reason reads as Triton's: "Internal: ..."
            slot.state, slot.reason = State.UNAVAILABLE, status_text(e)
            _finalize(slot)
        except Exception as e:
            log.exception("failed to load '%s' version %d", name, version)
            slot.state, slot.reason = State.UNAVAILABLE, status_text(e)
            _finalize(slot)
        return slot

    # -- queries ----------------------------------------------------------------------------------

    def get(self, name: str, version: int = -1) -> Model:
        """The READY model for ``name`` (latest ready version when ``version`` is -1).

        Raises :class:`NotFoundError` with Triton's texts when there is none.
        """
        entry = self._models.get(name)
        if entry is None or not entry.versions:
            if entry is None:
                check_model_name(name)  # only on this failure path: a known name is valid by construction
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

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index as Triton shows it: sorted by name; models never loaded (or whose config
        cannot be read) by name only; otherwise one row per version, ``reason`` only when not empty."""
        found = self.scan()
        rows: list[dict[str, str]] = []
        for name in sorted(set(found) | set(self._models)):
            entry = self._models.get(name)
            if entry is None or (not entry.versions and (entry.state is State.UNKNOWN or entry.poll_failed)):
                if not ready_only:
                    rows.append({"name": name})
                continue
            if not entry.versions:
                if not ready_only:
                    rows.append(_row(name, None, entry.state, entry.reason))
                continue
            for version in sorted(entry.versions):
                slot = entry.versions[version]
                if ready_only and slot.state is not State.READY:
                    continue
                rows.append(_row(name, version, slot.state, slot.reason))
        return rows

    @property
    def control_mode(self) -> str:
        return self._options.model_control_mode


@dataclass
class _Plan:
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


class _PollFailure(InternalError):
    """The model's config cannot be read: Triton treats the folder as no model at all."""


def _row(name: str, version: int | None, state: State, reason: str) -> dict[str, str]:
    row = {"name": name}
    if version is not None:
        row["version"] = str(version)
    row["state"] = state.value
    if reason:
        row["reason"] = reason
    return row


async def _drain(model: Model) -> None:
    """Wait until ``model`` has no request in flight, including any that looked it up just before the swap."""
    await model.scheduler.drain()
    await asyncio.sleep(0.01)
    await model.scheduler.drain()


def _warm_up(slot: VersionSlot, model_dir: str) -> None:
    """Run the warmup samples; a failure turns ``slot`` UNAVAILABLE with the reason and frees it."""
    assert slot.model is not None
    try:
        warm_up(slot.model, slot.instances, model_dir)
    except TritiumError as e:
        log.error("warmup of '%s' version %d failed: %s", slot.model.name, slot.version, e)
        slot.model.scheduler.close()
        slot.model = None
        slot.state, slot.reason = State.UNAVAILABLE, status_text(e)
        _finalize(slot)


def _refuse_unsupported_features(config: mc.ModelConfig, name: str) -> None:
    """Fail the load of a model that needs what tritium cannot do yet, rather than serve it wrongly."""
    if config.response_cache.enable:
        log.warning("model '%s': the response cache is not available in this version of tritium; caching is off", name)


def _read_labels(config: mc.ModelConfig, model_dir: str, name: str) -> dict[str, list[str]]:
    """Each output's ``label_filename`` (one label per line, in the model folder), for classification."""
    labels = {}
    for output in config.output:
        if output.label_filename:
            path = inside_model_dir(model_dir, output.label_filename, f"label_filename of output '{output.name}'",
                                    name)
            try:
                with open(path, encoding="utf-8") as f:
                    labels[output.name] = [line.rstrip("\r\n") for line in f]
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) else str(e)  # an OSError's text has the full path
                raise ModelConfigError(f"model '{name}': cannot read label file '{output.label_filename}' for output "
                                       f"'{output.name}': {reason}") from None
    return labels


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
