"""``core.model.Model``: request validation against the config (names, types, shapes, batching, reshape,
optional inputs) and shaping of the response, without any backend or server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from google.protobuf import text_format

from tritium._proto import model_config_pb2 as mc
from tritium.core.errors import InvalidArgumentError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.types import DataType, Tensor


class EchoScheduler:
    """Answers each request with ``outputs`` (name -> array), recording what it was given."""

    def __init__(self, outputs=None):
        self.outputs = outputs or {}
        self.seen: list[InferenceRequest] = []

    async def infer(self, request):
        self.seen.append(request)
        tensors = [Tensor(n, DataType.from_numpy(a.dtype), a) for n, a in self.outputs.items()]
        return InferenceResponse("ignored", 0, "", tensors)

    async def drain(self):
        pass

    def close(self):
        pass


def model(text: str, name: str = "m", scheduler=None) -> Model:
    config = text_format.Parse(text, mc.ModelConfig())
    return Model(name, 1, config, scheduler or EchoScheduler())


def req(*tensors: tuple[str, np.ndarray] | tuple[str, np.ndarray, str], outputs=None) -> InferenceRequest:
    made = []
    for item in tensors:
        name, array = item[0], item[1]
        datatype = DataType(item[2]) if len(item) > 2 else DataType.from_numpy(array.dtype)
        made.append(Tensor(name, datatype, array))
    return InferenceRequest("m", -1, "", made, outputs)


def invalid(m: Model, request: InferenceRequest, *needles: str) -> str:
    with pytest.raises(InvalidArgumentError) as info:
        m.validate(request)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


BATCHED = """
max_batch_size: 4
input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 3 ] },
        { name: "B" data_type: TYPE_INT32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1, 3 ] },
         { name: "Z" data_type: TYPE_INT32 dims: [ 2 ] } ]
"""
UNBATCHED = """
max_batch_size: 0
input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1, 3 ] } ]
"""


def f32(*shape):
    return np.zeros(shape, np.float32)


def i32(*shape):
    return np.zeros(shape, np.int32)


# -- shapes and batching --------------------------------------------------------------------------


@pytest.mark.parametrize("batch, variable", [(1, 1), (4, 7), (2, 0)])
def test_batched_shapes_accepted(batch, variable):
    m = model(BATCHED)
    request = req(("A", f32(batch, variable, 3)), ("B", i32(batch, 2)))
    m.validate(request)
    assert request.batch_size == batch


@pytest.mark.parametrize("shape", [(2, 5, 4), (2, 3), (2, 1, 3, 1), (1, 3)])
def test_batched_wrong_shape(shape):
    message = invalid(model(BATCHED), req(("A", f32(*shape)), ("B", i32(shape[0], 2))), "'A'", "'m'")
    assert "[-1,-1,3]" in message  # the expected shape, batch dimension included


def test_batch_larger_than_max():
    invalid(model(BATCHED), req(("A", f32(5, 1, 3)), ("B", i32(5, 2))), "batch-size", "<= 4", "'m'")


def test_batch_of_zero_is_refused():
    """Triton refuses batch 0; accepting it would make the dynamic batcher split joined outputs wrongly."""
    invalid(model(BATCHED), req(("A", f32(0, 1, 3)), ("B", i32(0, 2))), "batch-size", ">= 1", "'m'")


def test_batch_sizes_must_agree():
    invalid(model(BATCHED), req(("A", f32(2, 1, 3)), ("B", i32(3, 2))), "'B'", "batch")


def test_scalar_for_batched_model():
    invalid(model(BATCHED), req(("A", np.float32(1.0) * np.ones((), np.float32)), ("B", i32(1, 2))), "'A'")


@pytest.mark.parametrize("shape", [(0, 3), (9, 3)])
def test_unbatched_variable_dims(shape):
    m = model(UNBATCHED)
    request = req(("A", f32(*shape)))
    m.validate(request)
    assert request.batch_size == 1


@pytest.mark.parametrize("shape", [(1, 9, 3), (3,), (2, 4)])
def test_unbatched_wrong_shape(shape):
    message = invalid(model(UNBATCHED), req(("A", f32(*shape))), "'A'")
    assert "[-1,3]" in message


def test_unbatched_ignores_max_batch_for_leading_dim():
    m = model(UNBATCHED)
    m.validate(req(("A", f32(100, 3))))


# -- names and types ------------------------------------------------------------------------------


def test_unknown_input():
    invalid(model(BATCHED), req(("A", f32(1, 1, 3)), ("B", i32(1, 2)), ("C", f32(1))), "'C'", "'m'")


def test_duplicate_input():
    invalid(model(BATCHED), req(("A", f32(1, 1, 3)), ("A", f32(1, 1, 3)), ("B", i32(1, 2))), "'A'")


def test_missing_input():
    message = invalid(model(BATCHED), req(("A", f32(1, 1, 3))), "'B'", "'m'")
    assert "expected 2 inputs but got 1" in message


def test_wrong_datatype_names_both_types():
    invalid(model(BATCHED), req(("A", f32(1, 1, 3)), ("B", f32(1, 2))), "'B'", "FP32", "INT32")


def test_bytes_where_numbers_expected():
    words = np.array([[b"a", b"b"]], dtype=object)
    invalid(model(BATCHED), req(("A", f32(1, 1, 3)), ("B", words, "BYTES")), "'B'", "BYTES", "INT32")


def test_unknown_requested_output():
    request = req(("A", f32(1, 1, 3)), ("B", i32(1, 2)), outputs=["Y", "NOPE"])
    invalid(model(BATCHED), request, "'NOPE'", "'m'")


# -- optional inputs ------------------------------------------------------------------------------

OPTIONAL = """
max_batch_size: 2
input [ { name: "A" data_type: TYPE_FP32 dims: [ 2 ] },
        { name: "OPT" data_type: TYPE_FP32 dims: [ 2 ] optional: true } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""


def test_optional_input_may_be_omitted():
    m = model(OPTIONAL)
    request = req(("A", f32(2, 2)))
    m.validate(request)
    assert request.batch_size == 2
    m.validate(req(("A", f32(1, 2)), ("OPT", f32(1, 2))))


def test_optional_input_still_checked_when_given():
    invalid(model(OPTIONAL), req(("A", f32(1, 2)), ("OPT", f32(1, 3))), "'OPT'")
    invalid(model(OPTIONAL), req(("A", f32(1, 2)), ("OPT", f32(2, 2))), "'OPT'", "batch")


def test_required_input_missing_beside_optional():
    invalid(model(OPTIONAL), req(("OPT", f32(1, 2))), "'A'")


# -- reshape ----------------------------------------------------------------------------------------


def test_input_reshape_batched():
    m = model("""
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    request = req(("A", data))
    m.validate(request)
    assert request.inputs[0].data.shape == (3, 2, 2)
    assert np.shares_memory(request.inputs[0].data, data)  # a view, not a copy


def test_input_reshape_variable_dims():
    m = model("""
        max_batch_size: 0
        input [ { name: "A" data_type: TYPE_FP32 dims: [ -1, 4 ] reshape: { shape: [ -1, 2, 2 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    """)
    request = req(("A", f32(5, 4)))
    m.validate(request)
    assert request.inputs[0].data.shape == (5, 2, 2)


def test_input_reshape_with_variable_dims_between_chunks():
    m = model("""
        max_batch_size: 2
        input [ { name: "A" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ] reshape: { shape: [ 8, -1, 1, 6 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]
    """)
    data = np.arange(2 * 2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 2, 4, 5, 6)
    request = req(("A", data))
    m.validate(request)
    assert request.inputs[0].data.shape == (2, 8, 5, 1, 6)
    np.testing.assert_array_equal(request.inputs[0].data.reshape(-1), data.reshape(-1))


def test_input_reshape_to_scalar_per_item():
    m = model("""
        max_batch_size: 8
        input [ { name: "A" data_type: TYPE_INT32 dims: [ 1 ] reshape: { shape: [ ] } } ]
        output [ { name: "Y" data_type: TYPE_INT32 dims: [ 1 ] } ]
    """)
    request = req(("A", i32(6, 1)))
    m.validate(request)
    assert request.inputs[0].data.shape == (6,)


def test_reshape_input_shape_is_checked_against_dims_not_reshape():
    m = model("""
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    invalid(m, req(("A", f32(1, 2, 2))), "'A'")


def test_output_reshape_and_requested_order():
    scheduler = EchoScheduler({"Y": np.arange(8, dtype=np.float32).reshape(2, 2, 2),
                               "Z": np.arange(2, dtype=np.int32).reshape(2, 1)})
    m = model("""
        max_batch_size: 4
        input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
                 { name: "Z" data_type: TYPE_INT32 dims: [ 1 ] } ]
    """, scheduler=scheduler)
    request = req(("A", f32(2, 4)), outputs=["Z", "Y"])
    request.id = "rid"
    response = asyncio.run(m.infer(request))
    assert [t.name for t in response.outputs] == ["Y", "Z"]  # the model's order, not the order asked (Triton)
    assert response.outputs[0].data.shape == (2, 4)
    np.testing.assert_array_equal(response.outputs[0].data, np.arange(8, dtype=np.float32).reshape(2, 4))
    assert (response.model_name, response.model_version, response.id) == ("m", 1, "rid")
    only_y = asyncio.run(m.infer(req(("A", f32(2, 4)), outputs=["Y"])))
    assert [t.name for t in only_y.outputs] == ["Y"]


def test_invalid_request_never_reaches_the_scheduler():
    scheduler = EchoScheduler()
    m = model(BATCHED, scheduler=scheduler)
    with pytest.raises(InvalidArgumentError):
        asyncio.run(m.infer(req(("A", f32(1, 1, 3)))))
    assert scheduler.seen == []


def test_metadata_shape():
    m = model(BATCHED)
    assert m.inputs["A"].metadata_shape(m.max_batch_size) == [-1, -1, 3]
    assert model(UNBATCHED).inputs["A"].metadata_shape(0) == [-1, 3]
    assert m.required_inputs == ["A", "B"]
