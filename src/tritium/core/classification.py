"""Triton's classification extension: an output returned as its top-K classes instead of its values.

Each element becomes ``"<value>:<index>"`` or ``"<value>:<index>:<label>"`` (labels from the output's
``label_filename``), highest value first, compared in the output's own data type; the result is a BYTES
tensor of shape ``[batch, K]`` for batching models and ``[K]`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InvalidArgumentError
from .types import DataType, Tensor


def classify(tensor: Tensor, count: int, batching: bool, labels: Sequence[str] | None) -> Tensor:
    if count < 1:
        raise InvalidArgumentError(f"classification count for output '{tensor.name}' must be >= 1, got {count}")
    if tensor.datatype in (DataType.BYTES, DataType.BOOL):
        raise InvalidArgumentError(f"output '{tensor.name}' of type {tensor.datatype.wire_name} cannot be classified")
    data = tensor.data
    rows = data.reshape(data.shape[0] if batching and data.ndim else 1, -1)
    k = min(count, rows.shape[1])
    out: np.ndarray = np.empty((rows.shape[0], k), dtype=object)
    floating = data.dtype.kind == "f"
    for r, row in enumerate(rows):
        order = np.argsort(-row.astype(np.float64), kind="stable")[:k]
        for c, index in enumerate(order):
            value = row[index]
            text = f"{float(value):f}" if floating else str(int(value))
            text = f"{text}:{index}"
            if labels is not None and index < len(labels):
                text = f"{text}:{labels[index]}"
            out[r, c] = text.encode()
    if not batching:
        out = out.reshape(k)
    return Tensor(tensor.name, DataType.BYTES, out)
