"""TensorFlow models, as Triton's TensorFlow backend serves them (``backend: "tensorflow"``, platforms
``tensorflow_savedmodel`` and ``tensorflow_graphdef``).

Written against the public contract only (``tritium.backends``); TensorFlow comes with the ``tensorflow``
extra (``pip install tritium[tensorflow]``, the CPU build) and is imported when the first such model loads.

Files: ``<version>/model.savedmodel/`` (a SavedModel folder) or ``<version>/model.graphdef`` (a frozen
GraphDef), or the ``default_model_filename``.  Like Triton's backend (TensorFlow's C API), models run in
TF1-style sessions, each execution one call of the session's C++ callable (``Session::RunCallable``): a
SavedModel's signature (``TF_SIGNATURE_DEF``, default ``serving_default``) binds config names to graph
tensors; a GraphDef's tensors are named by the config (``x`` = ``x:0``).

Auto-complete (SavedModel only; a GraphDef needs a config, as in Triton): inputs and outputs from the
signature (name, data type, dims; outputs the config names are completed, others left out); the model
can batch when every input and output has an unknown first dimension, and then ``max_batch_size`` is
``default-max-batch-size`` (4) and dynamic batching is on.

Parameters (Triton's): ``TF_NUM_INTRA_THREADS``, ``TF_NUM_INTER_THREADS``, ``TF_USE_PER_SESSION_THREADS``,
``TF_GRAPH_TAG``, ``TF_SIGNATURE_DEF``, ``MAX_SESSION_SHARE_COUNT`` (instances per session; default 1:
a session per instance), ``TF_INIT_OPS_FILE`` (operations run once per new session).  ``optimization
{ graph { level: 1 } }`` turns XLA's JIT on (``-1`` off), as in Triton.  ``--backend-config=tensorflow,...``:
``allow-soft-placement``, ``gpu-memory-fraction`` (0 = grow as needed), ``default-max-batch-size``;
``version`` must be 2 (TensorFlow 1 is refused, as Triton refuses it since 23.04).

Instances: KIND_CPU, KIND_MODEL, and KIND_GPU only where TensorFlow sees a GPU (a CUDA build): then the
graph is placed on ``/device:GPU:<id>``; with the CPU build a KIND_GPU instance fails to load.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritium.backends import (
    ALL_INSTANCE_KINDS,
    Backend,
    DataType,
    InferenceRequest,
    InferenceResponse,
    InstanceSpec,
    InternalError,
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
)

log = logging.getLogger(__name__)

mc = model_config
#: TensorFlow dtype names -> config data types (Triton's mapping).
_TF_TYPES = {
    "bool": mc.TYPE_BOOL, "uint8": mc.TYPE_UINT8, "uint16": mc.TYPE_UINT16, "uint32": mc.TYPE_UINT32,
    "uint64": mc.TYPE_UINT64, "int8": mc.TYPE_INT8, "int16": mc.TYPE_INT16, "int32": mc.TYPE_INT32,
    "int64": mc.TYPE_INT64, "float16": mc.TYPE_FP16, "float32": mc.TYPE_FP32, "float64": mc.TYPE_FP64,
    "string": mc.TYPE_STRING,
}
_PARAMETERS = ("TF_NUM_INTRA_THREADS", "TF_NUM_INTER_THREADS", "TF_USE_PER_SESSION_THREADS", "TF_GRAPH_TAG",
               "TF_SIGNATURE_DEF", "MAX_SESSION_SHARE_COUNT", "TF_INIT_OPS_FILE")
_TRUE = ("true", "on", "1", "yes")
_FALSE = ("false", "off", "0", "no")


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    try:
        import tensorflow as tf
    except ImportError as e:
        raise UnavailableError(f"the tensorflow backend needs the 'tensorflow' package (pip install "
                               f"'tritium[tensorflow]'): {e}") from None
    tf.get_logger().setLevel(logging.ERROR)  # the v1 loader's deprecation notices
    return tf


def _flag(text: str | None, what: str, default: bool = False) -> bool:
    if text is None or not text.strip():
        return default
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ModelConfigError(f"{what} must be true or false, got '{text}'")


def _whole(text: str | None, what: str, default: int, least: int = 0) -> int:
    if text is None or not text.strip():
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = least - 1
    if value < least:
        raise ModelConfigError(f"{what} must be a whole number of at least {least}, got '{text}'")
    return value


def _is_graphdef(ctx: ModelContext) -> bool:
    return ctx.config.platform == "tensorflow_graphdef" or (
        not ctx.config.platform and os.path.isfile(ctx.model_path))


def _model_path(ctx: ModelContext) -> str:
    path = ctx.model_path
    version_dir = os.path.realpath(ctx.version_dir)
    if os.path.commonpath([os.path.realpath(path), version_dir]) != version_dir:
        raise ModelConfigError(f"model '{ctx.name}': model file '{ctx.config.default_model_filename}' lies "
                               "outside the version folder")
    if not os.path.exists(path):
        raise ModelConfigError(f"unable to find '{path}' for model '{ctx.name}'")
    return path


def _signature(ctx: ModelContext, tag: str, key: str) -> Any:
    """The SignatureDef ``key`` of the meta graph tagged ``tag``, read from ``saved_model.pb`` (no session)."""
    tf = _tf()
    from tensorflow.core.protobuf import saved_model_pb2

    path = _model_path(ctx)
    saved = saved_model_pb2.SavedModel()
    try:
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved.ParseFromString(f.read())
    except Exception as e:
        raise ModelConfigError(f"unable to load model '{ctx.name}': {path} is not a SavedModel: "
                               f"{type(e).__name__}: {e}") from None
    graphs = [g for g in saved.meta_graphs if tag in g.meta_info_def.tags]
    if not graphs:
        tags = sorted({t for g in saved.meta_graphs for t in g.meta_info_def.tags})
        raise ModelConfigError(f"unable to load model '{ctx.name}': the SavedModel has no graph tagged '{tag}' "
                               f"(TF_GRAPH_TAG; it has {tags})")
    signatures = graphs[0].signature_def
    if key not in signatures:
        keys = sorted(k for k in signatures if not k.startswith("__"))
        raise ModelConfigError(f"unable to load model '{ctx.name}': the SavedModel has no signature '{key}' "
                               f"(TF_SIGNATURE_DEF; it has {keys})")
    del tf
    return signatures[key]


def _info_type(info: Any) -> int | None:
    tf = _tf()
    return _TF_TYPES.get(tf.dtypes.as_dtype(info.dtype).name)


def _info_dims(info: Any) -> list[int] | None:
    if info.tensor_shape.unknown_rank:
        return None
    return [int(d.size) if d.size >= 0 else -1 for d in info.tensor_shape.dim]


def _need_io(ctx: ModelContext) -> None:
    if not ctx.config.input or not ctx.config.output:
        raise ModelConfigError(f"model '{ctx.name}': a TensorFlow GraphDef carries no signature to complete the "
                               "config from: its config.pbtxt must list the inputs and outputs (as Triton requires)")


class TensorFlowBackend(Backend):
    """SavedModels and frozen GraphDefs, run in TensorFlow sessions."""

    #: Until initialize() asks TensorFlow whether it sees a GPU.
    instance_kinds = frozenset({"KIND_CPU", "KIND_MODEL"})

    def __init__(self) -> None:
        self.options: dict[str, Any] = {}

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        what = "--backend-config=tensorflow,{}"
        version = _whole(backend_config.get("version"), what.format("version"), 2, least=1)
        if version != 2:
            raise ModelConfigError(f"--backend-config=tensorflow,version={version}: only TensorFlow 2 is served "
                                   "(as Triton since 23.04)")
        fraction = backend_config.get("gpu-memory-fraction", "0") or "0"
        try:
            memory = float(fraction)
        except ValueError:
            memory = -1.0
        if not 0.0 <= memory <= 1.0:
            raise ModelConfigError(f"{what.format('gpu-memory-fraction')} must be between 0 and 1, got '{fraction}'")
        self.options = {
            "soft_placement": _flag(backend_config.get("allow-soft-placement"),
                                    what.format("allow-soft-placement"), True),
            "gpu_memory_fraction": memory,
            "default_max_batch_size": _whole(backend_config.get("default-max-batch-size"),
                                             what.format("default-max-batch-size"), 4),
        }
        tf = _tf()
        self.gpus = len(tf.config.list_physical_devices("GPU"))
        if self.gpus:
            self.instance_kinds = ALL_INSTANCE_KINDS
        else:
            log.info("TensorFlow sees no GPU (CPU build or no device): KIND_GPU instances are refused")

    def auto_complete_config(self, ctx: ModelContext) -> None:
        if _is_graphdef(ctx):
            _need_io(ctx)  # a GraphDef carries no signature: Triton requires its config
            return
        config = ctx.config
        signature = _signature(ctx, ctx.parameter("TF_GRAPH_TAG") or "serve",
                               ctx.parameter("TF_SIGNATURE_DEF") or "serving_default")
        infos = [*signature.inputs.values(), *signature.outputs.values()]
        shapes = [_info_dims(i) for i in infos]
        can_batch = all(s is not None and len(s) > 0 and s[0] == -1 for s in shapes)
        if config.max_batch_size == 0 and can_batch:
            config.max_batch_size = self.options["default_max_batch_size"]
        if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
        skip = 1 if config.max_batch_size > 0 else 0
        for tensors, found in ((config.input, signature.inputs), (config.output, signature.outputs)):
            named = {t.name: t for t in tensors}
            for key in sorted(found) if not named else [k for k in named if k in found]:
                info = found[key]
                tensor = named.get(key) or tensors.add(name=key)
                if tensor.data_type == mc.TYPE_INVALID and (kind := _info_type(info)) is not None:
                    tensor.data_type = kind
                dims = _info_dims(info)
                if not tensor.dims and not tensor.HasField("reshape") and dims is not None and len(dims) >= skip:
                    tensor.dims.extend(dims[skip:])
                    if not tensor.dims and skip:  # one value per batch item: [1] reshaped to a scalar
                        tensor.reshape.SetInParent()
                        tensor.dims.append(1)

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        return TensorFlowModel(ctx, self.options)


class TensorFlowModel(ModelState):
    """The model's settings and sessions (``MAX_SESSION_SHARE_COUNT`` instances share one)."""

    def __init__(self, ctx: ModelContext, options: Mapping[str, Any]) -> None:
        super().__init__(ctx)
        self.tf = _tf()
        self.options = options
        name = ctx.name
        for key in ctx.config.parameters:
            if key not in _PARAMETERS:
                log.warning("model '%s': parameter '%s' is not a TensorFlow backend parameter: ignored", name, key)
        what = f"model '{name}': TensorFlow parameter '{{}}'"
        self.intra = _whole(ctx.parameter("TF_NUM_INTRA_THREADS"), what.format("TF_NUM_INTRA_THREADS"), 0)
        self.inter = _whole(ctx.parameter("TF_NUM_INTER_THREADS"), what.format("TF_NUM_INTER_THREADS"), 0)
        self.per_session = _flag(ctx.parameter("TF_USE_PER_SESSION_THREADS"),
                                 what.format("TF_USE_PER_SESSION_THREADS"))
        self.share = _whole(ctx.parameter("MAX_SESSION_SHARE_COUNT"), what.format("MAX_SESSION_SHARE_COUNT"), 1, 1)
        self.tag = (ctx.parameter("TF_GRAPH_TAG") or "").strip() or "serve"
        self.signature_key = (ctx.parameter("TF_SIGNATURE_DEF") or "").strip() or "serving_default"
        self.init_ops = self._init_ops(ctx)
        self.graphdef = _is_graphdef(ctx)
        if self.graphdef:
            _need_io(ctx)
        self.path = _model_path(ctx)
        level = ctx.config.optimization.graph.level if ctx.config.HasField("optimization") else 0
        self.xla = {1: True, -1: False}.get(level)
        self.batched = ctx.config.max_batch_size > 0
        self.inputs = [i.name for i in ctx.config.input]
        self.outputs = [(o.name, DataType.from_config(mc.DataType.Name(o.data_type))) for o in ctx.config.output]
        for tensor in (*ctx.config.input, *ctx.config.output):
            if tensor.data_type not in _TF_TYPES.values():
                raise ModelConfigError(f"unable to load model '{name}': tensor '{tensor.name}' is "
                                       f"{mc.DataType.Name(tensor.data_type)}, which the TensorFlow backend does "
                                       "not exchange")
        #: input -> (the graph's shape, (axis, size) the graph fixes and the config leaves variable)
        self.fixed: dict[str, tuple[list[int], tuple[tuple[int, int], ...]]] = {}
        self._sessions: dict[str, list[list[Any]]] = {}  # device -> [[session, callable, users], ...]
        self._sessions["CPU"] = [[*self._session(""), 0]]  # loads and checks the model now: a bad one fails here

    def _init_ops(self, ctx: ModelContext) -> list[str]:
        filename = (ctx.parameter("TF_INIT_OPS_FILE") or "").strip()
        if not filename:
            return []
        for folder in (ctx.version_dir, ctx.model_dir):
            path = os.path.join(folder, filename)
            inside = os.path.commonpath([os.path.realpath(path), os.path.realpath(ctx.model_dir)])
            if inside == os.path.realpath(ctx.model_dir) and os.path.isfile(path):
                try:
                    with open(path, encoding="utf-8") as f:
                        ops = json.load(f)["init_ops"]
                    if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
                        raise ValueError("'init_ops' must be a list of operation names")
                    return ops
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise ModelConfigError(f"model '{ctx.name}': TensorFlow parameter 'TF_INIT_OPS_FILE': {path}: "
                                           f"{type(e).__name__}: {e}") from None
        raise ModelConfigError(f"model '{ctx.name}': TensorFlow parameter 'TF_INIT_OPS_FILE': no file '{filename}' "
                               "in the version or model folder")

    def _config_proto(self) -> Any:
        tf = self.tf
        proto = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=self.intra,
                                         inter_op_parallelism_threads=self.inter,
                                         use_per_session_threads=self.per_session,
                                         allow_soft_placement=self.options.get("soft_placement", True))
        fraction = self.options.get("gpu_memory_fraction", 0.0)
        if fraction > 0:
            proto.gpu_options.per_process_gpu_memory_fraction = fraction
        else:
            proto.gpu_options.allow_growth = True
        if self.xla is not None:
            levels = tf.compat.v1.OptimizerOptions
            proto.graph_options.optimizer_options.global_jit_level = levels.ON_1 if self.xla else levels.OFF
        return proto

    def _session(self, device: str) -> tuple[Any, Any]:
        """A new session holding the model (placed on ``device`` where given) and its call: arrays in
        config input order -> arrays in config output order."""
        tf, ctx = self.tf, self.ctx
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph, config=self._config_proto())
        try:
            with graph.as_default(), graph.device(device):
                if self.graphdef:
                    feeds, fetches = self._import_graphdef(graph)
                else:
                    feeds, fetches = self._load_savedmodel(session, graph)
                for op in self.init_ops:
                    session.run(graph.get_operation_by_name(op))
            self._check(feeds, "input")
            self._check(fetches, "output")
            call = self._callable(session, [feeds[name] for name in self.inputs],
                                  [fetches[name] for name, _ in self.outputs])
        except TritiumError:
            session.close()
            raise
        except Exception as e:  # TensorFlow's own reason: a corrupt file, an op it lacks, a bad init op
            session.close()
            raise ModelConfigError(f"unable to load model '{ctx.name}' from {self.path}: {type(e).__name__}: "
                                   f"{str(e).strip()[:600]}") from None
        return session, call

    def _callable(self, session: Any, feeds: Sequence[Any], fetches: Sequence[Any]) -> Any:
        """The session's C++ callable (``Session::MakeCallable``, as Triton's backend runs a model):
        feeds and fetches resolved once, so a call is a ``RunCallable`` with no per-call Python graph work
        (``Session.make_callable`` with a feed list goes through ``Session.run``: ~100 us more per call)."""
        from tensorflow.core.protobuf.config_pb2 import CallableOptions

        options = CallableOptions(feed=[t.name for t in feeds], fetch=[t.name for t in fetches])
        if self.inter == 1:
            # One inter-op thread: no parallelism between ops to lose, so run them on the calling
            # (instance) thread and spare a thread hand-off per execution.
            options.run_options.inter_op_thread_pool = -1
        make = getattr(session, "_make_callable_from_options", None)
        if make is not None:
            return make(options)
        # a TensorFlow without the callable API: the slower public path, same results
        call = session.make_callable(list(fetches), feed_list=list(feeds), accept_options=True)
        run_options = options.run_options
        return lambda *arrays: call(*arrays, options=run_options)

    def _import_graphdef(self, graph: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        tf = self.tf
        graph_def = tf.compat.v1.GraphDef()
        with open(self.path, "rb") as f:
            graph_def.ParseFromString(f.read())
        tf.graph_util.import_graph_def(graph_def, name="")

        def lookup(name: str, what: str) -> Any:
            try:
                return graph.get_tensor_by_name(name if ":" in name else f"{name}:0")
            except (KeyError, ValueError):
                raise ModelConfigError(f"unable to load model '{self.ctx.name}', configuration expects {what} "
                                       f"'{name}' but the GraphDef has no such tensor") from None

        return ({n: lookup(n, "input") for n in self.inputs}, {n: lookup(n, "output") for n, _ in self.outputs})

    def _load_savedmodel(self, session: Any, graph: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        signature = _signature(self.ctx, self.tag, self.signature_key)
        self.tf.compat.v1.saved_model.loader.load(session, [self.tag], self.path)
        bound = []
        for what, names, found in (("input", self.inputs, signature.inputs),
                                   ("output", [n for n, _ in self.outputs], signature.outputs)):
            missing = [n for n in names if n not in found]
            if missing:
                raise ModelConfigError(f"unable to load model '{self.ctx.name}', configuration expects {what} "
                                       f"'{missing[0]}' but signature '{self.signature_key}' only has {what}s "
                                       f"{sorted(found)}")
            bound.append({n: graph.get_tensor_by_name(found[n].name) for n in names})
        return bound[0], bound[1]

    def _check(self, tensors: Mapping[str, Any], what: str) -> None:
        """Refuse a config whose data types or dims the graph cannot take (as Triton's backend does)."""
        config = self.ctx.config
        for spec in (config.input if what == "input" else config.output):
            tensor = tensors[spec.name]
            kind = _TF_TYPES.get(tensor.dtype.base_dtype.name)
            if kind != spec.data_type:
                raise ModelConfigError(f"unable to load model '{self.ctx.name}', configuration expects datatype "
                                       f"{mc.DataType.Name(spec.data_type)} for {what} '{spec.name}', model "
                                       f"provides {tensor.dtype.base_dtype.name}")
            if tensor.shape.rank is None:
                continue
            shape = [-1 if d is None else int(d) for d in tensor.shape.as_list()]
            dims = list(spec.reshape.shape) if spec.HasField("reshape") else list(spec.dims)
            full = ([-1] if self.batched else []) + dims
            if len(full) != len(shape) or any(g >= 0 and c >= 0 and g != c for g, c in zip(shape, full, strict=True)):
                raise ModelConfigError(f"unable to load model '{self.ctx.name}', {what} '{spec.name}': the model "
                                       f"expects shape {shape} but the configuration specifies {full} "
                                       f"(max_batch_size {config.max_batch_size})")
            if what == "input":  # sizes the graph fixes where the config leaves them open: checked per call
                fixed = tuple((axis, g) for axis, (g, c) in enumerate(zip(shape, full, strict=True)) if g >= 0 > c)
                if fixed:
                    self.fixed[spec.name] = (shape, fixed)

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        device = ""
        key = "CPU"
        if spec.kind == "KIND_GPU":
            gpus = self.tf.config.list_physical_devices("GPU")
            if spec.device_id >= len(gpus):
                raise UnavailableError(f"instance {spec.name} of model '{self.ctx.name}' has kind KIND_GPU on GPU "
                                       f"{spec.device_id}, but TensorFlow sees {len(gpus)} GPU(s)")
            device = key = f"/device:GPU:{spec.device_id}"
        pool = self._sessions.setdefault(key, [])
        for entry in pool:
            if entry[2] < self.share:
                entry[2] += 1
                return TensorFlowInstance(spec, self, entry[1])
        session, call = self._session(device)
        pool.append([session, call, 1])
        return TensorFlowInstance(spec, self, call)

    def finalize(self) -> None:
        for pool in self._sessions.values():
            for session, _, _ in pool:
                session.close()
        self._sessions.clear()


class TensorFlowInstance(ModelInstanceState):
    def __init__(self, spec: InstanceSpec, model: TensorFlowModel, call: Any) -> None:
        super().__init__(spec)
        self.model = model
        self.call = call

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        model = self.model
        feeds = batch_inputs(requests)
        arrays = [feeds[name] for name in model.inputs]
        for name, (shape, fixed) in model.fixed.items():  # what Session.run checked in Python, the callable not
            array = feeds[name]
            if any(array.shape[axis] != size for axis, size in fixed):
                raise InvalidArgumentError(f"model '{model.ctx.name}' input '{name}': shape {list(array.shape)} "
                                           f"does not fit the graph's {shape}")
        self.input_end_ns = time.monotonic_ns()
        try:
            results = self.call(*arrays)
        except Exception as e:  # a shape the graph cannot take, or TensorFlow's own failure
            text = getattr(e, "message", None) or str(e)
            raise InvalidArgumentError(f"TensorFlow failed to run model '{model.ctx.name}': "
                                       f"{type(e).__name__}: {text.strip()[:600]}") from None
        self.infer_end_ns = time.monotonic_ns()
        outputs: list[tuple[str, DataType, np.ndarray]] = []
        for (name, datatype), result in zip(model.outputs, results, strict=True):
            array = np.asarray(result)
            if datatype is not DataType.BYTES and array.dtype != datatype.numpy_dtype:
                raise InternalError(f"model '{model.ctx.name}' output '{name}' is {array.dtype} but the "
                                    f"configuration says {datatype.config_name}")
            outputs.append((name, datatype, array))
        return batch_responses(requests, model.ctx.version, outputs, model.batched)

    def finalize(self) -> None:
        self.call = None
