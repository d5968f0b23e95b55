"""Joining requests into one batch and splitting a batch's outputs back.

Framework backends (ONNX Runtime, PyTorch) run one batch per ``execute``; the
Python backend hands requests to the model unjoined, so this lives beside the
backends rather than in the scheduler (Triton's BackendInputCollector and
BackendOutputResponder play the same part).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import numpy as np

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor


def batch_inputs(requests: Sequence[InferenceRequest], ragged: Collection[str] = ()) -> dict[str, np.ndarray]:
    """Inputs of all requests joined on the batch dimension: one copy per input, none for one request.

    ``ragged`` inputs (``allow_ragged_batch``) are flattened and joined into one 1-D tensor, as Triton's
    framework backends hand them to the model.
    """
    if len(requests) == 1:
        feeds = {t.name: t.data for t in requests[0].inputs}
        for name in ragged:
            if name in feeds:
                feeds[name] = feeds[name].reshape(-1)
        return feeds
    columns: dict[str, list[np.ndarray]] = {}
    for request in requests:
        for tensor in request.inputs:
            columns.setdefault(tensor.name, []).append(tensor.data)
    return {
        name: np.concatenate([a.reshape(-1) for a in arrays] if name in ragged else arrays)
        for name, arrays in columns.items()
    }


def _source(request: InferenceRequest, name: str) -> np.ndarray:
    for tensor in request.inputs:
        if tensor.name == name:
            return tensor.data
    raise InvalidArgumentError(f"batch input source '{name}' is missing from request '{request.id}'")


def batch_input_tensor(spec: mc.BatchInput, requests: Sequence[InferenceRequest], dtype: np.dtype) -> np.ndarray:
    """The tensor Triton synthesises for one ``batch_input`` from the requests of a batch.

    Shapes as Triton's backends build them: ELEMENT_COUNT / ACCUMULATED_ELEMENT_COUNT ``[requests]``,
    ..._WITH_ZERO ``[requests + 1]``, MAX_ELEMENT_COUNT_AS_SHAPE ``[max count]`` (uninitialized),
    ITEM_SHAPE ``[batch, rank]``, ITEM_SHAPE_FLATTEN ``[batch * rank]``; counts and shapes are of the
    source input without its batch dimension for item shapes, of the whole request otherwise.
    """
    name = spec.source_input[0]
    sources = [_source(r, name) for r in requests]
    kind = spec.kind
    if kind in (mc.BatchInput.BATCH_ELEMENT_COUNT, mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT,
                mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT_WITH_ZERO):
        counts = np.array([a.size for a in sources], dtype=dtype)
        if kind == mc.BatchInput.BATCH_ELEMENT_COUNT:
            return counts
        accumulated = np.cumsum(counts, dtype=dtype)
        if kind == mc.BatchInput.BATCH_ACCUMULATED_ELEMENT_COUNT:
            return accumulated
        return np.concatenate([np.zeros(1, dtype=dtype), accumulated])
    if kind == mc.BatchInput.BATCH_MAX_ELEMENT_COUNT_AS_SHAPE:
        return np.empty(max(a.size for a in sources), dtype=dtype)
    rows = [np.broadcast_to(np.array(a.shape[1:], dtype=dtype), (a.shape[0], a.ndim - 1)) for a in sources]
    shapes = np.concatenate(rows) if len(rows) > 1 else np.ascontiguousarray(rows[0])
    if kind == mc.BatchInput.BATCH_ITEM_SHAPE:
        return shapes
    return shapes.reshape(-1)  # BATCH_ITEM_SHAPE_FLATTEN


def scatter_with_input_shape(array: np.ndarray, requests: Sequence[InferenceRequest], source: str,
                             dims: Sequence[int]) -> list[np.ndarray]:
    """``BATCH_SCATTER_WITH_INPUT_SHAPE``: views of a flat batched output, one per request, shaped like
    the config's ``dims`` with each variable dimension taken from the request's ``source`` input."""
    flat = array.reshape(-1)
    views = []
    start = 0
    for request in requests:
        data = _source(request, source)
        item = data.shape[1:]
        shape = (data.shape[0],) + tuple(item[i] if d == -1 and i < len(item) else d for i, d in enumerate(dims))
        end = start + int(np.prod(shape))
        if end > flat.size:
            raise InternalError(f"batch output has {flat.size} elements, fewer than the requests' input shapes need")
        views.append(flat[start:end].reshape(shape))
        start = end
    return views


def split_batch(array: np.ndarray, requests: Sequence[InferenceRequest]) -> list[np.ndarray]:
    """Views of ``array`` for each request, by the requests' batch sizes."""
    if len(requests) == 1:
        return [array]
    views = []
    start = 0
    for request in requests:
        end = start + request.batch_size
        views.append(array[start:end])
        start = end
    return views


def requested_union(requests: Sequence[InferenceRequest], all_outputs: Sequence[str]) -> list[str]:
    """The outputs any request of the batch asked for, in config order."""
    wanted: set[str] = set()
    for request in requests:
        if request.requested_outputs is None:
            return list(all_outputs)
        wanted.update(request.requested_outputs)
    return [name for name in all_outputs if name in wanted]


def batch_responses(requests: Sequence[InferenceRequest], version: int,
                    outputs: Iterable[tuple[str, DataType, np.ndarray]],
                    batched: bool) -> list[InferenceResponse | TritiumError]:
    """Each request's response from the batch's output arrays (name, type, array): the request's rows of each
    (all of it when not ``batched``), and only the outputs it asked for."""
    per_request: list[list[Tensor]] = [[] for _ in requests]
    for name, datatype, array in outputs:
        views = split_batch(array, requests) if batched else [array]
        for tensors, request, view in zip(per_request, requests, views, strict=True):
            if request.requested_outputs is None or name in request.requested_outputs:
                tensors.append(Tensor(name, datatype, view))
    responses: list[InferenceResponse | TritiumError] = [
        InferenceResponse(r.model_name, version, r.id, tensors)
        for r, tensors in zip(requests, per_request, strict=True)]
    return responses
