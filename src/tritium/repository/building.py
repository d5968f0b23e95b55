"""Building a model's versions from a :class:`~.planning.Plan`: the config completed and checked, the
backend's model and instances, their workers and scheduler, labels, warmup; and freeing them again.

Everything here runs on a load thread; a version that fails comes back UNAVAILABLE with Triton's reason,
its instances freed, and never takes the server or another version down.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable, Sequence

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import Backend, InferenceHandle, InstanceSpec, ModelContext
from tritium.backends.registry import BackendRegistry, check_model
from tritium.config.autocomplete import fill_backend_fields
from tritium.config.ensemble import check_composing_models, ensemble_steps, is_ensemble
from tritium.config.parse import config_path
from tritium.config.paths import check_config_paths, inside_model_dir
from tritium.config.validate import check_instance_groups, normalize, validate
from tritium.core.devices import available_gpus
from tritium.core.errors import ModelConfigError, TritiumError, status_text
from tritium.core.model import Model
from tritium.core.response_cache import ResponseCache
from tritium.core.stats import LatencySummaries
from tritium.options import ServerOptions
from tritium.scheduler.rate_limiter import RateLimiter
from tritium.scheduler.workers import InstanceWorker

from .planning import Plan
from .schedulers import ensemble_scheduler, scheduler_for
from .state import State, VersionSlot
from .warmup import warm_up

log = logging.getLogger(__name__)


class ModelBuilder:
    """Builds versions with the server's backends, options and GPUs."""

    def __init__(self, options: ServerOptions, backends: BackendRegistry, lookup: Callable[[str, int], Model]) -> None:
        self._options = options
        self._backends = backends
        #: The server's models, as ensembles find their composing models.
        self._lookup = lookup
        self.gpus = available_gpus()
        #: Lets backends call this server's models (Python-backend BLS); set by the server.
        self.inference: InferenceHandle | None = None
        #: The server's response cache (``--cache-config``), for models whose config enables it.
        self.response_cache: ResponseCache | None = None
        #: With ``--model-namespacing``: (ensemble folder, step model) -> the key an ensemble's step resolves
        #: to (its own repository's copy first); set by the manager.
        self.step_key: Callable[[str, str], str] | None = None
        #: The server's rate limiter (``--rate-limit=execution_count``), shared by every model; ``None`` when off.
        self.rate_limiter = RateLimiter(options.rate_limit_resources) if options.rate_limit == "execution_count" \
            else None

    def build(self, name: str, plan: Plan, versions: Sequence[int],
              loop: asyncio.AbstractEventLoop) -> list[VersionSlot]:
        """One slot per version of ``versions``, READY or UNAVAILABLE; raises when the config itself is bad."""
        config, backend = self._complete_config(name, plan, versions)
        if is_ensemble(config):
            return [self._build_ensemble(name, version, config, plan.model_dir) for version in versions]
        assert backend is not None  # validate() refuses configs without a backend
        check_model(backend, config, name)
        slots = []
        for version in versions:
            slot = self._build_version(name, version, plan, config, backend, loop)
            if slot.state is State.READY and config.model_warmup:
                _warm_up(slot, plan.model_dir)
            slots.append(slot)
        return slots

    def _complete_config(self, name: str, plan: Plan, versions: Sequence[int]) -> tuple[mc.ModelConfig,
                                                                                        Backend | None]:
        """The config as it will be served (auto-completed, normalized, validated) and its backend."""
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
        gpus = self.gpus if backend is None or "KIND_GPU" in backend.instance_kinds else []
        normalize(config, name, gpus, cpu_count)
        validate(config, name)
        check_config_paths(config, model_dir, versions, name, plan.from_client)  # auto-complete may add some
        return config, backend

    def _build_ensemble(self, name: str, version: int, config: mc.ModelConfig, model_dir: str) -> VersionSlot:
        """An ensemble version: its graph checked against the loaded composing models, no instances."""
        steps = ensemble_steps(config, name)
        lookup = self._lookup
        step_key = self.step_key
        if self._options.model_namespacing and step_key is not None:
            def lookup(model: str, version: int) -> Model:  # its own repository's copy of a name in several
                return self._lookup(step_key(model_dir, model), version)

        check_composing_models(config, name, steps, lambda m, v: lookup(m, v).config)
        scheduler = ensemble_scheduler(name, config, steps, lookup)
        return VersionSlot(version, State.READY, model=Model(name, version, config, scheduler,
                                                             cache=self._cache_for(config)))

    def _cache_for(self, config: mc.ModelConfig) -> ResponseCache | None:
        if not config.response_cache.enable:
            return None
        if self.response_cache is None:  # as Triton: the model loads, uncached
            log.warning("model '%s' enables the response cache, but the server has no cache (--cache-config): its "
                        "responses are not cached", config.name)
        return self.response_cache

    def _context(self, name: str, version: int, model_dir: str, config: mc.ModelConfig,
                 from_client: bool = False) -> ModelContext:
        settings = dict(self._options.backend_config.get("*", {}))
        settings.update(self._options.backend_config.get(config.backend, {}))
        return ModelContext(name, version, model_dir, config, settings, self.inference,
                            config_from_client=from_client)

    def _build_version(self, name: str, version: int, plan: Plan, config: mc.ModelConfig, backend: Backend,
                       loop: asyncio.AbstractEventLoop) -> VersionSlot:
        model_dir = plan.model_dir
        slot = VersionSlot(version)
        ctx = self._context(name, version, model_dir, config, plan.from_client)
        try:
            check_instance_groups(config, name, self.gpus)
            specs = _instance_specs(config)
            limits = None
            if self.rate_limiter is not None:  # resources that could never let an instance run fail the load now
                limits = self.rate_limiter.register(specs)
                slot.unregister = functools.partial(self.rate_limiter.unregister, limits)
            make_scheduler = scheduler_for(config, model_dir, limits)  # settings checked before the model loads
            slot.model_state = backend.model_initialize(ctx)
            for spec in specs:
                slot.instances.append(slot.model_state.instance_initialize(spec))
            inline_s = self._options.inline_execute_us / 1e6
            workers = [InstanceWorker(instance, loop, inline_s) for instance in slot.instances]
            scheduler = make_scheduler(workers, loop)
            if self._options.metrics_summary_latencies:
                scheduler.stats.summaries = LatencySummaries()
            slot.model = Model(name, version, config, scheduler, _read_labels(config, model_dir, name),
                               self._cache_for(config))
            slot.state = State.READY
        except TritiumError as e:  # a version's reason reads as Triton's: "Internal: ..."
            slot.state, slot.reason = State.UNAVAILABLE, status_text(e)
            finalize(slot)
        except Exception as e:
            log.exception("failed to load '%s' version %d", name, version)
            slot.state, slot.reason = State.UNAVAILABLE, status_text(e)
            finalize(slot)
        return slot


def finalize(slot: VersionSlot) -> None:
    """Free the version's instances and model state (each failure logged, none raised)."""
    if slot.unregister is not None:
        slot.unregister()
        slot.unregister = None
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
        finalize(slot)


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
    """One spec per instance of every ``instance_group``, named as Triton names them."""
    specs = []
    for group in config.instance_group:
        kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
        devices: Sequence[int] = list(group.gpus) if group.kind == mc.ModelInstanceGroup.KIND_GPU else [0]
        for device in devices:
            for index in range(group.count):
                suffix = f"_{index}" if len(devices) == 1 else f"_{device}_{index}"
                specs.append(InstanceSpec(group.name + suffix, kind, device, group))
    return specs
