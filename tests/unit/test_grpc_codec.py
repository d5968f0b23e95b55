"""The byte-level gRPC codec: raw contents cut out of the wire bytes (zero copy), responses built by hand.

Checked against protobuf itself and against tritonclient's copies of Triton's messages.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from tritium.core.inference import InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.frontends.grpc import codec
from tritium.frontends.grpc.codec import (
    decode_request_bytes,
    infer_response_bytes,
    stream_error_bytes,
    stream_response_bytes,
    to_inference_request,
)


def _request_bytes(raw_sizes=(64, 200_000)):
    message = triton_pb.ModelInferRequest(model_name="m", model_version="3", id="r")
    message.parameters["n"].int64_param = 5
    message.parameters["s"].string_param = "x"
    for i, size in enumerate(raw_sizes):
        message.inputs.add(name=f"IN{i}", datatype="UINT8", shape=[size])
        message.raw_input_contents.append(bytes([i + 1]) * size)
    message.outputs.add(name="OUT")
    return message.SerializeToString(), message


def test_raw_contents_are_views_of_the_received_bytes():
    data, original = _request_bytes()
    decoded = decode_request_bytes(data)
    assert decoded.error is None
    assert [bytes(r) for r in decoded.raw] == list(original.raw_input_contents)
    assert all(r.obj is data for r in decoded.raw)  # slices of the message gRPC handed over, not copies
    assert decoded.message.model_name == "m" and decoded.message.id == "r"
    assert len(decoded.message.raw_input_contents) == 0 and len(decoded.message.inputs) == 2
    request = to_inference_request(decoded, "m", 3)
    assert request.parameters == {"n": 5, "s": "x"} and request.requested_outputs == ["OUT"]
    array = request.inputs[1].data
    assert array.shape == (200_000,) and (array == 2).all()
    assert not array.flags.owndata and np.shares_memory(array, np.frombuffer(data, np.uint8))


def test_no_raw_contents_parses_as_protobuf_does():
    message = triton_pb.ModelInferRequest(model_name="m")
    message.inputs.add(name="IN", datatype="INT32", shape=[3]).contents.int_contents.extend([1, -2, 3])
    decoded = decode_request_bytes(message.SerializeToString())
    request = to_inference_request(decoded, "m", 1)
    assert request.inputs[0].data.dtype == np.int32 and request.inputs[0].data.tolist() == [1, -2, 3]


@pytest.mark.parametrize("data", [b"\x3a\x05ab", b"\x0a", b"\x3a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                                  b"\x0f\x00", b"\x0a\x02m"])
def test_malformed_bytes_give_an_error_not_an_exception(data):
    decoded = decode_request_bytes(data)
    assert decoded.error is not None and "parse" in decoded.error


def _response():
    return InferenceResponse("m", 2, "id-1", [
        Tensor("A", DataType.FP32, np.arange(6, dtype=np.float32).reshape(2, 3)),
        Tensor("B", DataType.BYTES, np.array([b"x", b"yz"], dtype=object)),
        Tensor("C", DataType.INT64, np.arange(10, dtype=np.int64)[::2]),  # not contiguous
    ], {"p": True})


def test_response_parses_with_tritonclients_messages():
    parsed = triton_pb.ModelInferResponse.FromString(infer_response_bytes(_response()))
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "id-1")
    assert parsed.parameters["p"].bool_param is True
    assert [(o.name, o.datatype, list(o.shape)) for o in parsed.outputs] == [
        ("A", "FP32", [2, 3]), ("B", "BYTES", [2]), ("C", "INT64", [5])]
    assert parsed.raw_output_contents[0] == np.arange(6, dtype=np.float32).tobytes()
    assert parsed.raw_output_contents[1] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"
    assert parsed.raw_output_contents[2] == np.arange(0, 10, 2, dtype=np.int64).tobytes()


def test_stream_messages():
    parsed = triton_pb.ModelStreamInferResponse.FromString(stream_response_bytes(_response(), False))
    assert parsed.error_message == "" and parsed.infer_response.id == "id-1"
    assert parsed.infer_response.parameters["triton_final_response"].bool_param is False
    assert len(parsed.infer_response.raw_output_contents) == 3
    error = triton_pb.ModelStreamInferResponse.FromString(stream_error_bytes("boom", "id-2"))
    assert error.error_message == "boom" and error.infer_response.id == "id-2"


# -- plans: a message like an earlier one is not parsed by protobuf again ---------------------------------


@pytest.fixture(autouse=True)
def _no_plans():
    codec._PLANS.clear()
    codec._last[0] = None
    yield
    codec._PLANS.clear()
    codec._last[0] = None


def _plain(request_id: str = "", data: bytes = b"\0" * 64, model: str = "m", **inputs: tuple[str, list[int]]):
    message = triton_pb.ModelInferRequest(model_name=model, model_version="2", id=request_id)
    message.inputs.add(name="IN", datatype="FP32", shape=[len(data) // 4])
    message.raw_input_contents.append(data)
    for name, (datatype, shape) in inputs.items():
        message.inputs.add(name=name, datatype=datatype, shape=shape)
    message.outputs.add(name="OUT")
    return message.SerializeToString()


def _decode(data: bytes):
    decoded = decode_request_bytes(data)
    return decoded, to_inference_request(decoded, "m", 2)


def test_a_plan_stands_for_the_same_message_with_another_id_and_data():
    first, request = _decode(_plain("a", np.arange(16, dtype=np.float32).tobytes()))
    assert first.message is not None and request.id == "a"
    for request_id in ("", "b", "é" * 100):  # none, short, a two-byte length
        values = np.random.default_rng(len(request_id)).standard_normal(16).astype(np.float32)
        data = _plain(request_id, values.tobytes())
        decoded, request = _decode(data)
        assert decoded.message is None and decoded.plan is not None  # protobuf did not parse it
        assert (decoded.model_name, decoded.model_version, request.id) == ("m", "2", request_id)
        assert request.requested_outputs == ["OUT"] and request.inputs[0].name == "IN"
        assert request.inputs[0].data.tolist() == [values.tolist()[i] for i in range(16)]
        assert request.inputs[0].data.shape == (16,) and np.shares_memory(request.inputs[0].data,
                                                                           np.frombuffer(data, np.uint8))


def test_a_message_that_differs_from_the_plan_is_decoded_in_full():
    _decode(_plain())
    # another size for the same shape: the full decode names what is wrong
    message = triton_pb.ModelInferRequest.FromString(_plain())
    message.raw_input_contents[0] = b"\0" * 60
    decoded = decode_request_bytes(message.SerializeToString())
    assert decoded.message is not None
    with pytest.raises(Exception, match="input byte size mismatch for input 'IN'"):
        to_inference_request(decoded, "m", 2)
    message.raw_input_contents[0] = b"\0" * 64
    message.raw_input_contents.append(b"extra")  # raw contents beyond the inputs': ignored, as Triton
    decoded, request = _decode(message.SerializeToString())
    assert decoded.message is not None and len(request.inputs) == 1
    assert _decode(_plain())[0].message is None and codec._last[0] is not None  # matched by layout from now on
    decoded = decode_request_bytes(_plain().replace(b"\x12\x012", b"\x12\x012\x1a\x7f"))  # an id past the end
    assert decoded.error is not None and "truncated" in decoded.error
    bad_utf8 = _plain().replace(b"\x12\x012", b"\x12\x012\x1a\x02\xff\xfe")  # an id that is not UTF-8
    decoded = decode_request_bytes(bad_utf8)
    assert decoded.error is not None and "parse" in decoded.error


def test_fields_out_of_order_still_decode_as_protobuf():
    _decode(_plain("a"))
    data = _plain("a")
    raw_field = data[data.index(b"\x3a\x40"):]
    reordered = raw_field + data[:data.index(b"\x3a\x40")]  # raw contents first: valid protobuf
    decoded, request = _decode(reordered)
    assert decoded.error is None and request.id == "a" and request.inputs[0].data.shape == (16,)
    assert decoded.message is None  # found by its key all the same (the scan), not by the layout


def test_parameters_shared_memory_and_typed_contents_get_no_plan():
    message = triton_pb.ModelInferRequest.FromString(_plain())
    message.parameters["sequence_id"].int64_param = 7
    for _ in range(2):
        decoded, request = _decode(message.SerializeToString())
        assert decoded.message is not None and request.parameters == {"sequence_id": 7}
    typed = triton_pb.ModelInferRequest(model_name="m")
    typed.inputs.add(name="IN", datatype="INT32", shape=[2]).contents.int_contents.extend([1, 2])
    for _ in range(2):
        decoded, request = _decode(typed.SerializeToString())
        assert decoded.message is not None and request.inputs[0].data.tolist() == [1, 2]
    assert not codec._PLANS


def test_bytes_inputs_by_plan():
    def message(values):
        m = triton_pb.ModelInferRequest(model_name="m")
        m.inputs.add(name="S", datatype="BYTES", shape=[len(values)])
        m.raw_input_contents.append(b"".join(len(v).to_bytes(4, "little") + v for v in values))
        return m.SerializeToString()

    _decode(message([b"ab", b"c"]))
    decoded, request = _decode(message([b"xyz", b""]))  # other lengths, same key
    assert decoded.message is None and request.inputs[0].data.tolist() == [b"xyz", b""]
    decoded = decode_request_bytes(message([b"only one"]).replace(b"\x1a\x01\x01", b"\x1a\x01\x02"))
    with pytest.raises(Exception, match="S"):  # two elements announced, one sent: named as without a plan
        to_inference_request(decoded, "m", 2)


def test_plans_are_bounded():
    for i in range(codec.MAX_PLANS + 10):
        _decode(_plain(model=f"m{i}"))
    assert 0 < len(codec._PLANS) <= codec.MAX_PLANS
    long_name = "x" * (codec.MAX_PLAN_KEY + 1)
    _decode(_plain(model=long_name))
    assert all(plan.model_name != long_name for plan in codec._PLANS.values())


@pytest.mark.parametrize("response", [
    _response(),
    InferenceResponse("m", 1, "", [Tensor("A", DataType.FP32, np.zeros((0, 3), np.float32))]),
    InferenceResponse("model-" + "é" * 80, 12345678901, "i" * 300, [
        Tensor("A", DataType.BOOL, np.array([True, False])),
        Tensor("B", DataType.FP16, np.ones((1, 2, 3), np.float16).astype(">f2")),
    ], {"a": 1, "b": "two", "c": 2.5, "d": 1 << 63, "e": False}),
    InferenceResponse("m", 1),
])
def test_responses_are_the_bytes_protobuf_writes(response):
    for _ in range(2):  # the second time from remembered pieces
        data = infer_response_bytes(response)
        reference = triton_pb.ModelInferResponse(
            model_name=response.model_name, model_version=str(response.model_version), id=response.id)
        for key, value in response.parameters.items():
            codec.set_parameter(reference.parameters[key], value)
        for tensor in response.outputs:
            reference.outputs.add(name=tensor.name, datatype=tensor.datatype.wire_name, shape=tensor.data.shape)
            reference.raw_output_contents.append(bytes(codec._to_raw(tensor.data, tensor.datatype)))
        if len(response.parameters) <= 1:  # (a map's entries may come in another order)
            assert data == reference.SerializeToString()
        assert triton_pb.ModelInferResponse.FromString(data) == reference


def test_remembered_response_pieces_are_bounded():
    """A model may answer long parameters, each one different (say, echoing a client's): such pieces are
    encoded every time, not kept, and the tables stay bounded in entries too."""
    big = "x" * (codec.MAX_REMEMBERED_PIECE + 1)
    for i in range(3):
        response = InferenceResponse("m", 1, "", [], {"echo": f"{big}{i}"})
        parsed = triton_pb.ModelInferResponse.FromString(infer_response_bytes(response))
        assert parsed.parameters["echo"].string_param == f"{big}{i}"
    assert not any(len(piece) > codec.MAX_REMEMBERED_PIECE for piece in codec._PARAMETERS.values())
    for i in range(codec.MAX_REMEMBERED + 10):
        infer_response_bytes(InferenceResponse("m", 1, "", [], {"n": i}))
    assert 0 < len(codec._PARAMETERS) <= codec.MAX_REMEMBERED
