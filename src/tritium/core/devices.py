"""Which GPUs this machine can use, asked of NVIDIA's management library when it is present.

No CUDA toolkit is needed: NVML ships with the driver.  Without a driver the
answer is "none", and KIND_GPU models then fail to load with that reason.
"""

from __future__ import annotations

import ctypes
import functools
import os


@functools.lru_cache(maxsize=1)
def available_gpus() -> tuple[int, ...]:
    """Device ids of the usable GPUs; honours ``CUDA_VISIBLE_DEVICES`` and ``TRITIUM_DISABLE_GPUS=1``."""
    if os.environ.get("TRITIUM_DISABLE_GPUS") == "1":
        return ()
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return ()
    try:
        if nvml.nvmlInit_v2() != 0:
            return ()
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return ()
    except AttributeError:
        return ()
    ids = tuple(range(count.value))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = tuple(range(len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])))[: len(ids)]
    return ids
