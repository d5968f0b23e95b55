"""Protocol-neutral tensor types: data types and tensors.

A :class:`DataType` knows its three names (wire ``FP32``, config ``TYPE_FP32``,
numpy ``float32``) so that no other module needs a translation table.
BYTES tensors are numpy ``object`` arrays of ``bytes``; BF16 uses ``ml_dtypes``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from .errors import InvalidArgumentError


class DataType(enum.Enum):
    """A tensor element type, valued by its KServe v2 wire name."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"
    BF16 = "BF16"

    # Plain attributes of each member, set below: they are read for every tensor of every request, and
    # a property (or a dictionary keyed by the member, whose hash Enum computes in Python) costs more.
    #: The KServe v2 wire name (``FP32``).
    wire_name: str
    #: Name in ``model_config.proto``'s ``DataType`` enum (``TYPE_FP32``; BYTES is ``TYPE_STRING``).
    config_name: str
    numpy_dtype: np.dtype[Any]
    #: Bytes per element; 0 for BYTES, whose elements vary in size.
    itemsize: int

    # Members are singletons compared by identity: hash them the same way, in C.
    __hash__ = object.__hash__

    @classmethod
    def from_wire(cls, name: str) -> DataType:
        datatype = cls.lookup(name)
        if datatype is None:
            raise InvalidArgumentError(f"invalid datatype '{name}'")
        return datatype

    @classmethod
    def lookup(cls, name: Any) -> DataType | None:
        """The type of a wire name, or ``None``: a dictionary lookup, cheaper than ``DataType(name)``."""
        return _FROM_WIRE.get(name) if isinstance(name, str) else None

    @classmethod
    def from_config(cls, name: str) -> DataType:
        """From ``TYPE_FP32``-style names; raises ``KeyError`` when not a tensor type."""
        return _FROM_CONFIG[name]

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DataType:
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            if dtype.kind in ("S", "U"):
                return DataType.BYTES
            raise InvalidArgumentError(f"unsupported numpy dtype '{dtype}'") from None


_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype("<u2"),
    DataType.UINT32: np.dtype("<u4"),
    DataType.UINT64: np.dtype("<u8"),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
    DataType.BYTES: np.dtype(object),
    DataType.BF16: np.dtype(ml_dtypes.bfloat16),
}
for _type, _dtype in _NUMPY.items():
    object.__setattr__(_type, "wire_name", _type.value)
    object.__setattr__(_type, "config_name", "TYPE_STRING" if _type.value == "BYTES" else "TYPE_" + _type.value)
    object.__setattr__(_type, "numpy_dtype", _dtype)
    object.__setattr__(_type, "itemsize", 0 if _type.value == "BYTES" else _dtype.itemsize)
_FROM_NUMPY = {dtype: datatype for datatype, dtype in _NUMPY.items()}
_FROM_WIRE = {datatype.value: datatype for datatype in DataType}
_FROM_CONFIG = {datatype.config_name: datatype for datatype in DataType}


#: The most bytes numpy lets an array's shape describe (``intp``), elements or not.
MAX_ARRAY_BYTES = 2**63 - 1


def check_empty_shape(shape: Sequence[int], name: str) -> None:
    """Refuse a shape that holds no elements yet names dimensions no array can have (``[0, 2**62, 2**62]``,
    ``[0, 2**64 - 1]``): numpy checks the product of the non-zero dimensions even then.  Decoders call it
    only when the element count is 0; a shape with elements is bounded by the data that must fill it."""
    if math.prod(d for d in shape if d) * 8 > MAX_ARRAY_BYTES:  # 8: the widest item (an object reference)
        raise InvalidArgumentError(
            f"Unable to parse 'shape': input '{name}' has shape [{','.join(map(str, shape))}], larger than any "
            "tensor can be")


@dataclass(slots=True)
class Tensor:
    """A named tensor: numpy data plus its wire data type.

    The data type is kept explicitly because numpy cannot tell BYTES from other
    object arrays, and because validation compares it against the config.
    """

    name: str
    datatype: DataType
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @classmethod
    def from_numpy(cls, name: str, array: np.ndarray) -> Tensor:
        return cls(name, DataType.from_numpy(array.dtype), array)
