"""OpenVINO models, as Triton's OpenVINO backend serves them (``backend: "openvino"``).

Written against the public contract only (``tritium.backends``); OpenVINO comes with the ``openvino``
extra (``pip install tritium[openvino]``) and is imported when the first such model loads.

Files: ``<version>/model.xml`` (+ ``model.bin``, OpenVINO IR) by default; as Triton's backend documents,
``default_model_filename`` may name any format OpenVINO's ``Core.read_model`` reads instead:
``model.onnx``, ``model.pdmodel`` (PaddlePaddle), ``model.saved_model`` (a TensorFlow SavedModel
folder), ``model.tflite``.

Parameters (Triton's, string values, case-insensitive):

- ``PERFORMANCE_HINT`` (LATENCY / THROUGHPUT / CUMULATIVE_THROUGHPUT), ``NUM_STREAMS`` (AUTO / NUMA /
  a number), ``INFERENCE_NUM_THREADS``, ``COMPILATION_NUM_THREADS`` (numbers), ``HINT_BF16`` (YES):
  passed to OpenVINO when the model compiles; a value outside these fails the load naming the parameter.
- ``INFERENCE_PRECISION_HINT`` (f32 / bf16 / f16): tritium's own addition.  On CPUs with bfloat16
  units (AMX, AVX512-BF16) OpenVINO runs FP32 models in bfloat16 unless told otherwise, as under Triton;
  ``f32`` gives exact float32 results.
- ``ENABLE_CPU_PINNING`` (YES / NO): tritium's own; OpenVINO's thread pinning, off unless YES (pinned
  inference threads compete with the server's own threads for their cores: much worse tail latency).
- ``TARGET_DEVICE``: the OpenVINO device (CPU by default, or GPU / NPU / AUTO / MULTI:... / HETERO:...);
  one OpenVINO does not find fails the load, naming the devices it has.
- ``CPU_EXTENSION_PATH``: a shared library of custom CPU kernels, loaded into this model's Core; it must lie
  inside the model folder (Triton takes any absolute path).
- ``RESHAPE_IO_LAYERS``: reshape the model's inputs to the config's dims (-1 = any size).
- ``SKIP_OV_DYNAMIC_BATCHSIZE``: run the model at a fixed batch of ``max_batch_size`` (for topologies
  that cannot take a dynamic batch); with it, ``ENABLE_BATCH_PADDING`` pads smaller batches with
  zeros, else they fail as in Triton.  Without it (the default) the batch dimension is made dynamic,
  so any batch up to ``max_batch_size`` runs as it is (Triton fixes it at ``max_batch_size``).

As in Triton, the compiled model is shared by a model's instances and each instance owns one infer
request: ``instance_group`` count = concurrent executions, ``NUM_STREAMS`` = how many OpenVINO runs
at once.  Instances are KIND_CPU only (Triton's OpenVINO backend refuses other kinds: an Intel GPU is
chosen with ``TARGET_DEVICE``).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from tritium.backends import (
    Backend,
    DataType,
    InferenceRequest,
    InferenceResponse,
    InstanceSpec,
    InvalidArgumentError,
    ModelConfigError,
    ModelContext,
    ModelInstanceState,
    ModelState,
    TritiumError,
    UnavailableError,
    batch_inputs,
    batch_responses,
    model_config,
    requested_union,
)

log = logging.getLogger(__name__)

mc = model_config
#: config data type -> OpenVINO element type name (Triton's mapping, plus FP64, which OpenVINO has).
_TO_OV = {
    mc.TYPE_BOOL: "boolean", mc.TYPE_UINT8: "u8", mc.TYPE_UINT16: "u16", mc.TYPE_UINT32: "u32",
    mc.TYPE_UINT64: "u64", mc.TYPE_INT8: "i8", mc.TYPE_INT16: "i16", mc.TYPE_INT32: "i32",
    mc.TYPE_INT64: "i64", mc.TYPE_FP16: "f16", mc.TYPE_FP32: "f32", mc.TYPE_FP64: "f64",
}
_FROM_OV = {v: k for k, v in _TO_OV.items()}
_BOOL_WORDS = {"yes": True, "true": True, "1": True, "on": True, "no": False, "false": False, "0": False, "off": False}
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
#: Parameters passed to OpenVINO as compile properties.
_COMPILE_KEYS = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS", "HINT_BF16",
                 "ENABLE_CPU_PINNING")
_PRECISIONS = ("f32", "bf16", "f16")
_MODEL_KEYS = ("INFERENCE_PRECISION_HINT", "TARGET_DEVICE", "CPU_EXTENSION_PATH", "RESHAPE_IO_LAYERS",
               "SKIP_OV_DYNAMIC_BATCHSIZE", "ENABLE_BATCH_PADDING")


def _ov() -> Any:
    try:
        import openvino
    except ImportError as e:
        raise UnavailableError(f"the openvino backend needs the 'openvino' package (pip install "
                               f"'tritium[openvino]'): {e}") from None
    return openvino


class Settings:
    """The OpenVINO parameters of one model, checked: a bad value fails the load naming the parameter."""

    def __init__(self, ctx: ModelContext) -> None:
        self.name = ctx.name
        self.properties: dict[str, Any] = {}
        for key in ctx.config.parameters:
            if key not in _COMPILE_KEYS and key not in _MODEL_KEYS:
                log.warning("model '%s': parameter '%s' is not an OpenVINO backend parameter: ignored", ctx.name, key)
        self._compile_properties(ctx)
        # Unpinned unless asked: OpenVINO pins its inference threads to cores by default, and there they
        # compete with the server's own threads (on 2 busy cores, 8 connections to an identity model: p99
        # 584 ms pinned, 14 ms unpinned; benchmarks/frameworks.py).
        pinning = self._flag(ctx, "ENABLE_CPU_PINNING") if self._text(ctx, "ENABLE_CPU_PINNING") else False
        if self.device_is_cpu(ctx):
            self.properties["ENABLE_CPU_PINNING"] = pinning
        self.device = self._text(ctx, "TARGET_DEVICE").upper() or "CPU"
        extension = self._text(ctx, "CPU_EXTENSION_PATH")
        # inside the model folder (checked by the server before any backend code runs), joined as Triton joins paths
        self.extension = ctx.model_file(extension) if extension else ""
        if self.extension and not os.path.isfile(self.extension):
            self._bad("CPU_EXTENSION_PATH", extension, "a shared library inside the model folder")
        self.reshape = self._flag(ctx, "RESHAPE_IO_LAYERS")
        self.fixed_batch = self._flag(ctx, "SKIP_OV_DYNAMIC_BATCHSIZE")
        self.padding = self._flag(ctx, "ENABLE_BATCH_PADDING")
        if self.padding and not self.fixed_batch:
            log.info("model '%s': ENABLE_BATCH_PADDING has no effect: the batch dimension is dynamic (it pads "
                     "only with SKIP_OV_DYNAMIC_BATCHSIZE)", ctx.name)

    def _compile_properties(self, ctx: ModelContext) -> None:
        """The parameters that become OpenVINO compile properties (hints, streams, threads, precision)."""
        hint = self._text(ctx, "PERFORMANCE_HINT").upper()
        if hint:
            if hint not in _HINTS:
                self._bad("PERFORMANCE_HINT", hint, "LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT")
            self.properties["PERFORMANCE_HINT"] = hint
        streams = self._text(ctx, "NUM_STREAMS").upper()
        if streams:
            if streams not in ("AUTO", "NUMA") and not streams.isdigit():
                self._bad("NUM_STREAMS", streams, "AUTO, NUMA or a non-negative number")
            self.properties["NUM_STREAMS"] = streams
        for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
            text = self._text(ctx, key)
            if text:
                if not text.isdigit():
                    self._bad(key, text, "a non-negative number")
                self.properties[key] = int(text)
        bf16 = self._text(ctx, "HINT_BF16").upper()
        if bf16:
            if bf16 != "YES":
                self._bad("HINT_BF16", bf16, "YES")
            self.properties["INFERENCE_PRECISION_HINT"] = "bf16"
        precision = self._text(ctx, "INFERENCE_PRECISION_HINT").lower()
        if precision:
            if precision not in _PRECISIONS or bf16:
                self._bad("INFERENCE_PRECISION_HINT", precision, "f32, bf16 or f16 (and not with HINT_BF16)")
            self.properties["INFERENCE_PRECISION_HINT"] = precision

    @staticmethod
    def device_is_cpu(ctx: ModelContext) -> bool:
        return (ctx.parameter("TARGET_DEVICE") or "CPU").strip().upper() == "CPU"

    @staticmethod
    def _text(ctx: ModelContext, key: str) -> str:
        return (ctx.parameter(key) or "").strip()

    def _bad(self, key: str, value: str, expected: str) -> None:
        raise ModelConfigError(f"model '{self.name}': OpenVINO parameter '{key}' must be {expected}, got '{value}'")

    def _flag(self, ctx: ModelContext, key: str) -> bool:
        text = self._text(ctx, key).lower()
        if not text:
            return False
        if text not in _BOOL_WORDS:
            self._bad(key, text, "YES or NO")
        return _BOOL_WORDS[text]


def _bare_infer(request: Any) -> Callable[[], Any]:
    """``request``'s run without what ``InferRequest.infer()`` adds in Python around it: a dispatch of (no) inputs,
    and a dictionary of copies of every output, which the backend does not read (it copies the outputs it
    sends from the request's tensors).  The binding's own ``infer(inputs, share_outputs, decode_strings)``
    with no inputs and shared outputs makes views only (~2.5 us less per run); if an OpenVINO release drops
    that entry point, the public method."""
    try:
        from openvino._pyopenvino import InferRequest as Binding

        if isinstance(request, Binding):
            return functools.partial(Binding.infer, request, {}, True, False)
    except ImportError:
        pass
    return request.infer


def _finalized() -> None:
    raise UnavailableError("the OpenVINO model instance was finalized")


def _read(ctx: ModelContext, core: Any) -> Any:
    """The model file of this version, read by OpenVINO (IR, ONNX, PaddlePaddle, TF SavedModel, TFLite)."""
    path = ctx.model_path
    version_dir = os.path.realpath(ctx.version_dir)
    if os.path.commonpath([os.path.realpath(path), version_dir]) != version_dir:
        raise ModelConfigError(f"model '{ctx.name}': model file '{ctx.config.default_model_filename}' lies outside "
                               "the version folder")
    if not os.path.exists(path):
        raise ModelConfigError(f"unable to find '{path}' for model '{ctx.name}'")
    try:
        return core.read_model(path)
    except Exception as e:  # OpenVINO's RuntimeError carries its reader's reason
        raise ModelConfigError(f"unable to load model '{ctx.name}': OpenVINO cannot read {path}: "
                               f"{_short(e)}") from None


def _short(error: Exception) -> str:
    """OpenVINO's messages stack "Exception from <file>:<line>:" lines above the reason: keep the reason."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith("Exception from ")]
    return " ".join(reasons or lines)[:600]


def _dims(shape: Any, skip: int) -> list[int]:
    return [d.get_length() if d.is_static else -1 for d in list(shape)[skip:]]


def _has_batch(port: Any, ov: Any) -> bool:
    layout = ov.layout_helpers.get_layout(port)
    return not layout.empty and ov.layout_helpers.has_batch(layout)


class OpenVinoBackend(Backend):
    """OpenVINO IR (and the other formats OpenVINO reads) on the CPU."""

    # instance_kinds: the default, KIND_CPU, as Triton's OpenVINO backend ("supports only Kind CPU").

    def __init__(self) -> None:
        self._backend_config: Mapping[str, str] = {}

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self._backend_config = backend_config
        _ov()

    def auto_complete_config(self, ctx: ModelContext) -> None:
        """Triton's OpenVINO rules: batching when every input and output has a layout with a batch ('N')
        dimension; inputs and outputs (name, data type, dims) filled when the config has none."""
        ov = _ov()
        config = ctx.config
        model = _read(ctx, ov.Core())
        ports = [*model.inputs, *model.outputs]
        if all(_has_batch(p, ov) for p in ports):
            if config.max_batch_size == 0:
                default = ctx.backend_config.get("default-max-batch-size", "4") or "4"
                config.max_batch_size = max(int(default), 1)
            if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
                config.dynamic_batching.SetInParent()
        skip = 1 if config.max_batch_size > 0 else 0
        for tensors, model_ports in ((config.input, model.inputs), (config.output, model.outputs)):
            if len(tensors):
                continue
            for port in model_ports:
                kind = _FROM_OV.get(port.element_type.to_string())
                if kind is None:
                    raise ModelConfigError(f"model '{ctx.name}': tensor '{port.any_name}' has OpenVINO type "
                                           f"{port.element_type.to_string()}, which has no Triton data type here")
                tensors.add(name=port.any_name, data_type=kind, dims=_dims(port.partial_shape, skip))

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        return OpenVinoModel(ctx)


class OpenVinoModel(ModelState):
    """The model read, checked against its config and compiled once; instances share the compiled model."""

    def __init__(self, ctx: ModelContext) -> None:
        super().__init__(ctx)
        ov = self.ov = _ov()
        self.settings = settings = Settings(ctx)
        core = ov.Core()
        if settings.extension:
            try:
                core.add_extension(settings.extension)
            except Exception as e:
                raise ModelConfigError(f"model '{ctx.name}': OpenVINO parameter 'CPU_EXTENSION_PATH': cannot load "
                                       f"{settings.extension}: {_short(e)}") from None
        devices = core.available_devices
        base = settings.device.split(":")[0].split(".")[0]
        if base not in ("AUTO", "MULTI", "HETERO", "BATCH") and not any(d.split(".")[0] == base for d in devices):
            raise UnavailableError(f"model '{ctx.name}': OpenVINO parameter 'TARGET_DEVICE' is '{settings.device}', "
                                   f"which OpenVINO does not find here (devices: {', '.join(devices) or 'none'})")
        model = _read(ctx, core)
        self.batch = ctx.config.max_batch_size
        model = self._prepare(model)
        try:
            self.compiled = core.compile_model(model, settings.device, settings.properties)
        except Exception as e:
            keys = ", ".join(k for k in ctx.config.parameters if k in _COMPILE_KEYS) or "none"
            raise ModelConfigError(f"unable to load model '{ctx.name}': OpenVINO cannot compile it for "
                                   f"{settings.device} (parameters: {keys}): {_short(e)}") from None
        ports = {p.any_name: i for i, p in enumerate(self.compiled.outputs)}
        self.outputs = [(o.name, ports[o.name], DataType.from_config(mc.DataType.Name(o.data_type)))
                        for o in ctx.config.output]
        self.output_names = [name for name, _, _ in self.outputs]
        ports_in = {p.any_name: i for i, p in enumerate(self.compiled.inputs)}
        self.input_ports = [(ports_in[i.name], i.name) for i in ctx.config.input]

    def _prepare(self, model: Any) -> Any:
        """Check the config against the model; set its tensor types to the config's (OpenVINO converts, as
        in Triton), its batch dimension dynamic (or ``max_batch_size`` with SKIP_OV_DYNAMIC_BATCHSIZE), and
        with RESHAPE_IO_LAYERS its input shapes to the config's."""
        ov, ctx, settings = self.ov, self.ctx, self.settings
        from openvino.preprocess import PrePostProcessor

        config, name = ctx.config, ctx.name
        have_in = {p.any_name: p for p in model.inputs}
        have_out = {p.any_name: p for p in model.outputs}
        ppp = PrePostProcessor(model)
        shapes: dict[str, Any] = {}
        batched = self.batch > 0
        batch_dim = ov.Dimension(self.batch) if settings.fixed_batch else ov.Dimension()
        for what, tensors, have in (("input", config.input, have_in), ("output", config.output, have_out)):
            for tensor in tensors:
                port = have.get(tensor.name)
                if port is None:
                    raise ModelConfigError(f"unable to load model '{name}', configuration expects {what} "
                                           f"'{tensor.name}' but the model only has {what}s {sorted(have)}")
                element = _TO_OV.get(tensor.data_type)
                if element is None:
                    raise ModelConfigError(f"unable to load model '{name}': {what} '{tensor.name}' is "
                                           f"{mc.DataType.Name(tensor.data_type)}, which the OpenVINO backend does "
                                           "not exchange (as Triton's: numeric and BOOL types only)")
                side = ppp.input(tensor.name) if what == "input" else ppp.output(tensor.name)
                side.tensor().set_element_type(getattr(ov.Type, element))
                dims = list(tensor.reshape.shape) if tensor.HasField("reshape") else list(tensor.dims)
                shape = port.partial_shape
                if shape.rank.is_dynamic:
                    continue
                if batched and len(shape) == 0:
                    raise ModelConfigError(f"model '{name}', tensor '{tensor.name}': for the model to support "
                                           "batching the shape should have at least 1 dimension")
                if what == "input" and settings.reshape:
                    full = ([batch_dim] if batched else []) + [ov.Dimension() if d == -1 else ov.Dimension(d)
                                                               for d in dims]
                    shapes[tensor.name] = ov.PartialShape(full)
                    continue
                model_dims = _dims(shape, 0)
                want = ([-1] if batched else []) + dims
                skip = 1 if batched else 0
                if len(model_dims) != len(want) or any(
                        m != -1 and c != -1 and m != c for m, c in zip(model_dims[skip:], want[skip:], strict=True)):
                    raise ModelConfigError(
                        f"unable to load model '{name}', {what} '{tensor.name}': the model expects shape "
                        f"{model_dims} but the configuration specifies {want} (max_batch_size {self.batch}"
                        f"{', the first is the batch' if batched else ''}); RESHAPE_IO_LAYERS=YES reshapes "
                        "the model's inputs to the config's dims")
                if what == "input" and batched:
                    shapes[tensor.name] = ov.PartialShape([batch_dim, *list(shape)[1:]])
        try:
            model = ppp.build()
            if shapes:
                model.reshape(shapes)
        except Exception as e:
            hint = ("; SKIP_OV_DYNAMIC_BATCHSIZE=YES runs it at a fixed batch of max_batch_size"
                    if batched and not settings.fixed_batch else "")
            raise ModelConfigError(f"unable to load model '{name}': OpenVINO cannot give it the config's types "
                                   f"and shapes ({ {k: str(v) for k, v in shapes.items()} }): "
                                   f"{_short(e)}{hint}") from None
        return model

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        return OpenVinoInstance(spec, self)

    def finalize(self) -> None:
        self.compiled = None


class OpenVinoInstance(ModelInstanceState):
    """One infer request of the shared compiled model (Triton: one per instance)."""

    def __init__(self, spec: InstanceSpec, model: OpenVinoModel) -> None:
        super().__init__(spec)
        self.model = model
        self.request = request = model.compiled.create_infer_request()
        # The request's tensors, fetched once: each fetch is a binding call (~1 us), and a tensor stays the
        # request's own across runs (an output's follows the shape of each run).  ``views[i]``: input i's
        # numpy view and the shape it was made for; a new shape reallocates the tensor, so a new view.
        self.inputs = [(name, request.get_input_tensor(index)) for index, name in model.input_ports]
        self.views: list[tuple[tuple[int, ...], np.ndarray] | None] = [None] * len(self.inputs)
        self.outputs = [(name, request.get_output_tensor(index), datatype) for name, index, datatype in model.outputs]
        self.infer: Callable[[], Any] = _bare_infer(request)
        settings = model.settings
        self.pad_to = model.batch if settings.fixed_batch and model.batch > 0 else 0
        self.padding = settings.padding

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        model = self.model
        feeds = batch_inputs(requests)
        rows = sum(r.batch_size for r in requests) if model.batch > 0 else 0
        pad = 0
        if self.pad_to and rows != self.pad_to:
            if not self.padding:
                raise InvalidArgumentError(
                    f"model '{model.ctx.name}' runs at a fixed batch size of {self.pad_to} "
                    f"(SKIP_OV_DYNAMIC_BATCHSIZE), got a batch of {rows}; set ENABLE_BATCH_PADDING to YES to pad "
                    "smaller batches")
            pad = self.pad_to - rows
        try:
            # Inputs are copied into the request's own tensors: cheaper than infer(dict) (which wraps each
            # array per call), and the request never points at request bodies the server frees afterwards
            # (OpenVINO may write outputs in place over inputs: an identity graph does).
            views = self.views
            for i, (name, tensor) in enumerate(self.inputs):
                array = feeds[name]
                shape = (array.shape[0] + pad, *array.shape[1:]) if pad else array.shape
                known = views[i]
                if known is None or known[0] != shape:
                    tensor.shape = shape
                    known = views[i] = (shape, tensor.data)
                view = known[1]
                if pad:
                    view[:rows] = array
                    view[rows:] = 0
                else:
                    view[...] = array
            self.input_end_ns = time.monotonic_ns()
            self.infer()
        except Exception as e:  # a shape the model cannot take, or OpenVINO's own failure
            self.views = [None] * len(self.inputs)
            raise InvalidArgumentError(f"OpenVINO failed to run model '{model.ctx.name}': {_short(e)}") from None
        self.infer_end_ns = time.monotonic_ns()
        wanted = requested_union(requests, model.output_names)

        def arrays() -> Iterator[tuple[str, DataType, np.ndarray]]:
            for name, tensor, datatype in self.outputs:
                if name in wanted:
                    array = tensor.data
                    # a copy: the infer request's memory is reused by its next run
                    yield name, datatype, (array[:rows] if pad else array).copy()

        return batch_responses(requests, model.ctx.version, arrays(), model.batch > 0)

    def finalize(self) -> None:
        self.request = None
        self.infer = _finalized
        self.inputs, self.outputs, self.views = [], [], []
