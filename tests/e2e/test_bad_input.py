"""Bad requests get a clear JSON error with the right status, and break nothing.

Raw HTTP (http.client and plain sockets) for what tritonclient refuses to send, tritonclient
for what it can express.  Every error must be ``{"error": "..."}`` with ``Content-Type:
application/json``, the status Triton uses (400 for bad input, 404 for unknown models, versions
and paths, 405 for a wrong method), and a message naming the offending input, model,
header or value.  The last test checks the server still answers a valid request correctly.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import struct
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_add_sub, write_model
from server import RunningServer

MAX_INPUT = 1 << 20  # --http-max-input-size for this module's server

INFER = "/v2/models/add_sub/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("bad_input_repo"))
    write_add_sub(repo)
    write_model(repo, "strings", identity_graph("BYTES", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
    """)
    write_model(repo, "nobatch", identity_graph("FP32", (4,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    """)
    write_model(repo, "ints_any", identity_graph("INT32", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    """)
    with RunningServer([repo], [f"--http-max-input-size={MAX_INPUT}"]) as s:
        yield s


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


# -- helpers ----------------------------------------------------------------------------------------


def request(server, method, path, body=None, headers=None):
    host, port = server.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def expect_error(result, status, *needles):
    """The response is ``status`` with a JSON ``{"error": ...}`` body mentioning every needle.

    The body is always JSON; Triton labels some of these answers ``text/plain`` (health, readiness,
    unknown paths, wrong methods), so either label is accepted.
    """
    got_status, headers, body = result
    assert got_status == status, (got_status, body)
    assert headers.get("Content-Type") in ("application/json", "text/plain"), headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"], doc
    assert isinstance(doc["error"], str) and doc["error"]
    for needle in needles:
        assert needle in doc["error"], f"{needle!r} not in {doc['error']!r}"
    return doc["error"]


def post_json(server, doc, path=INFER, headers=None):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return request(server, "POST", path, body, headers)


def ints(name="INPUT0", shape=(1, 16), data=None, datatype="INT32"):
    count = int(np.prod(shape))
    return {"name": name, "shape": list(shape), "datatype": datatype,
            "data": list(range(count)) if data is None else data}


def good_inputs():
    return [ints("INPUT0"), ints("INPUT1")]


def binary_request(inputs, tail: bytes, extra_tail: bytes = b""):
    """A binary-extension body: JSON header, then ``tail``; returns (body, headers)."""
    header = json.dumps({"inputs": inputs}).encode()
    return header + tail + extra_tail, {"Inference-Header-Content-Length": str(len(header))}


def peak_rss_kib(server) -> int:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def raw_exchange(server, data: bytes, timeout=5.0) -> bytes:
    """Send raw bytes on a fresh connection; return whatever comes back before the server closes."""
    host, port = server.url.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def parse_raw_response(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return status, headers, body


# -- the body is not an inference request ---------------------------------------------------------


def test_sanity_valid_request(server):
    status, _, body = post_json(server, {"inputs": good_inputs()})
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["data"] == [2 * i for i in range(16)]


@pytest.mark.parametrize("body", [b"{not json", b'{"inputs": [', b"\xff\xfe\x00garbage"],
                         ids=["syntax", "truncated", "binary"])
def test_malformed_json(server, body):
    expect_error(post_json(server, body), 400, "JSON")


def test_empty_body(server):
    expect_error(request(server, "POST", INFER, b""), 400)


@pytest.mark.parametrize("body", [b"[]", b'[{"inputs": []}]', b"42", b'"inputs"', b"null"])
def test_body_not_an_object(server, body):
    expect_error(post_json(server, body), 400)


def test_missing_inputs(server):
    expect_error(post_json(server, {"id": "x"}), 400, "inputs")
    expect_error(post_json(server, {"inputs": {"name": "INPUT0"}}), 400, "inputs")


@pytest.mark.parametrize("drop, needle", [("name", "name"), ("shape", "shape"), ("datatype", "datatype")])
def test_input_missing_a_field(server, drop, needle):
    bad = ints("INPUT0")
    del bad[drop]
    error = expect_error(post_json(server, {"inputs": [bad, ints("INPUT1")]}), 400, needle)
    if drop != "name":
        assert "INPUT0" in error


@pytest.mark.parametrize("shape", [[1, -16], [1, "16"], [True, 16], "1,16", [1.0, 16], None])
def test_input_bad_shape_value(server, shape):
    bad = ints("INPUT0")
    bad["shape"] = shape
    expect_error(post_json(server, {"inputs": [bad, ints("INPUT1")]}), 400, "INPUT0", "shape")


def test_unknown_datatype(server):
    expect_error(post_json(server, {"inputs": [ints("INPUT0", datatype="FP128"), ints("INPUT1")]}), 400, "INPUT0",
                 "datatype")


def test_non_string_id(server):
    expect_error(post_json(server, {"id": 7, "inputs": good_inputs()}), 400, "id")


def test_data_and_binary_size_both_given(server):
    bad = ints("INPUT0")
    bad["parameters"] = {"binary_data_size": 64}
    body, headers = binary_request([bad, ints("INPUT1")], b"\0" * 64)
    expect_error(request(server, "POST", INFER, body, headers), 400, "data", "binary_data_size")


def test_input_without_data(server):
    bad = ints("INPUT0")
    del bad["data"]
    expect_error(post_json(server, {"inputs": [bad, ints("INPUT1")]}), 400, "data", "binary_data_size")


# -- the request does not fit the model -----------------------------------------------------------


def test_unknown_input_name(server):
    expect_error(post_json(server, {"inputs": [*good_inputs(), ints("NOPE")]}), 400, "NOPE", "add_sub")


def test_missing_input(server):
    expect_error(post_json(server, {"inputs": [ints("INPUT0")]}), 400, "INPUT1", "add_sub")


def test_duplicate_input(server):
    expect_error(post_json(server, {"inputs": [ints("INPUT0"), ints("INPUT0"), ints("INPUT1")]}), 400, "INPUT0")


def test_wrong_datatype(server):
    doc = {"inputs": [ints("INPUT0", datatype="FP32"), ints("INPUT1")]}
    expect_error(post_json(server, doc), 400, "INPUT0", "FP32", "INT32")


@pytest.mark.parametrize("shape", [(1, 15), (1, 16, 1), (3,), (2, 8)])
def test_wrong_shape(server, shape):
    doc = {"inputs": [ints("INPUT0", shape=shape), ints("INPUT1")]}
    expect_error(post_json(server, doc), 400, "INPUT0")


def test_scalar_for_batching_model(server):
    doc = {"inputs": [ints("INPUT0", shape=(), data=[1]), ints("INPUT1")]}
    expect_error(post_json(server, doc), 400, "INPUT0")


def test_batch_larger_than_max_batch_size(server):
    doc = {"inputs": [ints("INPUT0", shape=(9, 16)), ints("INPUT1", shape=(9, 16))]}
    expect_error(post_json(server, doc), 400, "batch-size", "8", "add_sub")


def test_batch_size_zero(server):
    """Triton: 'inference request batch-size must be >= 1'.  Accepting it would let the dynamic batcher
    split a joined batch by the wrong row counts and hand one client another client's rows."""
    inputs = [{"name": n, "shape": [0, 16], "datatype": "INT32", "parameters": {"binary_data_size": 0}}
              for n in ("INPUT0", "INPUT1")]
    body, headers = binary_request(inputs, b"")
    expect_error(request(server, "POST", INFER, body, headers), 400, "batch-size", ">= 1", "add_sub")


def test_inputs_with_different_batch_sizes(server):
    doc = {"inputs": [ints("INPUT0", shape=(2, 16)), ints("INPUT1", shape=(3, 16))]}
    expect_error(post_json(server, doc), 400, "INPUT1", "batch")


@pytest.mark.parametrize("data", [list(range(15)), list(range(17)), [], [[1] * 16, [2] * 16]])
def test_data_count_does_not_match_shape(server, data):
    doc = {"inputs": [ints("INPUT0", data=data), ints("INPUT1")]}
    expect_error(post_json(server, doc), 400, "INPUT0")


@pytest.mark.parametrize("data", [[1, 2], [["a"], [2]], [None, "a"], [{"a": 1}, "b"]])
def test_bytes_input_needs_strings(server, data):
    doc = {"inputs": [{"name": "INPUT0", "shape": [2], "datatype": "BYTES", "data": data}]}
    expect_error(post_json(server, doc, "/v2/models/strings/infer"), 400, "INPUT0")


def test_float_for_int32_is_an_error(server):
    data = [0.5] * 16
    expect_error(post_json(server, {"inputs": [ints("INPUT0", data=data), ints("INPUT1")]}), 400, "INPUT0", "INT32")


@pytest.mark.parametrize("data", [["1"] * 16, [None] * 16, [{}] * 16])
def test_non_numbers_for_int32(server, data):
    expect_error(post_json(server, {"inputs": [ints("INPUT0", data=data), ints("INPUT1")]}), 400, "INPUT0")


def test_booleans_for_int32_are_an_error(server):
    data = [True, False] * 8
    expect_error(post_json(server, {"inputs": [ints("INPUT0", data=data), ints("INPUT1")]}), 400, "INPUT0", "INT32")


def test_booleans_for_fp32_are_an_error(server):
    doc = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [True, False, True, True]}]}
    expect_error(post_json(server, doc, "/v2/models/nobatch/infer"), 400, "INPUT0", "FP32")


def test_numbers_for_bool_are_an_error(server):
    doc = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "BOOL", "data": [1, 0, 1, 1]}]}
    expect_error(post_json(server, doc, "/v2/models/nobatch/infer"), 400, "INPUT0", "BOOL")


def test_empty_json_data_for_empty_int_tensor(server):
    doc = {"inputs": [{"name": "INPUT0", "shape": [0], "datatype": "INT32", "data": []}]}
    status, _, body = post_json(server, doc, "/v2/models/ints_any/infer")
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [0]


def test_fp16_as_json_is_refused(server):
    doc = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP16", "data": [1.0, 2.0, 3.0, 4.0]}]}
    expect_error(post_json(server, doc, "/v2/models/nobatch/infer"), 400, "INPUT0", "binary")


# -- the binary tensor extension --------------------------------------------------------------------


def _binary_inputs(size0=64, size1=64):
    return [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": size0}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": size1}},
    ]


def test_binary_sanity(server):
    body, headers = binary_request(_binary_inputs(), np.arange(32, dtype="<i4").tobytes())
    status, _, out = request(server, "POST", INFER, body, headers)
    assert status == 200, out
    assert json.loads(out)["outputs"][0]["data"] == [i + 16 + i for i in range(16)]


@pytest.mark.parametrize("value", ["100000", "99999999999999999999999999", "-5", "-1"])
def test_bad_inference_header_content_length(server, value):
    body, headers = binary_request(_binary_inputs(), b"\0" * 128)
    headers["Inference-Header-Content-Length"] = value
    expect_error(request(server, "POST", INFER, body, headers), 400, value)


@pytest.mark.parametrize("value", ["abc", "1e3", ""])
def test_non_numeric_inference_header_content_length(server, value):
    """Triton reads an unreadable length as 0, i.e. a raw binary request, which a two-input model refuses."""
    body, headers = binary_request(_binary_inputs(), b"\0" * 128)
    headers["Inference-Header-Content-Length"] = value
    error = expect_error(request(server, "POST", INFER, body, headers), 400)
    assert "Inference-Header-Content-Length" in error or "raw binary" in error, error


def test_header_length_cutting_the_json(server):
    body, headers = binary_request(_binary_inputs(), b"\0" * 128)
    headers["Inference-Header-Content-Length"] = "20"
    expect_error(request(server, "POST", INFER, body, headers), 400, "JSON")


def test_binary_data_size_past_end_of_body(server):
    body, headers = binary_request(_binary_inputs(64, 128), b"\0" * 128)
    expect_error(request(server, "POST", INFER, body, headers), 400, "INPUT1", "128")


def test_binary_data_size_not_matching_shape(server):
    body, headers = binary_request(_binary_inputs(60, 64), b"\0" * 124)
    expect_error(request(server, "POST", INFER, body, headers), 400, "INPUT0", "60", "64")


def test_binary_leftover_bytes(server):
    body, headers = binary_request(_binary_inputs(), b"\0" * 128, extra_tail=b"\0" * 7)
    expect_error(request(server, "POST", INFER, body, headers), 400, "additional")


@pytest.mark.parametrize("size", [-1, "64", 6.4, True])
def test_binary_data_size_not_an_integer(server, size):
    body, headers = binary_request(_binary_inputs(size, 64), b"\0" * 128)
    expect_error(request(server, "POST", INFER, body, headers), 400, "INPUT0", "binary_data_size")


def _bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


@pytest.mark.parametrize("count, tail, needle", [
    (1, struct.pack("<I", 100) + b"abc", "100"),                 # length past the end
    (2, _bytes_elements(b"ab", b"x" * 100) + b"\0\0", "BYTES"),  # leftover bytes after the elements
    (2, _bytes_elements(b"ab", b"cd")[:-1], "BYTES"),            # last element cut short
    (2, _bytes_elements(b"ab"), "BYTES"),                        # fewer elements than the shape says
    (1, b"\1\0", "BYTES"),                                       # not even a length prefix
], ids=["past-end", "leftover", "cut-short", "too-few", "no-length"])
def test_bad_binary_bytes_tensor(server, count, tail, needle):
    inputs = [{"name": "INPUT0", "shape": [count], "datatype": "BYTES",
               "parameters": {"binary_data_size": len(tail)}}]
    body, headers = binary_request(inputs, tail)
    expect_error(request(server, "POST", "/v2/models/strings/infer", body, headers), 400, "INPUT0", needle)


# -- sizes meant to exhaust the server ------------------------------------------------------------


def test_huge_declared_shapes_with_tiny_data(server):
    before = peak_rss_kib(server)
    started = time.monotonic()
    cases = [
        # JSON data, numeric
        (INFER, {"inputs": [ints("INPUT0", shape=(1, 2**40), data=[1] * 16), ints("INPUT1")]}, None),
        # binary data, numeric
        (INFER, None, binary_request(
            [{"name": "INPUT0", "shape": [1, 2**40], "datatype": "INT32", "parameters": {"binary_data_size": 64}},
             {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": 64}}],
            b"\0" * 128)),
        # JSON data, BYTES
        ("/v2/models/strings/infer", {"inputs": [{"name": "INPUT0", "shape": [2**40], "datatype": "BYTES",
                                                  "data": ["a"]}]}, None),
    ]
    # binary BYTES: the element count must be checked against the data before anything is allocated
    for count in (2**40, 2**27, 2**62):
        tail = _bytes_elements(b"ab")
        cases.append(("/v2/models/strings/infer", None, binary_request(
            [{"name": "INPUT0", "shape": [count], "datatype": "BYTES", "parameters": {"binary_data_size": len(tail)}}],
            tail)))
    for path, doc, binary in cases:
        if binary is None:
            result = post_json(server, doc, path)
        else:
            result = request(server, "POST", path, binary[0], binary[1])
        expect_error(result, 400, "INPUT0")
    assert time.monotonic() - started < 5.0
    grown_mib = (peak_rss_kib(server) - before) / 1024
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB answering tiny requests"


def test_shape_with_very_many_dims_is_refused_quickly(server):
    doc = {"inputs": [{"name": "INPUT0", "shape": [2] * 100_000, "datatype": "INT32", "data": [1]}, ints("INPUT1")]}
    started = time.monotonic()
    result = post_json(server, doc)
    elapsed = time.monotonic() - started
    expect_error(result, 400, "INPUT0")
    assert elapsed < 2.0, f"took {elapsed:.2f}s"  # the bug this guards against took ~19 s


def test_content_length_beyond_max_input_size(server):
    head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * MAX_INPUT}\r\n\r\n").encode()
    started = time.monotonic()
    raw = raw_exchange(server, head)
    assert time.monotonic() - started < 3.0, "the server waited for a body it must refuse"
    status, headers, body = parse_raw_response(raw)
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"]
    assert request(server, "GET", "/v2/health/live")[0] == 200


@pytest.mark.parametrize("declared", [MAX_INPUT + 1, 100 * MAX_INPUT])
def test_too_large_body_error_names_the_limit(server, declared):
    head = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n").encode()
    status, _, body = parse_raw_response(raw_exchange(server, head))
    assert status == 400
    error = json.loads(body)["error"]
    assert "maximum input size" in error and str(MAX_INPUT) in error


def test_gzip_bomb(server):
    body = gzip.compress(b"\0" * (8 * MAX_INPUT), compresslevel=9)
    assert len(body) < MAX_INPUT // 10
    before = peak_rss_kib(server)
    result = request(server, "POST", INFER, body, {"Content-Encoding": "gzip"})
    expect_error(result, 400, "maximum input size")
    assert (peak_rss_kib(server) - before) / 1024 < 50


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_bad_compressed_body(server, encoding):
    expect_error(request(server, "POST", INFER, b"this is not compressed", {"Content-Encoding": encoding}), 400,
                 encoding)


def test_truncated_gzip_body(server):
    body = gzip.compress(json.dumps({"inputs": good_inputs()}).encode())
    result = request(server, "POST", INFER, body[: len(body) // 2], {"Content-Encoding": "gzip"})
    assert result[0] == 400
    expect_error(result, 400)


def test_unknown_content_encoding(server):
    """Triton: 501 'Unsupported compression type'."""
    status, headers, body = request(server, "POST", INFER, b"{}", {"Content-Encoding": "br"})
    expect_error((status, headers, body), 501, "compression")


# -- names and paths --------------------------------------------------------------------------------


def test_unknown_model(server):
    for path in ("/v2/models/no_such_model/infer", "/v2/models/no_such_model", "/v2/models/no_such_model/config"):
        method = "POST" if path.endswith("infer") else "GET"
        body = json.dumps({"inputs": good_inputs()}).encode() if method == "POST" else None
        expect_error(request(server, method, path, body), 404, "unknown model", "no_such_model")


def test_unknown_model_ready_is_400(server):
    status, _, _ = request(server, "GET", "/v2/models/no_such_model/ready")
    assert status == 400


def test_unknown_version(server):
    expect_error(post_json(server, {"inputs": good_inputs()}, "/v2/models/add_sub/versions/7/infer"), 404,
                 "add_sub", "7")
    expect_error(request(server, "GET", "/v2/models/add_sub/versions/7"), 404, "add_sub", "7")
    assert request(server, "GET", "/v2/models/add_sub/versions/7/ready")[0] == 400


def test_unknown_requested_output(server):
    doc = {"inputs": good_inputs(), "outputs": [{"name": "OUTPUT0"}, {"name": "NOPE"}]}
    expect_error(post_json(server, doc), 400, "NOPE", "add_sub")


@pytest.mark.parametrize("outputs", [{"name": "OUTPUT0"}, [{"nom": "OUTPUT0"}], ["OUTPUT0"], [{"name": 3}]])
def test_malformed_requested_outputs(server, outputs):
    expect_error(post_json(server, {"inputs": good_inputs(), "outputs": outputs}), 400, "output")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_on_infer(server, method):
    expect_error(request(server, method, INFER), 405, "Method Not Allowed")


def test_post_on_health(server):
    expect_error(request(server, "POST", "/v2/health/ready", b""), 405)


@pytest.mark.parametrize("path", ["/nope", "/v2/nope", "/v2/models/add_sub/bogus", "/v2/models/add_sub/versions/x",
                                  "/v2/models/add_sub/versions/1/infer/extra", "/v3/models/add_sub/infer"])
def test_unknown_path(server, path):
    expect_error(request(server, "GET", path), 404, "Not Found")


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)),   # a TLS ClientHello
    b"GARBAGE GARBAGE GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"POST /v2/models/add_sub/infer HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
    b"POST /v2/models/add_sub/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n",
    b"GET /v2/health/live HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
], ids=["tls", "words", "version", "content-length", "chunk-size", "header"])
def test_malformed_http_then_next_connection_works(server, garbage):
    raw = raw_exchange(server, garbage)
    if raw:  # answering is optional, but if it answers it must be a 400 with a JSON error
        status, headers, body = parse_raw_response(raw)
        assert status == 400, raw
        assert "error" in json.loads(body)
    status, _, _ = request(server, "GET", "/v2/health/live")
    assert status == 200


def test_client_disconnect_mid_body(server):
    head = f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    host, port = server.url.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(head + b'{"inputs": [')
    assert request(server, "GET", "/v2/health/live")[0] == 200


def test_keep_alive_connection_survives_error_responses(server):
    """tritonclient reuses connections: an error answer must leave the connection usable."""
    host, port = server.url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        exchanges = [
            ("POST", INFER, b"{not json", 400),
            ("POST", INFER, json.dumps({"inputs": [ints("INPUT0")]}).encode(), 400),
            ("GET", "/v2/nope", None, 404),
            ("GET", INFER, None, 405),
            ("POST", "/v2/models/no_such_model/infer", b"{}", 404),
            ("POST", INFER, json.dumps({"inputs": good_inputs()}).encode(), 200),
        ]
        sockets = set()
        for method, path, body, status in exchanges:
            conn.request(method, path, body=body)
            sockets.add(id(conn.sock))
            r = conn.getresponse()
            r.read()
            assert r.status == status, (method, path, r.status)
            assert not r.will_close, f"server closed the connection after {method} {path}"
        assert len(sockets) == 1
    finally:
        conn.close()


def test_pipelined_requests_answered_in_order(server):
    good = json.dumps({"inputs": good_inputs()}).encode()
    requests = [
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{not json",
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(good) + good,
        b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    raw = raw_exchange(server, b"".join(requests))
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert statuses == [400, 200, 200, 404], raw[:2000]


# -- the same through tritonclient ------------------------------------------------------------------


def _tc_input(name, array, datatype=None):
    inp = httpclient.InferInput(name, list(array.shape), datatype or ("INT32" if array.dtype == np.int32 else "FP32"))
    inp.set_data_from_numpy(array)
    return inp


def _tc_infer(client, model="add_sub", inputs=None, **kwargs):
    a = np.ones((1, 16), np.int32)
    inputs = inputs if inputs is not None else [_tc_input("INPUT0", a), _tc_input("INPUT1", a)]
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs, **kwargs)
    return info.value


def test_tritonclient_unknown_model(client):
    e = _tc_infer(client, model="no_such_model")
    assert e.status() == "404"  # real Triton (2.51) answers NOT_FOUND
    assert "unknown model" in e.message() and "no_such_model" in e.message()


def test_tritonclient_unknown_version(client):
    e = _tc_infer(client, model_version="7")
    assert e.status() == "404" and "7" in e.message()


def test_tritonclient_unknown_input(client):
    a = np.ones((1, 16), np.int32)
    e = _tc_infer(client, inputs=[_tc_input("INPUT0", a), _tc_input("INPUT1", a), _tc_input("EXTRA", a)])
    assert e.status() == "400" and "EXTRA" in e.message()


def test_tritonclient_missing_input(client):
    e = _tc_infer(client, inputs=[_tc_input("INPUT0", np.ones((1, 16), np.int32))])
    assert e.status() == "400" and "INPUT1" in e.message()


def test_tritonclient_wrong_datatype(client):
    a = np.ones((1, 16), np.int32)
    e = _tc_infer(client, inputs=[_tc_input("INPUT0", a.astype(np.float32)), _tc_input("INPUT1", a)])
    assert e.status() == "400" and "INPUT0" in e.message() and "FP32" in e.message()


def test_tritonclient_wrong_shape(client):
    e = _tc_infer(client, inputs=[_tc_input("INPUT0", np.ones((1, 8), np.int32)),
                                  _tc_input("INPUT1", np.ones((1, 8), np.int32))])
    assert e.status() == "400" and "INPUT0" in e.message() and "shape" in e.message()


def test_tritonclient_batch_too_large(client):
    a = np.ones((9, 16), np.int32)
    e = _tc_infer(client, inputs=[_tc_input("INPUT0", a), _tc_input("INPUT1", a)])
    assert e.status() == "400" and "batch-size" in e.message()


def test_tritonclient_unknown_output(client):
    e = _tc_infer(client, outputs=[httpclient.InferRequestedOutput("NOPE")])
    assert e.status() == "400" and "NOPE" in e.message()


def test_tritonclient_metadata_of_unknown_model(client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert info.value.status() == "404" and "no_such_model" in info.value.message()
    assert not client.is_model_ready("no_such_model")


@pytest.mark.parametrize("prefix", [b"GET /v2/health/live?q=", b"GET /v2/health/live HTTP/1.1\r\nX-Big: "],
                         ids=["url", "header"])
def test_endless_request_head_is_refused(server, prefix):
    """16 MiB of URL or header: the server must answer 4xx or hang up long before the end."""
    host, port = server.url.split(":")
    refused = False
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        try:
            sock.sendall(prefix)
            chunk = b"a" * (1 << 20)
            for _ in range(16):
                sock.sendall(chunk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            refused = True
        if not refused:
            sock.settimeout(0.5)
            try:
                refused = sock.recv(64).startswith(b"HTTP/1.1 4")
            except (TimeoutError, ConnectionResetError):
                pass
    assert refused, "the server kept reading a 16 MiB request head"


# -- and after all of that ------------------------------------------------------------------------


def test_zz_server_still_serves_correctly(server, client):
    assert server.proc.poll() is None
    assert client.is_server_live() and client.is_server_ready()
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, dtype=np.int32)
    result = client.infer("add_sub", [_tc_input("INPUT0", a), _tc_input("INPUT1", b)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    words = np.array([b"hello", b"", "ünï".encode()], dtype=object)
    result = client.infer("strings", [_tc_input("INPUT0", words, "BYTES")])
    assert list(result.as_numpy("OUTPUT0")) == list(words)
    status, _, body = post_json(server, {"inputs": good_inputs()})
    assert status == 200 and json.loads(body)["outputs"][1]["data"] == [0] * 16
    log = server.output()
    assert "MemoryError" not in log
    assert "Traceback" not in log  # no request of this module reached the 500 handler
