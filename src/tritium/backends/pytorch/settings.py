"""The pytorch backend's model ``parameters`` and the process-wide torch settings they make."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from tritium.core.errors import UnavailableError

from .. import parameters
from ..base import ModelContext

log = logging.getLogger("tritium.backends.pytorch")

INSTALL_HINT = "pip install 'tritium[pytorch]'"

_threads_lock = threading.Lock()
_intra_op_threads: tuple[str, int] | None = None  # (model that set it, count)
_inter_op_threads: tuple[str, int] | None = None


def torch_module() -> Any:
    try:
        import torch
    except ImportError as e:
        raise UnavailableError(
            f"the pytorch backend needs PyTorch, which is not installed ({e}); install it with {INSTALL_HINT}"
        ) from None
    return torch


@dataclass(frozen=True, slots=True)
class Settings:
    """The pytorch backend's model ``parameters``; ``None`` leaves torch's own setting alone."""

    inference_mode: bool = True
    optimized_execution: bool = True
    cudnn: bool = True
    cache_cleaning: bool = False
    weight_sharing: bool = False
    jit_executor: bool | None = None
    jit_profiling: bool | None = None
    tensor_fuser: bool | None = None
    nvfuser: bool | None = None
    intra_op_threads: int | None = None
    inter_op_threads: int | None = None

    @classmethod
    def from_context(cls, ctx: ModelContext) -> Settings:
        def flag(key: str) -> bool | None:
            return parameters.flag(ctx, key)

        def count(key: str) -> int | None:
            n = parameters.integer(ctx, key)
            return n if n is not None and n > 0 else None

        def default(value: bool | None, fallback: bool) -> bool:
            return fallback if value is None else value

        disable_optimized = flag("DISABLE_OPTIMIZED_EXECUTION")
        disable_cudnn = flag("DISABLE_CUDNN")
        return cls(
            inference_mode=default(flag("INFERENCE_MODE"), True),
            optimized_execution=not default(disable_optimized, False),
            cudnn=not default(disable_cudnn, False),
            cache_cleaning=default(flag("ENABLE_CACHE_CLEANING"), False),
            weight_sharing=default(flag("ENABLE_WEIGHT_SHARING"), False),
            jit_executor=flag("ENABLE_JIT_EXECUTOR"),
            jit_profiling=flag("ENABLE_JIT_PROFILING"),
            tensor_fuser=flag("ENABLE_TENSOR_FUSER"),
            nvfuser=flag("ENABLE_NVFUSER"),
            intra_op_threads=count("INTRA_OP_THREAD_COUNT"),
            inter_op_threads=count("INTER_OP_THREAD_COUNT"),
        )



def apply_thread_counts(torch: Any, name: str, s: Settings) -> None:
    """torch's thread pools are per process: as in Triton, the first model that sets a count wins."""
    global _intra_op_threads, _inter_op_threads
    with _threads_lock:
        if s.intra_op_threads is not None:
            if _intra_op_threads is None:
                torch.set_num_threads(s.intra_op_threads)
                _intra_op_threads = (name, s.intra_op_threads)
            elif _intra_op_threads[1] != s.intra_op_threads:
                log.warning("model '%s' asks for INTRA_OP_THREAD_COUNT %d but model '%s' already set it to %d for "
                            "this process; keeping %d", name, s.intra_op_threads, *_intra_op_threads,
                            _intra_op_threads[1])
            log.info("Intra op thread count is set to %d for model '%s'", torch.get_num_threads(), name)
        if s.inter_op_threads is not None:
            if _inter_op_threads is None:
                try:
                    torch.set_num_interop_threads(s.inter_op_threads)
                    _inter_op_threads = (name, s.inter_op_threads)
                except RuntimeError as e:  # torch allows it once, before any inter-op work started
                    log.warning("model '%s': INTER_OP_THREAD_COUNT %d cannot be applied: %s", name,
                                s.inter_op_threads, e)
            elif _inter_op_threads[1] != s.inter_op_threads:
                log.warning("model '%s' asks for INTER_OP_THREAD_COUNT %d but model '%s' already set it to %d for "
                            "this process; keeping %d", name, s.inter_op_threads, *_inter_op_threads,
                            _inter_op_threads[1])
            log.info("Inter op thread count is set to %d for model '%s'", torch.get_num_interop_threads(), name)


def torch_version(torch: Any) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def onoff(value: bool) -> str:
    return "enabled" if value else "disabled"
