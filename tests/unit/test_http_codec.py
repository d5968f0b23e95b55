"""The HTTP codec (KServe v2 JSON + Triton's binary tensor extension) and Triton's BYTES serialization."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest

from tritium.core.bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError
from tritium.core.inference import InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.frontends.http import codec
from tritium.frontends.http.codec import OutputEncoding, decode_infer_request, encode_infer_response


def binary_body(inputs, *blobs: bytes, outputs=None, parameters=None):
    doc = {"inputs": inputs}
    if outputs is not None:
        doc["outputs"] = outputs
    if parameters is not None:
        doc["parameters"] = parameters
    header = json.dumps(doc).encode()
    return header + b"".join(blobs), len(header)


def decode_json(doc):
    return decode_infer_request(json.dumps(doc).encode(), None, "m", -1)


# -- binary inputs ----------------------------------------------------------------------------------


def test_binary_inputs_are_zero_copy_views_of_the_body():
    a = np.arange(12, dtype=np.float32)
    b = np.arange(6, dtype=np.int64)
    body, length = binary_body(
        [{"name": "A", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
         {"name": "B", "shape": [6], "datatype": "INT64", "parameters": {"binary_data_size": b.nbytes}}],
        a.tobytes(), b.tobytes())
    request, _ = decode_infer_request(body, length, "m", 3)
    body_view = np.frombuffer(body, dtype=np.uint8)
    got_a, got_b = (t.data for t in request.inputs)
    assert np.shares_memory(got_a, body_view) and np.shares_memory(got_b, body_view)
    np.testing.assert_array_equal(got_a, a.reshape(3, 4))
    np.testing.assert_array_equal(got_b, b)
    assert got_a.dtype == np.float32 and got_b.dtype == np.int64
    assert [t.datatype for t in request.inputs] == [DataType.FP32, DataType.INT64]
    assert (request.model_name, request.model_version) == ("m", 3)


def test_a_repeated_binary_header_is_decoded_from_its_plan_with_the_new_body_s_data():
    codec._PLANS.clear()
    inputs = [{"name": "A", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
              {"name": "S", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 18}}]
    outputs = [{"name": "Y", "parameters": {"binary_data": True}}, {"name": "Z"}]
    strings = bytes(serialize_bytes_tensor(np.array([b"hello", b"world"], dtype=np.object_)))
    first, length = binary_body(inputs, np.zeros(4, np.float32).tobytes(), strings, outputs=outputs)
    decoded_first, encoding_first = decode_infer_request(first, length, "m", 1)
    assert len(codec._PLANS) == 1
    data = np.arange(4, dtype=np.float32)
    second, _ = binary_body(inputs, data.tobytes(), strings, outputs=outputs)
    request, encoding = decode_infer_request(second, length, "m", 2)
    assert len(codec._PLANS) == 1  # the same plan served it
    np.testing.assert_array_equal(request.inputs[0].data, data.reshape(2, 2))
    assert np.shares_memory(request.inputs[0].data, np.frombuffer(second, np.uint8))
    assert request.inputs[1].data.tolist() == [b"hello", b"world"]
    assert [t.datatype for t in request.inputs] == [DataType.FP32, DataType.BYTES]
    assert (request.model_version, request.requested_outputs) == (2, ["Y", "Z"])
    assert encoding.is_binary("Y") and not encoding.is_binary("Z")
    # each request gets its own objects: changing one changes nothing in the next
    request.requested_outputs.append("W")
    encoding.binary["Z"] = True
    again, again_encoding = decode_infer_request(second, length, "m", 2)
    assert again.requested_outputs == ["Y", "Z"] and not again_encoding.is_binary("Z")
    assert decoded_first.requested_outputs == ["Y", "Z"] and not encoding_first.is_binary("Z")


def test_a_repeated_header_with_the_wrong_amount_of_data_gets_the_full_decode_s_error():
    codec._PLANS.clear()
    inputs = [{"name": "A", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
    body, length = binary_body(inputs, bytes(16))
    decode_infer_request(body, length, "m", -1)
    with pytest.raises(InvalidArgumentError, match="unexpected additional input data"):
        decode_infer_request(body + b"x", length, "m", -1)
    with pytest.raises(InvalidArgumentError, match="expecting 16 additional bytes"):
        decode_infer_request(body[:-1], length, "m", -1)


@pytest.mark.parametrize("extra", [
    {"parameters": {"priority": 1}},
    {"id": "r1"},
], ids=["parameters", "id"])
def test_headers_that_say_more_than_tensors_are_decoded_every_time(extra):
    codec._PLANS.clear()
    inputs = [{"name": "A", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]
    header = json.dumps({"inputs": inputs, **extra}).encode()
    request, _ = decode_infer_request(header + bytes(16), len(header), "m", -1)
    assert request.id == extra.get("id", "") and request.parameters == extra.get("parameters", {})
    assert not codec._PLANS


def test_plans_are_bounded():
    codec._PLANS.clear()
    for i in range(codec.MAX_PLANS + 5):
        inputs = [{"name": f"A{i}", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1}}]
        body, length = binary_body(inputs, b"x")
        decode_infer_request(body, length, "m", -1)
        assert len(codec._PLANS) <= codec.MAX_PLANS


def test_binary_input_at_odd_offset_is_still_correct():
    """The tail of a body is rarely aligned; values must still read right."""
    x = np.array([1.5, -2.25, 3.0], dtype=np.float64)
    inputs = [{"name": "P", "shape": [1], "datatype": "UINT8", "parameters": {"binary_data_size": 1}},
              {"name": "X", "shape": [3], "datatype": "FP64", "parameters": {"binary_data_size": x.nbytes}}]
    body, length = binary_body(inputs, b"\x07", x.tobytes())
    request, _ = decode_infer_request(body, length, "m", -1)
    np.testing.assert_array_equal(request.inputs[1].data, x)
    assert np.shares_memory(request.inputs[1].data, np.frombuffer(body, np.uint8))


def test_binary_and_json_inputs_mixed():
    x = np.arange(4, dtype=np.int32)
    body, length = binary_body(
        [{"name": "J", "shape": [2], "datatype": "INT32", "data": [7, 8]},
         {"name": "B", "shape": [4], "datatype": "INT32", "parameters": {"binary_data_size": 16}}],
        x.tobytes())
    request, _ = decode_infer_request(body, length, "m", -1)
    np.testing.assert_array_equal(request.inputs[0].data, [7, 8])
    np.testing.assert_array_equal(request.inputs[1].data, x)


def test_binary_bool_and_bf16():
    flags = np.array([True, False, True])
    halves = np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)
    body, length = binary_body(
        [{"name": "F", "shape": [3], "datatype": "BOOL", "parameters": {"binary_data_size": 3}},
         {"name": "H", "shape": [2], "datatype": "BF16", "parameters": {"binary_data_size": 4}}],
        flags.tobytes(), halves.tobytes())
    request, _ = decode_infer_request(body, length, "m", -1)
    np.testing.assert_array_equal(request.inputs[0].data, flags)
    assert request.inputs[1].data.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(request.inputs[1].data, halves)


@pytest.mark.parametrize("size, tail, needle", [
    (60, b"\0" * 60, "A"),        # size does not fit the shape
    (64, b"\0" * 32, "A"),        # size past the end of the body
    (64, b"\0" * 70, "additional"),  # bytes no input claims
])
def test_binary_size_errors(size, tail, needle):
    body, length = binary_body([{"name": "A", "shape": [16], "datatype": "FP32",
                                 "parameters": {"binary_data_size": size}}], tail)
    with pytest.raises(InvalidArgumentError, match=needle):
        decode_infer_request(body, length, "m", -1)


@pytest.mark.parametrize("header_length", [-1, 0, 10**9])
def test_header_length_out_of_range(header_length):
    body, _ = binary_body([{"name": "A", "shape": [1], "datatype": "FP32", "data": [1.0]}])
    with pytest.raises(InvalidArgumentError, match=str(header_length)):
        decode_infer_request(body, header_length, "m", -1)


def test_header_length_equal_to_body_is_pure_json():
    body, length = binary_body([{"name": "A", "shape": [1], "datatype": "FP32", "data": [1.0]}])
    assert length == len(body)
    request, _ = decode_infer_request(body, length, "m", -1)
    np.testing.assert_array_equal(request.inputs[0].data, [1.0])


def test_huge_shape_with_tiny_binary_data_allocates_nothing():
    tracemalloc.start()
    try:
        for datatype, tail in (("FP32", b"\0" * 8), ("BYTES", struct.pack("<I", 1) + b"a")):
            body, length = binary_body([{"name": "A", "shape": [1, 2**40], "datatype": datatype,
                                         "parameters": {"binary_data_size": len(tail)}}], tail)
            with pytest.raises(InvalidArgumentError, match="A"):
                decode_infer_request(body, length, "m", -1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


# -- JSON inputs ------------------------------------------------------------------------------------


def test_json_nested_and_flat_are_equal():
    flat, _ = decode_json({"inputs": [{"name": "A", "shape": [2, 3], "datatype": "INT16", "data": [1, 2, 3, 4, 5, 6]}]})
    nested, _ = decode_json({"inputs": [{"name": "A", "shape": [2, 3], "datatype": "INT16",
                                         "data": [[1, 2, 3], [4, 5, 6]]}]})
    for request in (flat, nested):
        array = request.inputs[0].data
        assert array.dtype == np.int16 and array.shape == (2, 3)
        np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("datatype, data, expected", [
    ("BOOL", [True, False], np.array([True, False])),
    ("UINT64", [2**63 - 1, 1], np.array([2**63 - 1, 1], dtype=np.uint64)),
    ("UINT64", [2**64 - 1, 0], np.array([2**64 - 1, 0], dtype=np.uint64)),  # numpy alone would make float64
    ("INT64", [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
    ("FP32", [1, 2.5], np.array([1.0, 2.5], dtype=np.float32)),
    ("FP64", [0.1, -3], np.array([0.1, -3.0])),
    ("BYTES", ["a", "ünï"], np.array([b"a", "ünï".encode()], dtype=object)),
])
def test_json_datatypes(datatype, data, expected):
    request, _ = decode_json({"inputs": [{"name": "A", "shape": [2], "datatype": datatype, "data": data}]})
    array = request.inputs[0].data
    assert array.dtype == expected.dtype
    assert array.tolist() == expected.tolist()


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_json_16_bit_floats_are_refused(datatype):
    with pytest.raises(InvalidArgumentError) as info:
        decode_json({"inputs": [{"name": "HALF", "shape": [1], "datatype": datatype, "data": [1.0]}]})
    assert "HALF" in str(info.value) and "binary" in str(info.value)


@pytest.mark.parametrize("datatype, data", [
    ("INT32", [1.5, 2]),
    ("INT32", [True, False]),
    ("FP32", [True, False]),
    ("BOOL", [1, 0]),
    ("INT32", ["1", "2"]),
    ("BYTES", [1, 2]),
    ("INT32", [None, 1]),
    ("INT64", [2**64, 1]),
])
def test_json_values_of_the_wrong_kind(datatype, data):
    with pytest.raises(InvalidArgumentError, match="VAL"):
        decode_json({"inputs": [{"name": "VAL", "shape": [2], "datatype": datatype, "data": data}]})


@pytest.mark.parametrize("data", [[1, 2, 3], [1], [[1, 2], [3]], []])
def test_json_count_mismatch(data):
    with pytest.raises(InvalidArgumentError, match="CNT"):
        decode_json({"inputs": [{"name": "CNT", "shape": [2, 1], "datatype": "INT32", "data": data}]})


@pytest.mark.parametrize("doc, needle", [
    ([], "object"),
    ({}, "inputs"),
    ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "name"),
    ({"inputs": [{"name": "A", "datatype": "FP32", "data": [1]}]}, "shape"),
    ({"inputs": [{"name": "A", "shape": [1], "data": [1]}]}, "datatype"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "FP33", "data": [1]}]}, "datatype"),
    ({"inputs": [{"name": "A", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "shape"),
    ({"inputs": [{"name": "A", "shape": [1], "datatype": "FP32"}]}, "data"),
    ({"id": 5, "inputs": []}, "id"),
    ({"inputs": [], "outputs": [{"nom": "X"}]}, "name"),
    ({"inputs": [], "parameters": {"binary_data_output": "yes"}}, "binary_data_output"),
])
def test_malformed_request_documents(doc, needle):
    with pytest.raises(InvalidArgumentError, match=needle):
        decode_json(doc)


def test_malformed_json_text():
    for body in (b"", b"{", b"\xff", b'{"inputs": [}'):
        with pytest.raises(InvalidArgumentError, match="JSON"):
            decode_infer_request(body, None, "m", -1)


def test_request_fields_are_kept():
    request, encoding = decode_json({"id": "r1", "parameters": {"priority": 2},
                                     "inputs": [], "outputs": [{"name": "B"}, {"name": "A"}]})
    assert request.id == "r1"
    assert request.parameters["priority"] == 2
    assert request.requested_outputs == ["B", "A"]
    assert not encoding.is_binary("A")
    request, _ = decode_json({"inputs": []})
    assert request.requested_outputs is None


# -- output encoding choice -------------------------------------------------------------------------


def test_binary_data_output_and_per_output_override():
    request, encoding = decode_json({"inputs": [], "parameters": {"binary_data_output": True},
                               "outputs": [{"name": "A"}, {"name": "B", "parameters": {"binary_data": False}}]})
    assert encoding.is_binary("A") and not encoding.is_binary("B") and encoding.is_binary("C")
    assert "binary_data_output" not in request.parameters  # the frontend's, never passed to the model
    _, encoding = decode_json({"inputs": [], "outputs": [{"name": "A", "parameters": {"binary_data": True}},
                                                         {"name": "B"}]})
    assert encoding.is_binary("A") and not encoding.is_binary("B")


# -- response encoding ------------------------------------------------------------------------------


def _response(*tensors: Tensor) -> InferenceResponse:
    return InferenceResponse("m", 2, "id-1", list(tensors))


def _split(pieces, json_length):
    body = b"".join(bytes(p) for p in pieces)
    if json_length is None:
        return json.loads(body), b""
    return json.loads(body[:json_length]), body[json_length:]


def test_encode_all_json():
    response = _response(Tensor("A", DataType.INT32, np.arange(6, dtype=np.int32).reshape(2, 3)),
                         Tensor("S", DataType.BYTES, np.array([b"x", "ü".encode()], dtype=object)))
    pieces, json_length = encode_infer_response(response, OutputEncoding())
    assert json_length is None
    doc, tail = _split(pieces, json_length)
    assert tail == b""
    assert doc["model_name"] == "m" and doc["model_version"] == "2" and doc["id"] == "id-1"
    assert doc["outputs"][0] == {"name": "A", "datatype": "INT32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    assert doc["outputs"][1]["data"] == ["x", "ü"]


def test_encode_fp32_json_as_triton_writes_it():
    """Triton widens an FP32 output to a double before writing it: 0.1 reads 0.10000000149011612."""
    response = _response(Tensor("F", DataType.FP32, np.array([0.1, 3, 1e-8], np.float32)))
    doc, _ = _split(*encode_infer_response(response, OutputEncoding()))
    assert doc["outputs"][0]["data"] == [0.10000000149011612, 3.0, 9.99999993922529e-09]
    assert np.array_equal(np.array(doc["outputs"][0]["data"], np.float32), response.outputs[0].data)


def test_encode_binary_with_per_output_choice_and_header_length():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[1, 2], [3, 4]], dtype=np.int64)
    s = np.array([b"hello", b""], dtype=object)
    response = _response(Tensor("A", DataType.FP32, a), Tensor("B", DataType.INT64, b), Tensor("S", DataType.BYTES, s))
    encoding = OutputEncoding(binary_default=True, binary={"B": False})
    pieces, json_length = encode_infer_response(response, encoding)
    assert json_length == len(bytes(pieces[0]))
    doc, tail = _split(pieces, json_length)
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert outputs["A"]["parameters"]["binary_data_size"] == a.nbytes and "data" not in outputs["A"]
    assert outputs["B"]["data"] == [1, 2, 3, 4] and "parameters" not in outputs["B"]
    expected_s = serialize_bytes_tensor(s)
    assert outputs["S"]["parameters"]["binary_data_size"] == len(expected_s)
    assert tail == a.tobytes() + expected_s  # in output order, no padding


def test_encode_non_contiguous_and_big_endian_outputs():
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    view = base[:, ::2]  # not contiguous
    big = np.array([1.5, -2.0], dtype=">f4")
    response = _response(Tensor("V", DataType.INT32, view), Tensor("E", DataType.FP32, big))
    pieces, json_length = encode_infer_response(response, OutputEncoding(binary={"V": True}))
    doc, tail = _split(pieces, json_length)
    assert tail == np.ascontiguousarray(view).tobytes()
    assert doc["outputs"][1]["data"] == [1.5, -2.0]


def test_encode_fp16_json_refused_binary_fine():
    half = np.array([1.0, 2.0], dtype=np.float16)
    with pytest.raises(InvalidArgumentError, match="H"):
        encode_infer_response(_response(Tensor("H", DataType.FP16, half)), OutputEncoding())
    pieces, json_length = encode_infer_response(_response(Tensor("H", DataType.FP16, half)),
                                                OutputEncoding(binary_default=True))
    assert _split(pieces, json_length)[1] == half.tobytes()


def test_encode_empty_binary_output():
    response = _response(Tensor("Z", DataType.FP32, np.zeros((0, 4), np.float32)))
    pieces, json_length = encode_infer_response(response, OutputEncoding(binary_default=True))
    doc, tail = _split(pieces, json_length)
    assert doc["outputs"][0]["shape"] == [0, 4]
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 0
    assert tail == b""


def test_round_trip_through_binary():
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    pieces, json_length = encode_infer_response(_response(Tensor("X", DataType.FP32, x)),
                                                OutputEncoding(binary_default=True))
    doc, tail = _split(pieces, json_length)
    out = doc["outputs"][0]
    body, length = binary_body([{"name": "X", "shape": out["shape"], "datatype": out["datatype"],
                                 "parameters": {"binary_data_size": out["parameters"]["binary_data_size"]}}], tail)
    request, _ = decode_infer_request(body, length, "m", -1)
    np.testing.assert_array_equal(request.inputs[0].data, x)


# -- BYTES serialization ------------------------------------------------------------------------------


def test_bytes_round_trip():
    items = [b"", b"a", "ünïcödé".encode(), bytes(range(256)), b"x" * 70000]
    array = np.array(items, dtype=object).reshape(5, 1)
    data = serialize_bytes_tensor(array)
    assert data[:4] == b"\0\0\0\0" and data[4:9] == b"\1\0\0\0a"
    assert len(data) == sum(4 + len(x) for x in items)
    back = deserialize_bytes_tensor(data, 5, "S")
    assert back.dtype == object and list(back) == items


def test_bytes_serialize_str_and_other_items():
    data = serialize_bytes_tensor(np.array(["é", 12, b"b"], dtype=object))
    assert list(deserialize_bytes_tensor(data, 3)) == ["é".encode(), b"12", b"b"]


def test_bytes_zero_elements():
    assert deserialize_bytes_tensor(b"", 0).shape == (0,)
    assert serialize_bytes_tensor(np.array([], dtype=object)) == b""


@pytest.mark.parametrize("data, count, needle", [
    (struct.pack("<I", 10) + b"abc", 1, "10"),                           # length past the end
    (struct.pack("<I", 1) + b"ab", 1, "BYTES"),                          # leftover bytes
    (struct.pack("<I", 1) + b"a", 2, "BYTES"),                           # fewer elements than count
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"b", 2, "9"),  # second element past the end
    (b"\1\0", 1, "BYTES"),                                               # half a length prefix
    (b"\0\0\0\0", 0, "BYTES"),                                           # data for zero elements
])
def test_bytes_errors_name_the_input(data, count, needle):
    with pytest.raises(InvalidArgumentError) as info:
        deserialize_bytes_tensor(data, count, "WORDS")
    assert "WORDS" in str(info.value) and needle in str(info.value)


def test_bytes_huge_count_is_refused_without_allocating():
    tracemalloc.start()
    started = time.monotonic()
    try:
        for count in (2**27, 2**40, 2**62):
            with pytest.raises(InvalidArgumentError, match="WORDS"):
                deserialize_bytes_tensor(struct.pack("<I", 1) + b"a", count, "WORDS")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    assert time.monotonic() - started < 1.0


def test_bytes_deserialize_copies_out_of_the_buffer():
    """Elements are ``bytes``: the request body can be released once decoded."""
    buffer = bytearray(struct.pack("<I", 2) + b"ab")
    out = deserialize_bytes_tensor(memoryview(buffer), 1)
    buffer[4:6] = b"zz"
    assert out[0] == b"ab" and isinstance(out[0], bytes)
