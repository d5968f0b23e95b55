"""Tensors of the in-process API: :class:`MemoryBuffer` (a pointer and whatever owns it) and :class:`Tensor`
(type, shape, buffer), with DLPack in and out and Triton's serialized BYTES.

A tensor never copies on the way in from a contiguous numpy array or DLPack producer, nor on the way out to
``numpy.from_dlpack``: the buffer keeps the producer's object alive and DLPack consumers keep the tensor alive.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import ml_dtypes
import numpy

from tritium.core.bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError, UnsupportedError
from tritium.core.types import DataType as CoreDataType

from . import _dlpack
from ._enums import DataType, DLDeviceType, MemoryType

#: ``str`` (``"cpu"``, ``"gpu:0"``), a MemoryType, or (MemoryType | DLDeviceType, device id).
DeviceOrMemoryType = tuple[MemoryType, int] | MemoryType | tuple[DLDeviceType, int] | str

_STRING_TO_MEMORY_TYPE = {"CPU": MemoryType.CPU, "CPU_PINNED": MemoryType.CPU_PINNED, "GPU": MemoryType.GPU}
_DLPACK_TO_MEMORY_TYPE = {DLDeviceType.kDLCPU: MemoryType.CPU, DLDeviceType.kDLCUDA: MemoryType.GPU,
                          DLDeviceType.kDLCUDAHost: MemoryType.CPU_PINNED}
_MEMORY_TYPE_TO_DLPACK = {MemoryType.CPU: DLDeviceType.kDLCPU, MemoryType.CPU_PINNED: DLDeviceType.kDLCPU,
                          MemoryType.GPU: DLDeviceType.kDLCUDA}

# DLPack type codes: kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLBool 6.
_TO_DLPACK: dict[DataType, tuple[int, int]] = {
    DataType.BOOL: (6, 8), DataType.INT8: (0, 8), DataType.INT16: (0, 16), DataType.INT32: (0, 32),
    DataType.INT64: (0, 64), DataType.UINT8: (1, 8), DataType.UINT16: (1, 16), DataType.UINT32: (1, 32),
    DataType.UINT64: (1, 64), DataType.FP16: (2, 16), DataType.FP32: (2, 32), DataType.FP64: (2, 64),
    DataType.BF16: (4, 16),
}
_FROM_DLPACK = {code_bits: data_type for data_type, code_bits in _TO_DLPACK.items()}

#: numpy dtype -> DataType for arrays taken as they are (BYTES arrays are serialized instead).
_FROM_NUMPY: dict[numpy.dtype[Any], DataType] = {
    numpy.dtype(numpy.bool_): DataType.BOOL, numpy.dtype(numpy.int8): DataType.INT8,
    numpy.dtype(numpy.int16): DataType.INT16, numpy.dtype(numpy.int32): DataType.INT32,
    numpy.dtype(numpy.int64): DataType.INT64, numpy.dtype(numpy.uint8): DataType.UINT8,
    numpy.dtype(numpy.uint16): DataType.UINT16, numpy.dtype(numpy.uint32): DataType.UINT32,
    numpy.dtype(numpy.uint64): DataType.UINT64, numpy.dtype(numpy.float16): DataType.FP16,
    numpy.dtype(numpy.float32): DataType.FP32, numpy.dtype(numpy.float64): DataType.FP64,
    numpy.dtype(ml_dtypes.bfloat16): DataType.BF16,
}
_TO_NUMPY: dict[DataType, numpy.dtype[Any]] = {data_type: dtype for dtype, data_type in _FROM_NUMPY.items()}

#: The core's types by the API's, and back (same names).
TO_CORE: dict[DataType, CoreDataType] = {DataType[t.name]: t for t in CoreDataType}
FROM_CORE: dict[CoreDataType, DataType] = {core: api for api, core in TO_CORE.items()}


def parse_device_or_memory_type(device: DeviceOrMemoryType) -> tuple[MemoryType, int]:
    """``"cpu"``, ``"gpu:1"``, ``MemoryType.CPU``, ``(MemoryType.GPU, 1)``, ``(DLDeviceType.kDLCPU, 0)``."""
    if isinstance(device, tuple) and len(device) == 2:
        kind, device_id = device
        if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
            raise InvalidArgumentError(f"Invalid memory type {device!r}: the device id must be a non-negative int")
        if isinstance(kind, MemoryType):
            return kind, device_id
        if isinstance(kind, DLDeviceType) and kind in _DLPACK_TO_MEMORY_TYPE:
            return _DLPACK_TO_MEMORY_TYPE[kind], device_id
        raise InvalidArgumentError(f"Invalid memory type {device!r}")
    if isinstance(device, MemoryType):
        return device, 0
    if isinstance(device, str):
        kind_text, _, id_text = device.partition(":")
        memory_type = _STRING_TO_MEMORY_TYPE.get(kind_text.upper())
        if memory_type is None:
            raise InvalidArgumentError(
                f"Unsupported Memory Type String. Can't convert '{device}' to a memory type: expected one of "
                "'cpu', 'cpu_pinned', 'gpu', optionally followed by ':<device id>'")
        if not id_text:
            return memory_type, 0
        if not id_text.isdigit():
            raise InvalidArgumentError(f"Invalid memory type string '{device}': the device id must be a number")
        return memory_type, int(id_text)
    raise InvalidArgumentError(f"Invalid memory type {device!r}: expected a string, MemoryType or (type, id) tuple")


@dataclass
class MemoryBuffer:
    """Memory of a tensor: a pointer, where it lives, its size, and ``owner``, which keeps it allocated."""

    data_ptr: int
    memory_type: MemoryType
    memory_type_id: int
    size: int
    owner: Any

    @staticmethod
    def from_dlpack(owner: Any) -> MemoryBuffer:
        """The memory of a DLPack producer (contiguous only), owned by it."""
        if isinstance(owner, numpy.ndarray):
            return _numpy_buffer(owner)
        return _imported_buffer(owner, _dlpack.read(owner))


def _numpy_buffer(array: numpy.ndarray) -> MemoryBuffer:
    if not array.flags.c_contiguous:
        raise InvalidArgumentError("Only contiguous memory is supported")
    return MemoryBuffer(array.ctypes.data, MemoryType.CPU, 0, array.nbytes, array)


def _imported_buffer(owner: Any, imported: _dlpack.Imported) -> MemoryBuffer:
    if not imported.contiguous:
        raise InvalidArgumentError("Only contiguous memory is supported")
    memory_type = _DLPACK_TO_MEMORY_TYPE.get(imported.device_type)  # type: ignore[call-overload]
    if memory_type is None:
        raise UnsupportedError(f"DLPack device type {imported.device_type} is not supported")
    return MemoryBuffer(imported.data_ptr, memory_type, imported.device_id, imported.byte_size, owner)


@dataclass
class Tensor:
    """A tensor in memory that something else owns: ``data_type``, ``shape`` and ``memory_buffer``.

    ``numpy.from_dlpack(tensor)`` (torch's, ...) views the memory; BYTES tensors hold Triton's serialization
    (each element a 4-byte length and its bytes) and are read with :meth:`to_bytes_array` /
    :meth:`to_string_array`.
    """

    data_type: DataType
    shape: Sequence[int]
    memory_buffer: MemoryBuffer

    @property
    def data_ptr(self) -> int:
        return self.memory_buffer.data_ptr

    @property
    def memory_type(self) -> MemoryType:
        return self.memory_buffer.memory_type

    @property
    def memory_type_id(self) -> int:
        return self.memory_buffer.memory_type_id

    @property
    def size(self) -> int:
        """Size of the data in bytes."""
        return self.memory_buffer.size

    # -- DLPack out -------------------------------------------------------------------------------

    def __dlpack__(self, *, stream: Any = None, max_version: Any = None, dl_device: Any = None,
                   copy: bool | None = None) -> Any:
        """A DLPack capsule viewing this tensor's memory (no copy); it keeps the tensor alive while used.

        ``stream`` must be ``None`` (or ``0``/``-1``) for CPU memory; ``copy=True`` exports a private copy.  A
        consumer that asks for DLPack 1.0 (``max_version``, as numpy 2 and torch do) gets a versioned capsule,
        marked read-only when the memory is (a read-only numpy array, e.g. over ``bytes``).
        """
        if stream not in (None, 0, -1):
            raise UnsupportedError(
                f"DLPack stream synchronization on memory type {self.memory_type.name} and stream {stream} not "
                "supported")
        code_bits = _TO_DLPACK.get(self.data_type)
        if code_bits is None:
            raise InvalidArgumentError(
                f"DLPack does not support data type {self.data_type.name}: read BYTES tensors with to_bytes_array()")
        device = self.__dlpack_device__()
        if dl_device is not None and tuple(int(d) for d in dl_device) != (int(device[0]), device[1]):
            raise BufferError(f"tensor is on device {device}, not {tuple(dl_device)}; copy it with to_device()")
        owner: Any = self
        data_ptr = self.data_ptr
        if copy:
            owner = numpy.from_dlpack(self).copy()
            data_ptr = owner.ctypes.data
        buffer_owner = self.memory_buffer.owner
        read_only = owner is self and isinstance(buffer_owner, numpy.ndarray) and not buffer_owner.flags.writeable
        versioned = max_version is not None and tuple(max_version)[:1] >= (1,)
        return _dlpack.export(data_ptr, (int(device[0]), device[1]), code_bits, [int(d) for d in self.shape], owner,
                              versioned, read_only)

    def __dlpack_device__(self) -> tuple[DLDeviceType, int]:
        return _MEMORY_TYPE_TO_DLPACK[self.memory_type], self.memory_type_id

    # -- DLPack and numpy in ----------------------------------------------------------------------

    @staticmethod
    def from_dlpack(obj: Any) -> Tensor:
        """A tensor viewing the memory of a DLPack producer (a numpy array, a torch tensor, ...), no copy."""
        if isinstance(obj, numpy.ndarray):
            data_type = _FROM_NUMPY.get(obj.dtype)
            if data_type is None:
                raise InvalidArgumentError(f"Unsupported DLPack data type: numpy dtype '{obj.dtype}'")
            return Tensor(data_type, list(obj.shape), _numpy_buffer(obj))
        imported = _dlpack.read(obj)
        if imported.lanes != 1:
            raise InvalidArgumentError(f"Unsupported DLPack data type: {imported.lanes} lanes")
        data_type = _FROM_DLPACK.get((imported.code, imported.bits))
        if data_type is None:
            raise InvalidArgumentError(
                f"Unsupported DLPack data type. Can't convert (code {imported.code}, {imported.bits} bits) to a "
                "Triton data type")
        return Tensor(data_type, imported.shape, _imported_buffer(obj, imported))

    @staticmethod
    def from_string_array(string_array: list[str] | numpy.ndarray) -> Tensor:
        """A BYTES tensor from strings (UTF-8 encoded) in new host memory."""
        return Tensor.from_bytes_array(string_array)

    @staticmethod
    def from_bytes_array(bytes_array: list[str] | list[bytes] | numpy.ndarray) -> Tensor:
        """A BYTES tensor from bytes or strings in new host memory."""
        result = Tensor._from_object(bytes_array)
        if result.data_type != DataType.BYTES:
            raise InvalidArgumentError(
                f"Unsupported conversion from {type(bytes_array).__name__} of {result.data_type.name} to a Triton "
                "BYTES Tensor")
        return result

    @staticmethod
    def _from_object(obj: Any) -> Tensor:
        """A tensor from a list, a numpy array or scalar, or any DLPack producer."""
        converter = Tensor._from_converters.get(type(obj))
        if converter is not None:
            return converter(obj)
        if isinstance(obj, numpy.ndarray):
            return _from_numpy(obj)
        if hasattr(obj, "__dlpack__"):
            return Tensor.from_dlpack(obj)
        raise InvalidArgumentError(
            f"Input type {type(obj).__name__} not supported. Must be one of list, numpy.ndarray, numpy.generic or "
            "support __dlpack__")

    # -- out to the host --------------------------------------------------------------------------

    def to_bytes_array(self) -> numpy.ndarray:
        """The elements of a BYTES tensor: a numpy object array of ``bytes`` shaped as the tensor."""
        if self.data_type != DataType.BYTES:
            raise InvalidArgumentError(f"Tensor has data type {self.data_type.name} not BYTES")
        count = 1
        for dim in self.shape:
            count *= int(dim)
        return deserialize_bytes_tensor(self._host_bytes(), count, "tensor").reshape(tuple(self.shape))

    def to_string_array(self) -> numpy.ndarray:
        """The elements of a BYTES tensor decoded as UTF-8: a numpy ``str_`` array shaped as the tensor."""
        items = self.to_bytes_array()
        try:
            decoded = [item.decode("utf-8") for item in items.reshape(-1)]
        except UnicodeDecodeError as e:
            raise InvalidArgumentError(f"BYTES tensor element is not UTF-8 text: {e}") from None
        return numpy.array(decoded, dtype=str).reshape(items.shape)

    def to_host(self) -> Tensor:
        return self.to_device("cpu")

    def to_device(self, device: DeviceOrMemoryType) -> Tensor:
        """This tensor in ``device``'s memory; only host memory here (tritium serves from the CPU)."""
        memory_type, memory_type_id = parse_device_or_memory_type(device)
        if memory_type == self.memory_type and memory_type_id == self.memory_type_id:
            return self
        if memory_type == MemoryType.CPU and self.memory_type == MemoryType.CPU_PINNED:
            return self
        raise UnsupportedError(
            f"Conversion from {(self.memory_type.name, self.memory_type_id)} to "
            f"{(memory_type.name, memory_type_id)} not supported.")

    def _host_bytes(self) -> bytes:
        if self.memory_type not in (MemoryType.CPU, MemoryType.CPU_PINNED):
            raise UnsupportedError(f"Conversion from {self.memory_type.name} to numpy array not supported.")
        return ctypes.string_at(self.data_ptr, self.size) if self.size else b""

    def _to_numpy(self) -> numpy.ndarray:
        """The tensor as a numpy array on the host: a view for every type but BYTES (object array)."""
        if self.data_type == DataType.BYTES:
            return self.to_bytes_array()
        if self.memory_type not in (MemoryType.CPU, MemoryType.CPU_PINNED):
            raise UnsupportedError(f"Conversion from {self.memory_type.name} to numpy array not supported.")
        owner = self.memory_buffer.owner
        shape = tuple(int(d) for d in self.shape)
        dtype = _TO_NUMPY[self.data_type]
        if (type(owner) is numpy.ndarray and owner.dtype == dtype and owner.shape == shape
                and owner.ctypes.data == self.data_ptr):
            return owner  # the array it was made from, as it was
        if self.data_type == DataType.BF16:  # numpy's DLPack import has no bfloat16: view as 16-bit integers
            raw = Tensor(DataType.UINT16, shape, self.memory_buffer)
            return numpy.from_dlpack(raw).view(dtype)
        return numpy.from_dlpack(self)

    _from_converters: ClassVar[dict[type, Any]]


def _from_numpy(array: numpy.ndarray | numpy.generic) -> Tensor:
    """Numeric arrays are viewed (contiguous) or copied once (strided); text and objects are serialized."""
    array = numpy.asarray(array)
    data_type = _FROM_NUMPY.get(array.dtype)
    if data_type is not None:
        array = numpy.ascontiguousarray(array)
        return Tensor(data_type, list(array.shape), _numpy_buffer(array))
    if array.dtype.kind in "OSU":
        serialized = numpy.frombuffer(serialize_bytes_tensor(array), dtype=numpy.uint8)
        return Tensor(DataType.BYTES, list(array.shape), _numpy_buffer(serialized))
    raise InvalidArgumentError(f"Unsupported Numpy data type. Can't convert '{array.dtype}' to a Triton data type")


def _from_list(obj: list[Any]) -> Tensor:
    try:
        array = numpy.array(obj)
    except Exception as e:
        raise InvalidArgumentError(f"Conversion from list to tensor not supported: {e}") from None
    return _from_numpy(array)


Tensor._from_converters = {numpy.ndarray: _from_numpy, list: _from_list}


def input_array(value: Any, name: str) -> tuple[CoreDataType, numpy.ndarray]:
    """An input value of a request as the core takes it: its type and a numpy array (object array of ``bytes``
    for BYTES).  Numeric numpy arrays pass as they are; text arrays become bytes without serializing."""
    if type(value) is numpy.ndarray:
        core_type = _CORE_BY_DTYPE.get(value.dtype)
        if core_type is not None:
            return core_type, value
        return CoreDataType.BYTES, _bytes_objects(value, name)
    if isinstance(value, Tensor):
        tensor = value
    elif type(value) is list or isinstance(value, numpy.generic):
        try:
            array = numpy.asarray(value)
        except Exception as e:
            raise InvalidArgumentError(f"input '{name}': conversion from list to tensor not supported: {e}") from None
        return input_array(array, name)
    elif isinstance(value, numpy.ndarray):
        return input_array(numpy.asarray(value), name)
    else:
        try:
            tensor = Tensor._from_object(value)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"input '{name}': {e}") from None
    return TO_CORE[tensor.data_type], tensor._to_numpy()


_CORE_BY_DTYPE = {dtype: TO_CORE[data_type] for dtype, data_type in _FROM_NUMPY.items()}


def _bytes_objects(array: numpy.ndarray, name: str) -> numpy.ndarray:
    kind = array.dtype.kind
    if kind == "S":
        return array.astype(object)
    if kind == "U":
        return numpy.char.encode(array, "utf-8").astype(object)
    if kind == "O":
        out = numpy.empty(array.shape, dtype=object)
        flat = out.reshape(-1)
        for i, item in enumerate(array.reshape(-1)):
            flat[i] = item if isinstance(item, bytes) else str(item).encode("utf-8")
        return out
    raise InvalidArgumentError(f"input '{name}': unsupported numpy data type '{array.dtype}'")


def output_tensor(data_type: CoreDataType, array: numpy.ndarray) -> Tensor:
    """A response output as the API hands it out: a view of the output array (BYTES: serialized)."""
    if data_type is CoreDataType.BYTES:
        serialized = numpy.frombuffer(serialize_bytes_tensor(array), dtype=numpy.uint8)
        return Tensor(DataType.BYTES, list(array.shape), _numpy_buffer(serialized))
    if not array.flags.c_contiguous:
        array = numpy.ascontiguousarray(array)
    return Tensor(FROM_CORE[data_type], list(array.shape),
                  MemoryBuffer(array.ctypes.data, MemoryType.CPU, 0, array.nbytes, array))
