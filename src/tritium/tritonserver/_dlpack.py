"""DLPack in both directions with nothing but ctypes: read the capsule another library exports, and export a
:class:`~tritium.tritonserver.Tensor` so that ``numpy.from_dlpack`` (or torch's, cupy's) views its memory
without a copy.

An exported tensor's C structure, its shape array and a reference to whatever keeps its memory alive sit in
``_EXPORTED`` under the structure's address until DLPack's deleter runs: the consumer calls it when its array
dies, or the capsule's destructor does when nobody consumed it.  No reference count is touched by hand, so a
consumer that never calls the deleter leaks one entry, never frees memory in use.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from tritium.core.errors import InvalidArgumentError, UnsupportedError

_DLTENSOR = b"dltensor"
_DLTENSOR_VERSIONED = b"dltensor_versioned"
#: ``DLPACK_FLAG_BITMASK_READ_ONLY``: the consumer must not write (only versioned capsules can say so).
READ_ONLY = 1


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", _Deleter),
                ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]


# Private prototypes of the capsule API: the global ``ctypes.pythonapi`` functions stay as other code set them,
# and a capsule being destroyed is passed as a plain pointer (a ``py_object`` would touch its reference count).
_api = ctypes.pythonapi
_capsule_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
    ("PyCapsule_New", _api))
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", _api))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api))
_object_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api))

#: Address of an exported ``DLManagedTensor(Versioned)`` -> (the structure, its shape array, the memory's owner).
_EXPORTED: dict[int, tuple[DLManagedTensor | DLManagedTensorVersioned, Any, Any]] = {}


@_Deleter
def _release(address: int | None) -> None:
    """DLPack's deleter: the consumer is done with the memory."""
    exported = _EXPORTED  # None while the interpreter tears the module down
    if exported is not None and address is not None:
        exported.pop(address, None)


_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@_CapsuleDestructor
def _capsule_destructor(capsule: int | None) -> None:
    """A capsule nobody consumed (still named ``dltensor``) releases its tensor; a consumed one was renamed."""
    if capsule is None:
        return
    for name in (_DLTENSOR, _DLTENSOR_VERSIONED):
        if _capsule_is_valid(capsule, name):
            _release(_capsule_pointer(capsule, name))


_DESTRUCTOR_ADDRESS = ctypes.cast(_capsule_destructor, ctypes.c_void_p)


def export(data_ptr: int, device: tuple[int, int], dtype: tuple[int, int], shape: list[int], owner: Any,
           versioned: bool = False, read_only: bool = False) -> Any:
    """A capsule viewing ``data_ptr`` (C-contiguous); ``owner`` is kept alive while it is used.

    ``versioned``: a DLPack 1.0 ``dltensor_versioned`` capsule (for consumers that ask for one), which carries
    ``read_only``; otherwise the legacy ``dltensor`` one, which cannot (and is refused for read-only memory).
    """
    managed: DLManagedTensor | DLManagedTensorVersioned
    if versioned:
        managed = DLManagedTensorVersioned()
        managed.version = DLPackVersion(1, 0)
        managed.flags = READ_ONLY if read_only else 0
        name = _DLTENSOR_VERSIONED
    else:
        if read_only:
            raise BufferError("cannot export read-only memory through a legacy DLPack capsule; the consumer must "
                              "ask for DLPack 1.0 (max_version)")
        managed = DLManagedTensor()
        name = _DLTENSOR
    ndim = len(shape)
    dims = (ctypes.c_int64 * ndim)(*shape)
    tensor = managed.dl_tensor
    tensor.data = data_ptr
    tensor.device = DLDevice(device[0], device[1])
    tensor.ndim = ndim
    tensor.dtype = DLDataType(dtype[0], dtype[1], 1)
    tensor.shape = dims
    tensor.byte_offset = 0  # strides stay NULL: compact, row-major
    managed.deleter = _release
    address = ctypes.addressof(managed)
    _EXPORTED[address] = (managed, dims, owner)
    return _capsule_new(address, name, _DESTRUCTOR_ADDRESS)


@dataclass(slots=True)
class Imported:
    """What a producer's capsule says about its memory (the capsule itself is released at once)."""

    data_ptr: int
    device_type: int
    device_id: int
    code: int
    bits: int
    lanes: int
    shape: list[int]
    contiguous: bool

    @property
    def byte_size(self) -> int:
        size = self.bits * self.lanes // 8
        for dim in self.shape:
            size *= dim
        return size


def read(obj: Any) -> Imported:
    """Describe ``obj``'s memory through its ``__dlpack__``; raises InvalidArgumentError when it has none."""
    if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
        raise InvalidArgumentError(f"Object does not support DLPack protocol: {type(obj).__name__} has no "
                                   "__dlpack__ and __dlpack_device__")
    try:
        device_type, _ = obj.__dlpack_device__()
        if int(device_type) != 1:  # kDLCPU: other devices need their own stream handling
            raise UnsupportedError(f"DLPack import from device type {int(device_type)} is not supported: tritium "
                                   "serves tensors from CPU memory")
        capsule = obj.__dlpack__()
        pointer = _object_capsule_pointer(capsule, _DLTENSOR)
    except (UnsupportedError, InvalidArgumentError):
        raise
    except Exception as e:
        raise InvalidArgumentError(f"Object does not support DLPack protocol: {e}") from None
    tensor = DLManagedTensor.from_address(pointer).dl_tensor
    ndim = tensor.ndim
    shape = [tensor.shape[i] for i in range(ndim)]
    contiguous = True
    if tensor.strides:
        expected = 1
        for i in reversed(range(ndim)):
            if shape[i] != 1 and tensor.strides[i] != expected:
                contiguous = False
                break
            expected *= shape[i]
    result = Imported((tensor.data or 0) + tensor.byte_offset, tensor.device.device_type, tensor.device.device_id,
                      tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes, shape, contiguous)
    del tensor, capsule  # unconsumed: its destructor returns it to the producer; ``obj`` keeps the memory
    return result


def exported_count() -> int:
    """Tensors exported and not yet released (tests check that consumers give them back)."""
    return len(_EXPORTED)
