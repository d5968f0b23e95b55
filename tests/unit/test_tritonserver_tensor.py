"""The in-process API's tensors without a server: DLPack in and out (views, lifetimes, refusals), Triton's BYTES
serialization, device strings, and how request inputs become the core's arrays."""

from __future__ import annotations

import gc
import sys

import ml_dtypes
import numpy as np
import pytest

import tritium.tritonserver as tritonserver
from tritium.core.types import DataType as CoreDataType
from tritium.tritonserver import _dlpack
from tritium.tritonserver._tensor import input_array, output_tensor, parse_device_or_memory_type

Tensor = tritonserver.Tensor
MemoryType = tritonserver.MemoryType


def test_numpy_in_and_out_is_a_view_that_keeps_its_owner() -> None:
    owner = np.arange(12, dtype=np.int32).reshape(3, 4)
    tensor = Tensor.from_dlpack(owner)
    assert (tensor.data_type, list(tensor.shape), tensor.size) == (tritonserver.DataType.INT32, [3, 4], 48)
    assert tensor.memory_buffer.owner is owner and tensor.data_ptr == owner.ctypes.data
    del owner
    view = np.from_dlpack(tensor)
    assert sys.getrefcount(tensor) - 1 == 2  # the name and the view's DLPack context
    tensor.shape = [12]  # a later export sees the new shape; the first view keeps its own
    flat = np.from_dlpack(tensor)
    del tensor
    gc.collect()
    assert view.shape == (3, 4) and flat.shape == (12,) and flat[-1] == 11
    assert _dlpack.exported_count() == 2
    del view, flat
    assert _dlpack.exported_count() == 0


def test_an_unconsumed_capsule_releases_its_tensor() -> None:
    tensor = Tensor.from_dlpack(np.ones(4))
    capsule = tensor.__dlpack__()
    assert _dlpack.exported_count() == 1 and sys.getrefcount(tensor) - 1 == 2
    del capsule
    assert _dlpack.exported_count() == 0 and sys.getrefcount(tensor) - 1 == 1


def test_copy_and_device_requests() -> None:
    tensor = Tensor.from_dlpack(np.ones(4, np.float32))
    copied = np.from_dlpack(tensor, copy=True)
    assert copied.ctypes.data != tensor.data_ptr
    assert tensor.__dlpack_device__() == (tritonserver.DLDeviceType.kDLCPU, 0)
    assert tensor.to_device("cpu") is tensor and tensor.to_host() is tensor
    with pytest.raises(tritonserver.UnsupportedError, match="not supported"):
        tensor.to_device("gpu:0")
    with pytest.raises(tritonserver.UnsupportedError, match="stream"):
        tensor.__dlpack__(stream=7)


def test_refusals_name_what_is_wrong() -> None:
    with pytest.raises(tritonserver.InvalidArgumentError, match="contiguous"):
        Tensor.from_dlpack(np.ones((4, 4))[:, ::2])
    with pytest.raises(tritonserver.InvalidArgumentError, match="complex128"):
        Tensor.from_dlpack(np.ones(2, np.complex128))
    with pytest.raises(tritonserver.InvalidArgumentError, match="DLPack"):
        Tensor.from_dlpack(object())
    text = Tensor.from_string_array(["a"])
    with pytest.raises(tritonserver.InvalidArgumentError, match="BYTES"):
        np.from_dlpack(text)
    with pytest.raises(tritonserver.InvalidArgumentError, match="not BYTES"):
        Tensor.from_dlpack(np.ones(2)).to_bytes_array()
    with pytest.raises(tritonserver.InvalidArgumentError, match="BYTES Tensor"):
        Tensor.from_bytes_array(np.ones(2))
    with pytest.raises(tritonserver.InvalidArgumentError, match="not UTF-8"):
        Tensor.from_bytes_array([b"\xff"]).to_string_array()


def test_bytes_tensors_hold_tritons_serialization() -> None:
    tensor = Tensor.from_string_array([["hello", "wörld"], ["", "x"]])
    assert tensor.data_type == tritonserver.DataType.BYTES and list(tensor.shape) == [2, 2]
    raw = bytes(np.from_dlpack(Tensor(tritonserver.DataType.UINT8, [tensor.size], tensor.memory_buffer)))
    assert raw[:9] == b"\x05\x00\x00\x00hello"
    assert tensor.to_string_array().tolist() == [["hello", "wörld"], ["", "x"]]
    assert Tensor.from_bytes_array(np.array([b"a\x00b"], dtype=object)).to_bytes_array().tolist() == [b"a\x00b"]


@pytest.mark.parametrize("device, expected", [
    ("cpu", (MemoryType.CPU, 0)), ("CPU_PINNED", (MemoryType.CPU_PINNED, 0)), ("gpu:1", (MemoryType.GPU, 1)),
    (MemoryType.GPU, (MemoryType.GPU, 0)), ((MemoryType.CPU, 0), (MemoryType.CPU, 0)),
    ((tritonserver.DLDeviceType.kDLCUDA, 2), (MemoryType.GPU, 2)),
])
def test_device_strings(device: object, expected: tuple[MemoryType, int]) -> None:
    assert parse_device_or_memory_type(device) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("device", ["tpu", "gpu:x", "gpu:1:2", 3, (MemoryType.GPU, -1)])
def test_bad_device_strings(device: object) -> None:
    with pytest.raises(tritonserver.InvalidArgumentError):
        parse_device_or_memory_type(device)  # type: ignore[arg-type]


def test_request_inputs_become_core_arrays() -> None:
    numeric = np.ones((2, 3), np.float16)
    assert input_array(numeric, "x") == (CoreDataType.FP16, numeric)  # passed as it is
    kind, array = input_array([["a", "é"]], "x")
    assert kind is CoreDataType.BYTES and array.tolist() == [[b"a", "é".encode()]]
    kind, array = input_array(np.array([1, "b", b"c"], dtype=object), "x")
    assert array.tolist() == [b"1", b"b", b"c"]
    kind, array = input_array(Tensor.from_string_array(["z"]), "x")
    assert (kind, array.tolist()) == (CoreDataType.BYTES, [b"z"])
    bf16 = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    kind, array = input_array(Tensor.from_dlpack(bf16), "x")
    assert kind is CoreDataType.BF16 and array.dtype == bf16.dtype and array.tolist() == bf16.tolist()
    with pytest.raises(tritonserver.InvalidArgumentError, match="input 'x'"):
        input_array({"a": 1}, "x")


def test_outputs_are_views_of_the_core_arrays() -> None:
    array = np.arange(6, dtype=np.int64).reshape(2, 3)
    tensor = output_tensor(CoreDataType.INT64, array)
    assert tensor.data_ptr == array.ctypes.data and tensor.memory_buffer.owner is array
    strided = output_tensor(CoreDataType.INT64, array.T)
    np.testing.assert_array_equal(np.from_dlpack(strided), array.T)


def test_torch_round_trip() -> None:
    torch = pytest.importorskip("torch")
    source = torch.arange(8, dtype=torch.bfloat16)
    tensor = Tensor.from_dlpack(source)
    assert tensor.data_type == tritonserver.DataType.BF16 and tensor.data_ptr == source.data_ptr()
    back = torch.from_dlpack(tensor)
    assert back.data_ptr() == source.data_ptr() and back.dtype == torch.bfloat16
    del back
    assert _dlpack.exported_count() == 0


#: The names Triton's ``tritonserver/__init__.py`` exports (triton-inference-server/core, python/tritonserver).
TRITON_NAMES = {
    "DLDeviceType", "MemoryBuffer", "MemoryType", "Model", "ModelBatchFlag", "ModelTxnPropertyFlag",
    "InferenceRequest", "InferenceResponse", "InstanceGroupKind", "LogFormat", "Metric", "MetricFamily",
    "MetricFormat", "MetricKind", "ModelControlMode", "Options", "RateLimiterResource", "RateLimitMode", "Server",
    "DataType", "Tensor", "AlreadyExistsError", "InternalError", "InvalidArgumentError", "NotFoundError",
    "TritonError", "UnavailableError", "UnknownError", "UnsupportedError",
}


def test_every_name_of_tritons_package_is_there() -> None:
    assert TRITON_NAMES <= set(tritonserver.__all__)
    assert all(hasattr(tritonserver, name) for name in tritonserver.__all__)
    for name in ("InvalidArgumentError", "InternalError", "NotFoundError", "UnavailableError", "UnsupportedError",
                 "AlreadyExistsError", "UnknownError"):
        assert issubclass(getattr(tritonserver, name), tritonserver.TritonError)
    assert tritonserver.DataType.BYTES == 13 and tritonserver.MemoryType.GPU == 2  # Triton's C numbers


def test_a_server_gives_the_tritium_logger_back(tmp_path: object) -> None:
    import logging

    logger = logging.getLogger("tritium")
    mine = logging.NullHandler()
    logger.addHandler(mine)
    try:
        server = tritonserver.Server(model_repository=str(tmp_path), log_error=True).start(wait_until_ready=True)
        assert not logger.propagate and mine not in logger.handlers
        server.stop()
        assert logger.propagate and mine in logger.handlers
    finally:
        logger.removeHandler(mine)


def test_custom_metrics_are_process_wide(tmp_path: object) -> None:
    family = tritonserver.MetricFamily(tritonserver.MetricKind.COUNTER, "inproc_test_total", "a test counter")
    metric = tritonserver.Metric(family, {"kind": "unit"})
    metric.increment(3)
    assert metric.value == 3.0
    with pytest.raises(tritonserver.InvalidArgumentError, match="decremented"):
        metric.increment(-1)
    server = tritonserver.Server(model_repository=str(tmp_path)).start(wait_until_ready=True)
    try:
        assert 'inproc_test_total{kind="unit"} 3.0' in server.metrics()
    finally:
        server.stop()


def test_read_only_memory_stays_read_only() -> None:
    tensor = Tensor.from_dlpack(np.frombuffer(b"\x00" * 16, dtype=np.float32))
    view = np.from_dlpack(tensor)  # numpy asks for DLPack 1.0: the capsule says read-only
    assert not view.flags.writeable and view.tolist() == [0.0] * 4
    with pytest.raises(BufferError, match="read-only"):
        tensor.__dlpack__()  # a legacy capsule could not say so
    del view
    assert _dlpack.exported_count() == 0
    assert np.from_dlpack(Tensor.from_dlpack(np.ones(2))).flags.writeable
