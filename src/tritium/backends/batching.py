"""Joining requests into one batch and splitting a batch's outputs back.

Framework backends (ONNX Runtime, PyTorch) run one batch per ``execute``; the
Python backend hands requests to the model unjoined, so this lives beside the
backends rather than in the scheduler (Triton's BackendInputCollector and
BackendOutputResponder play the same part).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritium.core.inference import InferenceRequest


def batch_inputs(requests: Sequence[InferenceRequest]) -> dict[str, np.ndarray]:
    """Inputs of all requests joined on the batch dimension: one copy per input, none for one request."""
    if len(requests) == 1:
        return {t.name: t.data for t in requests[0].inputs}
    columns: dict[str, list[np.ndarray]] = {}
    for request in requests:
        for tensor in request.inputs:
            columns.setdefault(tensor.name, []).append(tensor.data)
    return {name: np.concatenate(arrays) for name, arrays in columns.items()}


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
