"""Triton's BYTES tensor serialization: each element is a 4-byte little-endian length, then its bytes.

Shared by the HTTP binary extension, gRPC raw contents and the Python backend.
"""

from __future__ import annotations

import struct

import numpy as np

from .errors import InvalidArgumentError

_LEN = struct.Struct("<I")


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """Serialize a BYTES (object/str/bytes) array in row-major order."""
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in array.reshape(-1):
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray)):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def deserialize_bytes_tensor(buffer: bytes | memoryview, count: int, name: str = "") -> np.ndarray:
    """Parse exactly ``count`` elements filling ``buffer``; an object array of ``bytes``.

    A length running past the buffer, or bytes left over, is an error naming the input.
    """
    view = memoryview(buffer)
    size = len(view)
    if count * 4 > size:
        # Every element takes at least its 4-byte length: refuse before allocating ``count`` slots.
        raise InvalidArgumentError(
            f"unexpected total byte size {size} for BYTES input '{name}': {count} elements need at least "
            f"{count * 4} bytes"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    unpack = _LEN.unpack_from
    for i in range(count):
        if offset + 4 > size:
            raise InvalidArgumentError(
                f"unexpected end of BYTES data for input '{name}': expected {count} elements, found {i}"
            )
        (length,) = unpack(view, offset)
        offset += 4
        if offset + length > size:
            raise InvalidArgumentError(
                f"BYTES element {i} of input '{name}' declares {length} bytes but only {size - offset} remain"
            )
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != size:
        raise InvalidArgumentError(
            f"unexpected total byte size {size} for BYTES input '{name}': {count} elements use {offset} bytes"
        )
    return out
