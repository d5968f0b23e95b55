"""The model repository: finds models, loads their versions, unloads them; the one place their states change.

A model that fails to load never takes the server or another model down: its reason is kept for the index,
readiness and the log.  Loading runs on worker threads (``--model-load-thread-count`` at a time) so the
event loop keeps serving while models load.  A load is planned (:mod:`.planning`), built
(:mod:`.building`, on a load thread) and swapped in here; the queries come from :class:`.state.ModelTable`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from tritium.backends.base import InferenceHandle
from tritium.backends.registry import BackendRegistry
from tritium.config.ensemble import composing_models, is_ensemble
from tritium.config.paths import relative_text
from tritium.core.errors import InternalError, InvalidArgumentError, ModelConfigError, TritiumError, UnavailableError
from tritium.core.model import Model
from tritium.core.names import check_model_name
from tritium.core.response_cache import ResponseCache
from tritium.options import ServerOptions

from . import planning
from .building import ModelBuilder, finalize
from .ensembles import dependents_of, read_ensemble_config, uses
from .overrides import OverrideDir, check_override_name
from .overrides import remove_all as remove_overrides
from .planning import Plan, PollFailure
from .state import DUPLICATE, NAMESPACE_SEPARATOR, ModelEntry, ModelTable, State, VersionSlot, name_of
from .storage import CacheSettings, ModelSource, open_storages

log = logging.getLogger(__name__)

#: Ensembles whose composing models the current task is loading (to refuse ensembles that contain themselves).
_loading_ensembles: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("loading_ensembles", default=())


class ModelRepositoryManager(ModelTable):
    """Loads and unloads the models of ``--model-repository``; what it holds is queried as a :class:`ModelTable`."""

    def __init__(self, options: ServerOptions, backends: BackendRegistry) -> None:
        super().__init__()
        self._options = options
        self._builder = ModelBuilder(options, backends, self.get)
        #: ``--model-load-thread-count`` threads build models; a slow one holds only its own thread.
        self._load_pool = ThreadPoolExecutor(max(1, options.model_load_thread_count), thread_name_prefix="model-load")
        #: Versions being drained and finalized in the background (an unload answers before they finish).
        self._retiring: set[asyncio.Task[None]] = set()
        #: Repository folders whose names cannot be model names (warned about once).
        self._ignored_names: set[str] = set()
        #: Each ``--model-repository``: a local folder, or object storage copied into a local cache.
        self._storages = open_storages(
            options.model_repositories,
            CacheSettings(options.repository_cache_dir, options.repository_cache_size),
        )
        #: Where each model was last fetched from (its local copy goes when it no longer serves).
        self._sources: dict[str, ModelSource] = {}
        self._builder.step_key = self._step_key
        if options.model_namespacing:
            self.enable_namespacing()

    @property
    def inference(self) -> InferenceHandle | None:
        """Lets backends call this server's models (Python-backend BLS); set by the server."""
        return self._builder.inference

    @inference.setter
    def inference(self, handle: InferenceHandle | None) -> None:
        self._builder.inference = handle

    @property
    def response_cache(self) -> ResponseCache | None:
        """The server's response cache, given to the models whose config enables it."""
        return self._builder.response_cache

    @response_cache.setter
    def response_cache(self, cache: ResponseCache | None) -> None:
        self._builder.response_cache = cache

    @property
    def control_mode(self) -> str:
        return self._options.model_control_mode

    # -- discovery --------------------------------------------------------------------------------

    def scan(self, failures: list[TritiumError] | None = None) -> dict[str, ModelSource | None]:
        """Model key -> where it is, for every model in the repositories (:func:`.planning.scan`): the name, or
        with ``--model-namespacing`` one key per repository for a name in several (clients cannot address those;
        this remembers which names they are).

        A repository that cannot be read raises, or, when ``failures`` is given, is skipped and its error
        added there.
        """
        found = planning.scan(self._storages, self._ignored_names, failures, self._options.model_namespacing)
        if self._options.model_namespacing:
            counts: dict[str, int] = {}
            for key in found:
                if NAMESPACE_SEPARATOR in key:
                    counts[name_of(key)] = counts.get(name_of(key), 0) + 1
            self._ambiguous = counts
        return found

    async def scan_async(self, failures: list[TritiumError] | None = None) -> dict[str, ModelSource | None]:
        """:meth:`scan` off the event loop (object storage lists over the network)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.scan, failures)

    def fingerprints(self, found: Mapping[str, ModelSource | None]) -> dict[str, str]:
        """Name -> fingerprint of every model folder found (what the poller compares between polls)."""
        return planning.fingerprints(found)

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository index as Triton shows it (see :meth:`.state.ModelTable.rows`); a repository that
        cannot be read lists none of its models (the error is logged). With namespacing, ordered by repository,
        then name, as Triton orders its (namespace, name) identifiers."""
        found = await self.scan_async([])
        order = None
        if self._options.model_namespacing:
            repositories = {key: os.path.dirname(str(source)) for key, source in found.items() if source}

            def order(key: str) -> tuple[str, str]:
                return repositories.get(key, "\U0010ffff"), name_of(key)

        return self.rows(set(found), ready_only, {name for name, source in found.items() if source is None}, order)

    # -- lifecycle --------------------------------------------------------------------------------

    async def load_startup_models(self) -> list[str]:
        """Load what the control mode says to load at start; returns the names that failed."""
        found = await self.scan_async()  # a repository that cannot be read stops the start (as in Triton)
        if self._options.model_control_mode == "explicit":
            wanted = self._options.load_models
            names = sorted(found) if "*" in wanted else list(dict.fromkeys(wanted))
            names = [key for name in names for key in self._keys(name, found)]
        else:
            names = sorted(found)
        for name, source in found.items():
            if source is not None and name not in self._models:
                self._models[name] = ModelEntry(name_of(name), str(source))
        results = await asyncio.gather(*(self.load(name, found) for name in names), return_exceptions=True)
        return [name for name, result in zip(names, results, strict=True) if isinstance(result, BaseException)]

    async def load(self, name: str, found: Mapping[str, ModelSource | None] | None = None, *,
                   config: str | None = None,
                   files: Mapping[str, bytes] | None = None) -> None:
        """Load (or reload) the versions of ``name`` its policy selects; raise on failure.

        ``config`` (JSON) replaces the config file; ``files`` (paths like ``1/model.onnx``) make a temporary
        model folder.  New versions are built in full (warmup included) while the old ones keep serving,
        then swapped in; replaced and dropped versions are drained and finalized in the background.
        Versions whose files and config did not change are kept as they are.
        """
        check_model_name(self._checked_name(name))  # before anything touches the file system
        if self._ambiguous and name in self._ambiguous and not (config or files):
            # a name in several namespaces: each copy loads (as Triton's load of a name)
            found = await self.scan_async() if found is None else found
            keys = self._keys(name, found)
            results = await asyncio.gather(*(self.load(key, found) for key in keys), return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            return
        if files:
            # a refused request changes nothing: no folder written, no entry made or changed
            if config is None:
                raise InvalidArgumentError(f"failed to load '{name}': file overrides need the 'config' parameter too")
            for relative in files:
                check_override_name(relative, name)
        failures: list[TritiumError] = []
        found = await self.scan_async(failures) if found is None else found
        if name not in found and not files:
            if failures:  # it may be in the repository that cannot be read: say so
                raise UnavailableError(f"failed to load '{name}': {'; '.join(map(str, failures))}")
            raise InternalError(f"failed to load '{name}', failed to poll from model repository")
        source = found.get(name)  # a model made only of file overrides has no folder in the repository
        if name in found and source is None:  # the index says so (state.DUPLICATE); the load fails as Triton's
            entry = self._models.setdefault(name, ModelEntry(name, ""))
            entry.state, entry.reason = State.UNAVAILABLE, DUPLICATE
            log.error("failed to poll model '%s': not unique across all model repositories", name)
            raise InternalError(f"failed to load '{name}', failed to poll from model repository")
        entry = self._models.setdefault(name, ModelEntry(name_of(name), str(source or "")))
        entry.loads += 1
        try:
            path = str(source or "")
            if source is not None and not files:
                async with entry.lock:
                    path = await self._fetch(entry, source)
            await self._load_composing(entry, path, config)
            async with entry.lock:
                try:
                    await self._load_locked(entry, path, config, files)
                finally:
                    await self._release_if_idle(entry)
        finally:
            entry.loads -= 1
            if not entry.loads and not path and not entry.model_dir and entry.latest is None \
                    and self._models.get(name) is entry:
                # a model made only of a client's files that does not serve leaves no entry behind
                del self._models[name]

    async def _fetch(self, entry: ModelEntry, source: ModelSource) -> str:
        """The local folder of ``source``'s current files (object storage: downloaded, complete); a failure is
        recorded on ``entry`` and raised naming the repository and the model."""
        self._sources[entry.name] = source
        try:
            return await asyncio.get_running_loop().run_in_executor(self._load_pool, source.storage.local_dir,
                                                                    source.name)
        except TritiumError as e:
            if entry.latest is None:
                entry.state, entry.reason = State.UNAVAILABLE, str(e)
            log.error("%s", e)
            raise

    async def _release_if_idle(self, entry: ModelEntry) -> None:
        """With ``entry.lock`` held: a model with no version serving or loading gives up its local copy."""
        source = self._sources.get(entry.name)
        if source is None or any(slot.state in (State.READY, State.LOADING, State.UNLOADING)
                                 for slot in entry.versions.values()):
            return
        del self._sources[entry.name]
        await asyncio.get_running_loop().run_in_executor(None, source.storage.release, source.name)

    async def _release_after(self, entry: ModelEntry, retiring: list[asyncio.Task[None]]) -> None:
        await asyncio.gather(*retiring, return_exceptions=True)
        async with entry.lock:
            await self._release_if_idle(entry)

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
                step_key = self._step_key(model_dir, step_model)
                child = self._models.get(step_key)
                if child is None or child.latest is None or child.lock.locked():
                    try:
                        await self.load(step_key)
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
        override: OverrideDir | None = None
        model_dir = path
        if files:
            if config is None:
                raise InvalidArgumentError(f"failed to load '{name}': file overrides need the 'config' parameter too")
            override = OverrideDir.create(name, files)
            model_dir = override.path
        plan = await self._plan(entry, model_dir, config, override)
        entry.poll_failed = False
        entry.model_dir = path
        rebuild = override is not None or plan.fingerprint != entry.fingerprint
        build, drop = planning.changes(entry, plan, rebuild)
        if not build and not drop:
            log.info("model '%s' is already loaded and unchanged", name)
            return
        entry.mark_loading(build)
        started = time.monotonic()
        slots = await self._build(name, plan, build) if build else []
        failed = [slot for slot in slots if slot.state is not State.READY]
        for slot in failed:  # a reason reaches clients (index, load answer): paths relative to the model folder
            slot.reason = relative_text(slot.reason, model_dir)
        retire = self._swap_in(entry, plan, slots, override, started)
        if not failed or any(entry.versions[v].state is State.READY for v in plan.wanted):
            retire.extend(drop)  # versions the policy no longer selects go once the wanted ones serve
        for old in retire:
            old.state = State.UNLOADING  # no new requests; in-flight ones finish
        entry.settle("" if failed else plan.fingerprint, failed[0].reason if failed else "unloaded")
        if override is not None and not any(slot.override is override for slot in slots):
            override.remove()
        for old in retire:
            self._spawn_retire(old)
        if failed:
            raise InvalidArgumentError(
                f"load failed for model '{name}': "
                + "".join(f"version {s.version} is at UNAVAILABLE state: {s.reason};\n" for s in failed)
            )

    async def _plan(self, entry: ModelEntry, model_dir: str, config: str | None,
                    override: OverrideDir | None) -> Plan:
        """The load's plan, read on a load thread; a failure is recorded on ``entry`` and raised as the client
        should read it (paths relative to the model folder)."""
        name = entry.name
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._load_pool, planning.plan_load, name, model_dir, config,
                                              self._options.model_config_name)
        except PollFailure as e:
            if override is not None:
                override.remove()
            entry.poll_failed, entry.reason = True, str(e)
            if entry.latest is None:
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

    async def _build(self, name: str, plan: Plan, build: list[int]) -> list[VersionSlot]:
        """Build ``build``'s versions on a load thread; a failure makes them UNAVAILABLE with the reason."""
        log.info("loading model '%s' version%s %s from %s", name, "s" if len(build) > 1 else "",
                 ", ".join(map(str, build)), plan.model_dir)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._load_pool, self._builder.build, name, plan, build, loop)
        except TritiumError as e:
            return [VersionSlot(v, State.UNAVAILABLE, str(e)) for v in build]
        except Exception as e:  # a bug while loading must not take the server down
            log.exception("failed to load '%s'", name)
            return [VersionSlot(v, State.UNAVAILABLE, f"{type(e).__name__}: {e}") for v in build]

    def _swap_in(self, entry: ModelEntry, plan: Plan, slots: list[VersionSlot], override: OverrideDir | None,
                 started: float) -> list[VersionSlot]:
        """Put the built versions in place; returns the serving versions they replace (to retire)."""
        retire: list[VersionSlot] = []
        for slot in slots:
            slot.fingerprint = plan.versions[slot.version]
            if slot.state is State.READY:
                log.info("successfully loaded '%s' version %d in %.3fs", entry.name, slot.version,
                         time.monotonic() - started)
                if override is not None:
                    slot.override = override
                    override.acquire()
            else:
                log.error("failed to load '%s' version %d: %s", entry.name, slot.version, slot.reason)
            old = entry.install(slot)
            if old is not None:
                retire.append(old)
        return retire

    async def unload(self, name: str, unload_dependents: bool = False) -> None:
        """Stop serving every version of ``name``; draining and finalizing go on in the background.

        Unknown or never-loaded models are fine (as in Triton).  Serving ensembles that call ``name`` go with
        it (UNAVAILABLE, naming it).  ``unload_dependents`` on an ensemble also unloads the composing models
        loaded with it that no other serving ensemble calls (Triton's "unload model and dependents").
        """
        entry = self._models.get(name)
        if entry is None:
            check_model_name(name)  # an unknown name: say so when it cannot be a model's name at all
            if self._ambiguous and name in self._ambiguous:  # every copy of a name in several namespaces
                for key in [key for key in self._models if name_of(key) == name and key != name]:
                    await self.unload(key, unload_dependents)
            return
        composing = composing_models(entry.latest.config) if entry.latest and is_ensemble(entry.latest.config) else []
        await self._unload_one(entry)
        for ensemble in self._dependents(name):
            await self.unload(ensemble)
            if ensemble in self._models:
                self._models[ensemble].reason = f"composing model '{name_of(name)}' was unloaded"
        if unload_dependents:
            for child, _ in composing:
                child_key = self._step_key(entry.model_dir, child)
                if not self._dependents(child_key):
                    await self.unload(child_key, True)

    def _dependents(self, key: str) -> list[str]:
        """The keys of the serving ensembles whose steps run the model of ``key`` (with namespacing, those
        whose step resolves to that copy)."""
        if not self._options.model_namespacing:
            return dependents_of(key, self.ready_models())
        name = name_of(key)
        return sorted(other for other, entry in self._models.items()
                      if other != key and entry.latest is not None and uses(entry.latest, name)
                      and self._step_key(entry.model_dir, name) == key)

    async def _unload_one(self, entry: ModelEntry) -> None:
        async with entry.lock:
            retire = [slot for slot in entry.versions.values() if slot.state is State.READY]
            for slot in retire:
                slot.state = State.UNLOADING
            entry.refresh()
            entry.fingerprint = ""
            if retire or entry.state is State.READY:
                entry.state, entry.reason = State.UNAVAILABLE, "unloaded"
            tasks = [self._spawn_retire(slot) for slot in retire]
        self._track(asyncio.ensure_future(self._release_after(entry, tasks)))

    def _checked_name(self, name: str) -> str:
        """What of ``name`` must be a valid model name: all of it, or the name part of a namespaced key (never
        a client's: the server checks those before they get here)."""
        return name_of(name) if self._options.model_namespacing and NAMESPACE_SEPARATOR in name else name

    def _keys(self, name: str, found: Mapping[str, ModelSource | None]) -> list[str]:
        """The keys of ``name``: itself, or with namespacing the key of each repository's copy."""
        if not self._ambiguous or name not in self._ambiguous:
            return [name]
        return [key for key in found if NAMESPACE_SEPARATOR in key and name_of(key) == name]

    def _step_key(self, model_dir: str, step_model: str) -> str:
        """The key of an ensemble step's model: with namespacing, the copy in the ensemble's own repository
        when its name is in several (as Triton resolves steps in the ensemble's namespace first)."""
        if self._ambiguous and step_model in self._ambiguous:
            return os.path.dirname(model_dir) + NAMESPACE_SEPARATOR + step_model
        return step_model

    async def unload_all(self) -> None:
        """Unload every model and wait until each has drained and been finalized (shutdown)."""
        await asyncio.gather(*(self.unload(name) for name in list(self._models)), return_exceptions=True)
        await self.wait_retired()
        remove_overrides()
        loop = asyncio.get_running_loop()
        for storage in self._storages:
            await loop.run_in_executor(None, storage.close)
        self._load_pool.shutdown(wait=False, cancel_futures=True)

    async def wait_retired(self) -> None:
        """Wait until every version being unloaded has been finalized."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    def _spawn_retire(self, slot: VersionSlot) -> asyncio.Task[None]:
        return self._track(asyncio.ensure_future(self._retire(slot)))

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """Background work that :meth:`wait_retired` (shutdown) waits for."""
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return task

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
        await asyncio.get_running_loop().run_in_executor(None, finalize, slot)
        slot.state, slot.reason = State.UNAVAILABLE, "unloaded"
        if slot.override is not None:
            slot.override.release()
            slot.override = None
        if model is not None:
            log.info("successfully unloaded '%s' version %d", model.name, slot.version)


async def _drain(model: Model) -> None:
    """Wait until ``model`` has no request in flight, including any that looked it up just before the swap."""
    await model.scheduler.drain()
    await asyncio.sleep(0.01)
    await model.scheduler.drain()
