"""Triton's generate extension (``/generate``, ``/generate_stream``): a flat JSON object in, one out.

A request's top-level keys name the model's inputs; ``id`` is the request id, ``parameters`` an object of
request parameters, and every other key is a request parameter too.  An input's value is a scalar or a
flat list; its shape is the input's configured dims with the ``-1`` filled from the element count (and a
batch of one in front when the model batches).  A response has one key per output (a scalar when it holds
one element, else a flat list; BYTES as text), ``model_name``, ``model_version`` and ``id`` when given,
keys sorted as Triton writes them.  ``/generate_stream`` sends each response as a Server-Sent Event.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import orjson

from tritium.core.errors import InvalidArgumentError, request_error
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.types import DataType, Tensor

from .codec import check_parameters, parse_json

#: Triton's answer when ``/generate`` meets a model that did not give exactly one response.
NOT_ONE_RESPONSE = ("generate expects model to produce exactly 1 response, use generate stream for model that "
                    "generates various number of responses")

_SCALARS = (str, int, float, bool)


def decode_generate_request(body: bytes | memoryview, model: Model) -> InferenceRequest:
    """Checked in Triton's order and words (where its JSON library answers a mistyped value, its words come
    first, then what is wrong)."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise InvalidArgumentError("the generate request must be a JSON object")
    request = InferenceRequest(model.name, model.version)
    parameters: dict[str, Any] = {}
    inputs = []
    for key, value in doc.items():
        spec = model.inputs.get(key)
        if spec is not None:
            inputs.append(Tensor(key, spec.datatype, _input_array(key, value, spec.datatype, spec.dims,
                                                                  model.max_batch_size)))
        elif key == "id":
            if not isinstance(value, str):
                raise InvalidArgumentError("'id' of a generate request must be a string")
            request.id = value
        elif key == "parameters":
            if not isinstance(value, dict):
                raise InvalidArgumentError("Expected JSON object for keyword: 'parameters': 'parameters' of a "
                                           "generate request must be an object")
            try:
                check_parameters(value)
            except InvalidArgumentError as e:
                raise InvalidArgumentError(f"Converting keyword: 'parameters': {e}") from None
            parameters.update(value)
        else:
            parameters[key] = value
    check_parameters(parameters)
    for name in _repeated_keys(body):  # the JSON object kept the last value: Triton adds both and refuses
        if name in model.inputs:
            raise request_error(request.id, f"input '{name}' already exists in request")
    request.inputs = inputs
    request.parameters = parameters
    return request


def _repeated_keys(body: bytes | memoryview) -> list[str]:
    """Keys the request's top-level object holds more than once (the body is valid JSON by now; a big body
    arrives as a memoryview of shared memory, which the json module does not read)."""
    pairs = json.loads(bytes(body) if isinstance(body, memoryview) else body, object_pairs_hook=lambda items: items)
    if not isinstance(pairs, list):
        return []
    return [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]


def _input_array(name: str, value: Any, datatype: DataType, dims: tuple[int, ...], max_batch_size: int) -> np.ndarray:
    values = value if isinstance(value, list) else [value]
    if datatype is DataType.BYTES:
        if not all(isinstance(v, str) for v in values):
            raise InvalidArgumentError(f"Unable to parse JSON bytes array: input '{name}' is BYTES: its values "
                                       "must be strings")
    elif any(isinstance(v, str) or (isinstance(v, bool) is not (datatype is DataType.BOOL))
             for v in values if isinstance(v, _SCALARS)):
        kind = "booleans" if datatype is DataType.BOOL else "numbers"
        raise InvalidArgumentError(
            f"Unable to parse 'data': input '{name}' is {datatype.wire_name}: its values must be {kind}")
    shape = list(dims)
    count = len(values)
    known = math.prod(d for d in dims if d >= 0)
    unknown = shape.count(-1)
    fits = all(isinstance(v, _SCALARS) for v in values) and unknown <= 1
    if fits and unknown == 1:
        fits = known > 0 and count % known == 0
        if fits:
            shape[shape.index(-1)] = count // known
    elif fits:
        fits = known == count
    if not fits:
        raise InvalidArgumentError(f"The schema can not convert input '{name}' to tensor with proper shape")
    if max_batch_size > 0:
        shape.insert(0, 1)
    if datatype is DataType.BYTES:
        array = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            array[i] = v.encode("utf-8")
        return array.reshape(shape)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # a float beyond FP16/FP32 becomes inf, as Triton's cast
            return np.array(values, dtype=datatype.numpy_dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgumentError(
            f"Unable to parse 'data': input '{name}' is {datatype.wire_name}: {e}") from None


def encode_generate_response(response: InferenceResponse) -> bytes:
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": str(response.model_version)}
    if response.id:
        doc["id"] = response.id
    for tensor in response.outputs:
        flat = tensor.data.reshape(-1)
        if tensor.datatype is DataType.BYTES:
            items: list[Any] = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in flat]
        else:
            items = flat.tolist()  # FP32 widened to doubles, as Triton writes them
        doc[tensor.name] = items[0] if len(items) == 1 else items
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def event(data: bytes) -> bytes:
    """One Server-Sent Event carrying ``data`` (a JSON document)."""
    return b"data: " + data + b"\n\n"


def error_event(message: str) -> bytes:
    return event(orjson.dumps({"error": message}))
