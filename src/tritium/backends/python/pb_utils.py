"""``triton_python_backend_utils`` as Triton's model code sees it.

The stub process puts this module into ``sys.modules`` under that name before it imports the user's
``model.py``; it is never importable in the server process by that name.  Everything that talks to the
server (BLS, response senders, the logger) goes through ``_runtime``, which the stub sets.
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import json
import struct
from collections.abc import Awaitable, Iterator
from typing import Any

import numpy as np

from . import protocol
from .messages import Kind, Op

#: Set by the stub: sends BLS requests, responses of decoupled models and log lines to the server.
_runtime: Any = None

TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2
TRITONSERVER_MEMORY_CPU = 0
TRITONSERVER_MEMORY_CPU_PINNED = 1
TRITONSERVER_MEMORY_GPU = 2

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}
# TRITONSERVER_DataType numbers
_TRITON_TYPES = [None, np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
                 np.float16, np.float32, np.float64, np.object_]
_WIRE_NUMBERS = {name: i for i, name in enumerate(
    ["INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
     "FP64", "BYTES", "BF16"])}


def _text(value: Any) -> Any:
    """A name as Triton's bindings take it: ``bytes`` (what a BYTES tensor's elements are) is UTF-8 text, as a
    ``std::string`` argument accepts both; anything else is left to the caller."""
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else value


class TritonError:
    """An error a model returns in a response (or gets back from BLS)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    def __init__(self, message: str, code: int = 1) -> None:
        self._message = str(_text(message))
        self._code = code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code

    def __repr__(self) -> str:
        return f"TritonError({self._message!r}, code={self._code})"


#: TritonError code <-> tritium Status name (what crosses the process boundary)
CODE_NAMES = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
              "CANCELLED"]


class TritonModelException(Exception):
    """Raised by model code (or by the backend utilities) to fail the current call."""


class Tensor:
    """A named tensor backed by a numpy array."""

    def __init__(self, name: str, data: Any, dtype: Any = None) -> None:
        if not isinstance(data, np.ndarray):
            data = np.asarray(data)
        if data.dtype.kind in ("U", "S"):
            data = data.astype(np.object_)
        self._name = _text(name)
        self._array = data

    @classmethod
    def _wrap(cls, name: str, array: np.ndarray) -> Tensor:
        """An input of an execute, made by the stub: ``name`` is text and ``array`` of a wire type already, so
        none of the constructor's conversions apply (this runs for every input of every request)."""
        tensor = cls.__new__(cls)
        tensor._name = name
        tensor._array = array
        return tensor

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def triton_dtype(self) -> int:
        return _WIRE_NUMBERS[protocol.wire_type(self._array)]

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self) -> Any:
        """A DLPack capsule of this tensor's memory (no copy); BF16 too, which numpy cannot export."""
        return _to_dlpack(self._array)

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return _to_dlpack(self._array)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)

    @staticmethod
    def from_dlpack(name: str, capsule: Any) -> Tensor:
        """A tensor of a DLPack capsule, or of an object with ``__dlpack__`` (a torch tensor), on the CPU; BF16
        becomes ``ml_dtypes.bfloat16``."""
        if hasattr(capsule, "__dlpack__"):
            capsule = capsule.__dlpack__()
        return Tensor(name, _from_dlpack(capsule))

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._array!r})"


# -- DLPack for BF16, which numpy neither exports nor imports: its capsule is that of the same memory as
# uint16, with the element type in the DLTensor rewritten (kDLUInt <-> kDLBfloat, 16 bits).  The capsule's
# deleter frees the memory whatever the element type says, so the rewrite changes nothing else.

_KDL_UINT = 1
_KDL_BFLOAT = 4


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensorHead(ctypes.Structure):
    """The start of DLPack's ``DLTensor``, up to its element type."""

    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("dtype", _DLDataType)]


#: Where the DLTensor lies in what a capsule holds: at the start of a ``DLManagedTensor``; after version,
#: manager context, deleter and flags in a ``DLManagedTensorVersioned``.
_DLTENSOR_OFFSETS = {b"dltensor": 0, b"dltensor_versioned": 32}

_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype, _capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]


def _element_type(capsule: Any) -> _DLDataType | None:
    """The element type of an unconsumed DLPack capsule, writable; None for anything else."""
    try:
        name = _capsule_name(capsule)
        offset = _DLTENSOR_OFFSETS.get(name)
        if offset is None:
            return None
        address = _capsule_pointer(capsule, name)
    except (TypeError, ValueError, ctypes.ArgumentError):
        return None
    return _DLTensorHead.from_address(address + offset).dtype if address else None


def _to_dlpack(array: np.ndarray) -> Any:
    if array.dtype != protocol.NUMPY_TYPES.get("BF16"):
        return array.__dlpack__()
    capsule = array.view(np.uint16).__dlpack__()
    dtype = _element_type(capsule)
    if dtype is None:  # pragma: no cover - numpy gives legacy capsules when no version is asked
        raise BufferError("could not export a BF16 tensor through DLPack")
    dtype.code = _KDL_BFLOAT
    return capsule


def _from_dlpack(capsule: Any) -> np.ndarray:
    dtype = _element_type(capsule)
    if dtype is None or (dtype.code, dtype.bits, dtype.lanes) != (_KDL_BFLOAT, 16, 1):
        return np.from_dlpack(_Capsule(capsule))
    bfloat16 = protocol.NUMPY_TYPES.get("BF16")
    if bfloat16 is None:  # pragma: no cover - only without ml_dtypes
        raise BufferError("a BF16 DLPack tensor needs the ml_dtypes package")
    dtype.code = _KDL_UINT
    try:
        array = np.from_dlpack(_Capsule(capsule))
    except BaseException:
        dtype.code = _KDL_BFLOAT
        raise
    return array.view(bfloat16)


class _Capsule:
    """Lets ``np.from_dlpack`` take a bare DLPack capsule (what ``torch.utils.dlpack.to_dlpack`` returns)."""

    def __init__(self, capsule: Any) -> None:
        self._capsule = capsule

    def __dlpack__(self, stream: Any = None, **_: Any) -> Any:
        return self._capsule

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)


class PreferredMemory:
    def __init__(self, preferred_memory_type: int = TRITONSERVER_MEMORY_CPU, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type = preferred_memory_type
        self.preferred_device_id = preferred_device_id


class InferenceTrace:
    def __init__(self, context: str | None = None) -> None:
        self._context = context

    def get_context(self) -> str | None:
        return self._context


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None,
                 parameters: Any = None) -> None:
        self._outputs = list(output_tensors or [])
        self._error = error
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)


class InferenceResponseSender:
    """Sends the responses of one request of a decoupled model, ending with the FINAL flag."""

    def __init__(self, key: int) -> None:
        self._key = key
        self._closed = False

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self._closed:
            raise TritonModelException("Unable to send response. Response sender has been closed.")
        if response is None and not flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            raise TritonModelException("Inference Response object must be provided when the response flags is not "
                                       "TRITONSERVER_RESPONSE_COMPLETE_FINAL.")
        final = bool(flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        if final:
            self._closed = True
        _runtime.send_response(self._key, response, final)

    def is_cancelled(self) -> bool:
        """True once the client has gone away (the server tells the stub; no round trip here)."""
        return self._key in _runtime.cancelled


class ResponseIterator:
    """The responses of a decoupled BLS call, as they arrive."""

    def __init__(self, ident: int, responses: Any) -> None:
        self._ident = ident
        self._responses = responses

    def __iter__(self) -> Iterator[InferenceResponse]:
        return self

    def __next__(self) -> InferenceResponse:
        response = self._responses.get()
        if response is None:
            raise StopIteration
        return response

    def __aiter__(self) -> ResponseIterator:
        return self

    async def __anext__(self) -> InferenceResponse:
        response = await asyncio.get_running_loop().run_in_executor(None, self._responses.get)
        if response is None:
            raise StopAsyncIteration
        return response

    def cancel(self) -> None:
        """Cancel the call: the called model sees ``is_cancelled()``; iteration ends soon after."""
        _runtime.send((Kind.BLS_CANCEL, self._ident))


class InferenceRequest:
    """A request given to ``execute``, or one the model builds to call another model (BLS)."""

    def __init__(self, model_name: str = "", inputs: list[Tensor] | None = None,
                 requested_output_names: list[str] | None = None, request_id: str = "", correlation_id: Any = 0,
                 model_version: int = -1, flags: int = 0, timeout: int = 0,
                 preferred_memory: PreferredMemory | None = None, trace: InferenceTrace | None = None,
                 parameters: Any = None) -> None:
        self.model_name = _text(model_name)
        self._inputs = list(inputs or [])
        self._requested = [_text(name) for name in requested_output_names or []]
        self._request_id = _text(request_id)
        self._correlation_id = correlation_id
        self.model_version = model_version
        self._flags = flags
        self._timeout = timeout
        self._trace = trace or InferenceTrace()
        if isinstance(parameters, str):
            parameters = json.loads(parameters)
        self._parameters = dict(parameters or {})
        self._key = -1
        self._sender: InferenceResponseSender | None = None
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    @classmethod
    def _incoming(cls, key: int, inputs: list[Tensor], requested: list[str], request_id: str, correlation_id: Any,
                  flags: int, parameters: dict[str, Any] | None) -> InferenceRequest:
        """A request of an execute, as the constructor would make it from the server's message, whose values
        need none of its conversions (this runs for every request the model is given)."""
        request = cls.__new__(cls)
        request.model_name = ""
        request._inputs = inputs
        request._requested = requested
        request._request_id = request_id
        request._correlation_id = correlation_id
        request.model_version = -1
        request._flags = flags
        request._timeout = 0
        request._trace = InferenceTrace()
        request._parameters = dict(parameters) if parameters else {}
        request._key = key
        request._sender = None
        request._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        return request

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def requested_output_names(self) -> set[str]:
        """A set, as Triton's binding gives it (models may use set operations on it)."""
        return set(self._requested)

    def request_id(self) -> str:
        return self._request_id

    def correlation_id(self) -> Any:
        return self._correlation_id

    def flags(self) -> int:
        return self._flags

    def set_flags(self, flags: int) -> None:
        self._flags = flags

    def timeout(self) -> int:
        return self._timeout

    def trace(self) -> InferenceTrace:
        return self._trace

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def is_cancelled(self) -> bool:
        """True once the client has gone away (the server tells the stub; no round trip here)."""
        return self._key in _runtime.cancelled

    def set_release_flags(self, flags: int) -> None:
        """``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``: run this request again in a later execution
        (``sequence_batching { iterative_sequence: true }``; execute answers ``None`` for it); ``..._ALL``:
        release it (the default)."""
        self._release_flags = int(flags)

    def _rescheduled(self) -> bool:
        return self._release_flags == TRITONSERVER_REQUEST_RELEASE_RESCHEDULE

    def get_response_sender(self) -> InferenceResponseSender:
        if not _runtime.decoupled:
            raise TritonModelException("Unable to get response sender: the model is not using the decoupled "
                                       "transaction policy.")
        if self._sender is None:
            self._sender = InferenceResponseSender(self._key)
        return self._sender

    def exec(self, decoupled: bool = False) -> Any:
        """Run this request on another model of the server; an ``InferenceResponse`` (errors inside it),
        or for ``decoupled=True`` an iterator of them."""
        if decoupled:
            return ResponseIterator(*_runtime.bls(self, True))
        return _runtime.bls(self, False)[1].result()

    def async_exec(self, decoupled: bool = False) -> Awaitable[Any]:
        """Send the request now, as Triton does, and return an awaitable of what :meth:`exec` returns: a
        model can start several calls and then await them.  Outside a running event loop (which Triton
        refuses) the request is sent when awaited."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return self._exec_when_awaited(decoupled)
        ident, waiter = _runtime.bls(self, decoupled)
        if decoupled:
            ready = loop.create_future()
            ready.set_result(ResponseIterator(ident, waiter))
            return ready
        return asyncio.wrap_future(waiter, loop=loop)

    async def _exec_when_awaited(self, decoupled: bool) -> Any:
        return await self.async_exec(decoupled)  # awaited, so a loop runs now


class Logger:
    class LogLevel:
        INFO = 0
        WARNING = 1
        ERROR = 2
        VERBOSE = 3

    @staticmethod
    def log(message: str, level: int = 0) -> None:
        _runtime.log(level, str(message))

    @staticmethod
    def log_info(message: str) -> None:
        _runtime.log(0, str(message))

    @staticmethod
    def log_warn(message: str) -> None:
        _runtime.log(1, str(message))

    @staticmethod
    def log_error(message: str) -> None:
        _runtime.log(2, str(message))

    @staticmethod
    def log_verbose(message: str) -> None:
        _runtime.log(3, str(message))


# -- custom metrics --------------------------------------------------------------------------------


class MetricKind(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


_KIND_NAMES = {MetricKind.COUNTER: "counter", MetricKind.GAUGE: "gauge", MetricKind.HISTOGRAM: "histogram"}
_TRITON_KINDS = {MetricKind.COUNTER: "TRITONSERVER_METRIC_KIND_COUNTER",
                 MetricKind.GAUGE: "TRITONSERVER_METRIC_KIND_GAUGE",
                 MetricKind.HISTOGRAM: "TRITONSERVER_METRIC_KIND_HISTOGRAM"}


def _server_error(what: str, error: BaseException) -> TritonModelException:
    """Triton's wording for a failed call into the server from model code."""
    return TritonModelException(f"{what}: Failed to process the request for model '{_runtime.instance_name}', "
                                f"message: {error}")


class MetricFamily:
    """A metric family on the server's metrics endpoint (``# HELP name description``, ``# TYPE name kind``).

    Deleting the object deletes the family and its metrics (as in Triton); so does unloading the model.
    """

    COUNTER = MetricKind.COUNTER
    GAUGE = MetricKind.GAUGE
    HISTOGRAM = MetricKind.HISTOGRAM

    def __init__(self, name: str, description: str, kind: MetricKind) -> None:
        if not isinstance(kind, MetricKind):
            raise TypeError(f"MetricFamily kind must be one of MetricFamily.COUNTER, GAUGE or HISTOGRAM, got {kind!r}")
        self._name = ""
        try:
            name, description = _text(name), _text(description)
            _runtime.call(Op.METRIC_FAMILY, str(name), str(description), _KIND_NAMES[kind])
        except _CallError as e:
            raise _server_error("Error when creating MetricFamily", e) from None
        self._name = str(name)
        self._kind = kind

    def Metric(self, labels: dict[str, str] | None = None, buckets: list[float] | None = None) -> Metric:
        return Metric(self, labels, buckets)

    def __del__(self) -> None:
        if self._name and _runtime is not None:
            try:
                _runtime.send((Kind.METRIC_FAMILY_DELETE, self._name))
            except Exception:  # noqa: BLE001, S110 - interpreter shutdown: the server releases the family with the process
                pass


class Metric:
    """One label set of a family.  Updates are sent without waiting (cheap); ``value()`` asks the server."""

    def __init__(self, family: MetricFamily, labels: dict[str, str] | None = None,
                 buckets: list[float] | None = None) -> None:
        if family._kind == MetricKind.HISTOGRAM and buckets is None:
            raise TritonModelException("Failed to create metric. Missing required buckets.")
        if family._kind != MetricKind.HISTOGRAM and buckets is not None:
            raise TritonModelException("Failed to create metric. Unexpected buckets found.")
        labels = {str(k): str(v) for k, v in (labels or {}).items()}
        try:
            _runtime.call(Op.METRIC, family._name, labels, [float(b) for b in buckets] if buckets is not None else None)
        except _CallError as e:
            raise _server_error("Error when creating Metric", e) from None
        self._family = family
        self._kind = family._kind
        self._key = tuple(sorted(labels.items()))

    def _update(self, op: str, value: float, allowed: MetricKind) -> None:
        kind = self._kind
        if kind != allowed and not (op == "increment" and kind == MetricKind.GAUGE):
            raise _server_error(f"Failed to {op} metric value",
                                Exception(f"{_TRITON_KINDS[kind]} does not support {op.capitalize()}"))
        if op == "increment" and kind == MetricKind.COUNTER and value < 0:
            raise _server_error("Failed to increment metric value", Exception(
                "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by non-negative values."))
        _runtime.send((Kind.METRIC_UPDATE, self._family._name, self._key, op, float(value)))

    def increment(self, value: float) -> None:
        self._update("increment", value, MetricKind.COUNTER)

    def set(self, value: float) -> None:
        self._update("set", value, MetricKind.GAUGE)

    def observe(self, value: float) -> None:
        self._update("observe", value, MetricKind.HISTOGRAM)

    def value(self) -> float:
        if self._kind == MetricKind.HISTOGRAM:
            raise _server_error("Failed to get metric value",
                                Exception("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value"))
        try:
            return float(_runtime.call(Op.METRIC_VALUE, self._family._name, self._key))
        except _CallError as e:
            raise _server_error("Failed to get metric value", e) from None


# -- model management --------------------------------------------------------------------------------


class _CallError(Exception):
    """An error the server answered a call with."""


def load_model(model_name: str, config: str = "", files: dict[str, bytes] | None = None) -> None:
    """Load or reload ``model_name`` (the server must run with ``--model-control-mode=explicit``)."""
    parameters: dict[str, Any] = {}
    if config:
        parameters["config"] = config
    for key, content in (files or {}).items():
        parameters[key] = bytes(content)
    try:
        _runtime.call(Op.LOAD_MODEL, str(_text(model_name)), parameters)
    except _CallError as e:
        raise _server_error("Failed to load model", e) from None


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    try:
        _runtime.call(Op.UNLOAD_MODEL, str(_text(model_name)), bool(unload_dependents))
    except _CallError as e:
        raise _server_error("Failed to unload model", e) from None


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    model_name, model_version = _text(model_name), _text(model_version)
    try:
        version = int(model_version) if str(model_version) else -1
    except ValueError:
        raise TritonModelException(f"model_version must be a version number, got '{model_version}'") from None
    try:
        return bool(_runtime.call(Op.IS_MODEL_READY, str(model_name), version))
    except _CallError as e:
        raise _server_error("Failed to check model readiness", e) from None


# -- helpers ---------------------------------------------------------------------------------------


def serialize_byte_tensor(input_tensor: np.ndarray) -> Any:
    if input_tensor.size == 0:
        return ()
    if input_tensor.dtype == np.object_ or input_tensor.dtype.type == np.bytes_:
        return protocol.serialize_bytes(np.ascontiguousarray(input_tensor))
    return None


def deserialize_bytes_tensor(encoded_tensor: Any) -> np.ndarray:
    strs = []
    offset = 0
    buffer = memoryview(encoded_tensor).cast("B")
    while offset < len(buffer):
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        strs.append(bytes(buffer[offset : offset + length]))
        offset += length
    return np.array(strs, dtype=np.object_)


def get_input_tensor_by_name(inference_request: InferenceRequest, name: str) -> Tensor | None:
    for tensor in inference_request.inputs():
        if tensor.name() == name:
            return tensor
    return None


def get_output_tensor_by_name(inference_response: InferenceResponse, name: str) -> Tensor | None:
    for tensor in inference_response.output_tensors():
        if tensor.name() == name:
            return tensor
    return None


def get_input_config_by_name(model_config: dict, name: str) -> dict | None:
    for properties in model_config.get("input", []):
        if properties["name"] == name:
            return properties
    return None


def get_output_config_by_name(model_config: dict, name: str) -> dict | None:
    for properties in model_config.get("output", []):
        if properties["name"] == name:
            return properties
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


def triton_to_numpy_type(data_type: int) -> Any:
    return _TRITON_TYPES[data_type] if 0 < data_type < len(_TRITON_TYPES) else None


def numpy_to_triton_type(data_type: Any) -> int | None:
    for number, dtype in enumerate(_TRITON_TYPES):
        if dtype is not None and data_type == dtype:
            return number
    if data_type == np.bytes_:
        return 13
    return None


def triton_string_to_numpy(triton_type_string: str) -> Any:
    return TRITON_STRING_TO_NUMPY[triton_type_string]


class ModelConfig:
    """The config given to ``auto_complete_config``; only batching, I/O and the transaction policy may change."""

    def __init__(self, model_config: str | dict) -> None:
        self._model_config = json.loads(model_config) if isinstance(model_config, str) else model_config
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict:
        return self._model_config

    def _name(self) -> str:
        return str(self._model_config.get("name", ""))

    def set_max_batch_size(self, max_batch_size: int) -> None:
        if self._model_config["max_batch_size"] > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {self._model_config['max_batch_size']}, but in "
                f"auto-complete-config function for model '{self._name()}' specified max_batch_size {max_batch_size}")
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for found in ("sequence_batching", "ensemble_scheduling"):
            if found in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{found}', but auto-complete-config function for "
                    f"model '{self._name()}' tries to set scheduling_choice as 'dynamic_batching'")
        self._model_config.setdefault("dynamic_batching", {})

    def _add(self, kind: str, tensor: dict, valid: list[str]) -> None:
        for key in tensor:
            if key not in valid:
                allowed = ", ".join(f"'{v}'" for v in valid[:-1]) + f" and '{valid[-1]}'"
                raise ValueError(f"{kind} '{tensor.get('name')}' in auto-complete-config function for model "
                                 f"'{self._name()}' contains property other than {allowed}.")
        for key in ("name", "data_type", "dims"):
            if key not in tensor:
                what = f"{kind} '{tensor['name']}'" if "name" in tensor else kind
                raise ValueError(f"{what} in auto-complete-config function for model '{self._name()}' is missing "
                                 f"'{key}' property.")
        for current in self._model_config[kind]:
            if current["name"] != tensor["name"]:
                continue
            if current.get("data_type", "TYPE_INVALID") not in ("TYPE_INVALID", tensor["data_type"]):
                raise ValueError(f"unable to load model '{self._name()}', configuration expects datatype "
                                 f"{current['data_type']} for {kind} '{tensor['name']}', model provides "
                                 f"{tensor['data_type']}")
            if current.get("dims") and list(current["dims"]) != list(tensor["dims"]):
                raise ValueError(f"model '{self._name()}', tensor '{tensor['name']}': the model expects dims "
                                 f"{tensor['dims']} but the model configuration specifies dims {current['dims']}")
            if "optional" in current and "optional" in tensor and current["optional"] != tensor["optional"]:
                raise ValueError(f"model '{self._name()}', tensor '{tensor['name']}': the model expects optional "
                                 f"{tensor['optional']} but the model configuration specifies optional "
                                 f"{current['optional']}")
            current.update(tensor)
            return
        self._model_config[kind].append(dict(tensor))

    def add_input(self, input: dict) -> None:  # noqa: A002 - Triton's name
        self._add("input", input, ["name", "data_type", "dims", "optional"])

    def add_output(self, output: dict) -> None:
        self._add("output", output, ["name", "data_type", "dims"])

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(f"model transaction property in auto-complete-config function for model "
                                 f"'{self._name()}' contains property other than 'decoupled'.")
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in transaction_policy_dict:
            if "decoupled" in policy and policy["decoupled"] != transaction_policy_dict["decoupled"]:
                raise ValueError(f"trying to change decoupled property in auto-complete-config for model "
                                 f"'{self._name()}', which is already set to '{policy['decoupled']}'.")
            policy["decoupled"] = transaction_policy_dict["decoupled"]
