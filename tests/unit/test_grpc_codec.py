"""The byte-level gRPC codec: raw contents cut out of the wire bytes (zero copy), responses built by hand.

Checked against protobuf itself and against tritonclient's copies of Triton's messages.
"""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as triton_pb

from tritium.core.inference import InferenceResponse
from tritium.core.types import DataType, Tensor
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
