"""The pytorch backend's ``Backend`` and ``ModelState``: loading TorchScript files onto instances' devices."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from tritium.core.errors import InternalError, ModelConfigError, UnavailableError

from ..base import ALL_INSTANCE_KINDS, Backend, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from .execution import PyTorchInstanceState
from .settings import Settings, apply_thread_counts, onoff, torch_module, torch_version

log = logging.getLogger("tritium.backends.pytorch")


class PyTorchBackend(Backend):
    name = "pytorch"
    instance_kinds = ALL_INSTANCE_KINDS

    def initialize(self, backend_config: Any) -> None:
        torch_module()

    def auto_complete_config(self, ctx: ModelContext) -> None:
        # TorchScript files carry no tensor names or shapes: Triton skips auto-complete for this backend too.
        if not ctx.config.input or not ctx.config.output:
            log.warning("skipping model configuration auto-complete for '%s': not supported for pytorch backend",
                        ctx.name)

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        if ctx.config.platform == "torch_aoti":
            raise ModelConfigError(
                f"unable to load model '{ctx.name}': platform 'torch_aoti' (AOTInductor model.pt2) is not supported; "
                "tritium's pytorch backend serves TorchScript files (platform 'pytorch_libtorch')"
            )
        path = ctx.model_path
        if not os.path.isfile(path):
            raise UnavailableError(f"unable to find '{ctx.shown(path)}' for model '{ctx.name}'")
        return PyTorchModelState(ctx, Settings.from_context(ctx))


class PyTorchModelState(ModelState):
    """Settings, process-wide thread counts, and the modules shared across instances (ENABLE_WEIGHT_SHARING)."""

    def __init__(self, ctx: ModelContext, settings: Settings) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.torch = torch_module()
        self._shared: dict[tuple[str, int | None], Any] = {}
        self._lock = threading.Lock()
        apply_thread_counts(self.torch, ctx.name, settings)
        if settings.nvfuser is not None:
            self._apply_nvfuser(settings.nvfuser)
        if ctx.config.parameters:  # as Triton, say what the parameters changed
            log.info("Inference Mode is %s, optimized execution is %s, cache cleaning is %s, weight sharing is %s "
                     "for model '%s'", onoff(settings.inference_mode), onoff(settings.optimized_execution),
                     onoff(settings.cache_cleaning), onoff(settings.weight_sharing), ctx.name)

    def _apply_nvfuser(self, enable: bool) -> None:
        torch = self.torch
        if torch_version(torch) >= (2, 2):  # NVFuser left TorchScript in 2.2; what remains is a warning no-op
            log.warning("model '%s': parameter ENABLE_NVFUSER has no effect: torch %s no longer has NVFuser for "
                        "TorchScript (use ENABLE_TENSOR_FUSER)", self.ctx.name, torch.__version__)
            return
        torch._C._jit_set_nvfuser_enabled(enable)
        log.info("NvFuser is %s for model '%s'", onoff(enable), self.ctx.name)

    def load_module(self, device: Any) -> Any:
        """``torch.jit.load`` onto ``device``; with weight sharing, once per device for all instances."""
        key = (device.type, device.index) if device is not None else ("model", None)
        if self.settings.weight_sharing:
            with self._lock:
                module = self._shared.get(key)
                if module is None:
                    module = self._shared[key] = self._load(device)
                else:
                    log.info("Reusing TorchScript model for model '%s' on %s", self.ctx.name, device or "its devices")
                return module
        return self._load(device)

    def _load(self, device: Any) -> Any:
        torch, path = self.torch, self.ctx.model_path
        try:
            with torch.inference_mode(self.settings.inference_mode):
                module = torch.jit.load(path, map_location=device)
        except Exception as e:  # torch raises RuntimeError, ValueError, ... for files it cannot read
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shown = self.ctx.shown(path)  # never the server's absolute path
            raise InternalError(
                f"failed to load model '{self.ctx.name}': {shown} is not a TorchScript file torch.jit.load can read "
                f"({reason.replace(path, shown)})"
            ) from None
        module.eval()
        return module

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        torch = self.torch
        device: Any
        if spec.kind == "KIND_GPU":
            if not torch.cuda.is_available():
                raise UnavailableError(
                    f"instance {spec.name} of model {self.ctx.name} has kind KIND_GPU but the installed torch "
                    f"{torch.__version__} cannot use CUDA (install a CUDA build of torch)"
                )
            if spec.device_id >= torch.cuda.device_count():
                raise UnavailableError(
                    f"instance {spec.name} of model {self.ctx.name} asks for GPU {spec.device_id} but torch sees "
                    f"{torch.cuda.device_count()} GPU(s)"
                )
            device = torch.device("cuda", spec.device_id)
        elif spec.kind == "KIND_MODEL":
            device = None  # keep the devices saved in the file
        else:
            device = torch.device("cpu")
        module = self.load_module(device)
        return PyTorchInstanceState(spec, self, module, device)

    def finalize(self) -> None:
        self._shared.clear()
