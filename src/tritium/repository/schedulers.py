"""Which scheduler serves a model, from its config: sequence batcher, dynamic batcher, direct, or ensemble."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from tritium._proto import model_config_pb2 as mc
from tritium.config.ensemble import EnsembleStep
from tritium.config.sequence import sequence_settings
from tritium.core.model import Model
from tritium.scheduler.direct import DirectScheduler
from tritium.scheduler.dynamic import DynamicBatcher
from tritium.scheduler.ensemble import EnsembleScheduler
from tritium.scheduler.limited import LimitedDirectScheduler, LimitedDynamicBatcher, LimitedSequenceBatcher
from tritium.scheduler.rate_limiter import InstanceLimit
from tritium.scheduler.sequence import SequenceBatcher
from tritium.scheduler.workers import InstanceWorker

#: Makes a model's scheduler over its instances' workers.
SchedulerFactory = Callable[[Sequence[InstanceWorker], asyncio.AbstractEventLoop], DirectScheduler | SequenceBatcher]


def scheduler_for(config: mc.ModelConfig, model_dir: str,
                  limits: Sequence[InstanceLimit] | None = None) -> SchedulerFactory:
    """The scheduler ``config`` asks for, its settings checked now (before any instance is made).

    ``sequence_batching`` wins over ``dynamic_batching``, which needs ``max_batch_size`` > 0; otherwise
    requests go straight to the instances.  ``limits`` (one per instance, under ``--rate-limit=execution_count``)
    select the rate-limited schedulers.  Raises
    :class:`ModelConfigError` for bad sequence settings (its initial-state files are read here, from
    ``model_dir``).
    """
    if config.HasField("sequence_batching"):
        settings = sequence_settings(config, model_dir)
        if limits is not None:
            return lambda workers, loop: LimitedSequenceBatcher(workers, loop, limits, config, settings)
        return lambda workers, loop: SequenceBatcher(workers, loop, config, settings)
    if config.HasField("dynamic_batching") and config.max_batch_size > 0:
        ragged = [i.name for i in config.input if i.allow_ragged_batch]
        if limits is not None:
            return lambda workers, loop: LimitedDynamicBatcher(workers, loop, limits, config.max_batch_size,
                                                               config.dynamic_batching, ragged)
        return lambda workers, loop: DynamicBatcher(workers, loop, config.max_batch_size, config.dynamic_batching,
                                                    ragged)
    if limits is not None:
        return lambda workers, loop: LimitedDirectScheduler(workers, loop, limits)
    return DirectScheduler


def ensemble_scheduler(name: str, config: mc.ModelConfig, steps: list[EnsembleStep],
                       lookup: Callable[[str, int], Model]) -> EnsembleScheduler:
    """An ensemble's scheduler: it runs ``steps`` on the composing models ``lookup`` finds at request time."""
    return EnsembleScheduler(name, steps, [o.name for o in config.output], lookup)
