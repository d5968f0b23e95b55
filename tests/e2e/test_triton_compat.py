"""What NVIDIA's example clients, Python-backend examples and QA tests rely on (issue 30), through a real
server and tritonclient: BLS with a ``bytes`` model name, BF16 through DLPack (torch), cancelling a unary
gRPC call, the ``triton_grpc_error`` stream header, request rescheduling (``iterative_sequence``), and the
texts and validations QA tests check.  Where Triton 2.51 supports the behaviour,
``test_against_real_triton.py`` compares it with the real server too."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import write_python_model
from server import RunningServer

ADD_SUB = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return out
'''
ADD_SUB_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
TEXT_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_{type} dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    {extra}
"""

#: NVIDIA's BLS example: the model to call is named by a BYTES input, so its name arrives as ``bytes``.
BLS_BYTES = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            name = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()[0]
            x = np.array([1, 2, 3, 4], np.float32)
            call = pb_utils.InferenceRequest(model_name=name, requested_output_names=[b"OUTPUT1"],
                                             inputs=[pb_utils.Tensor(b"INPUT0", x), pb_utils.Tensor(b"INPUT1", x / 2)])
            response = call.exec()
            seen = {"error": response.error().message() if response.has_error() else None,
                    "outputs": {t.name(): t.as_numpy().tolist() for t in response.output_tensors()},
                    "ready": pb_utils.is_model_ready(name, b"1"), "tensor_name": pb_utils.Tensor(b"T", x).name()}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen).encode()], dtype=np.object_))]))
        return out
'''

#: BF16 in and out through torch, by every DLPack route pb_utils has.
TORCH_BF16 = '''
import torch
import torch.utils.dlpack
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            tensor = pb_utils.get_input_tensor_by_name(r, "INPUT0")
            a = torch.utils.dlpack.from_dlpack(tensor.to_dlpack())   # a capsule
            b = torch.from_dlpack(tensor)                            # __dlpack__
            assert a.dtype == b.dtype == torch.bfloat16, (a.dtype, b.dtype)
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor.from_dlpack("DOUBLED", a * 2),                                   # __dlpack__
                pb_utils.Tensor.from_dlpack("PLUS_ONE", torch.utils.dlpack.to_dlpack(b + 1)),   # a capsule
            ]))
        return out
'''
TORCH_BF16_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_BF16 dims: [ 4 ] } ]
    output [ { name: "DOUBLED" data_type: TYPE_BF16 dims: [ 4 ] }, { name: "PLUS_ONE" data_type: TYPE_BF16 dims: [ 4 ] } ]
"""

#: Input 0: waits up to 20 s for ``request.is_cancelled()``; input 1: answers what the last wait saw.
CANCEL_WATCH = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.last = "none"

    def execute(self, requests):
        out = []
        for r in requests:
            if int(r.inputs()[0].as_numpy()[0]) == 0:
                self.last = "waiting"
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not r.is_cancelled():
                    time.sleep(0.01)
                self.last = "cancelled" if r.is_cancelled() else "never cancelled"
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([self.last.encode()], dtype=np.object_))]))
        return out
'''

#: Decoupled: input 1 sends an error response and then a good one; input 2 two good ones; 3 raises.
DECOUPLED_ERRORS = '''
import numpy as np
import triton_python_backend_utils as pb_utils

def good(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([str(value).encode()], dtype=np.object_))])

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            mode = int(r.inputs()[0].as_numpy()[0])
            sender = r.get_response_sender()
            if mode == 3:
                raise ValueError("execute gave up")
            if mode == 1:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("not this one", pb_utils.TritonError.INVALID_ARG)))
            sender.send(good(mode))
            sender.send(good(mode), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("compat"))
    write_python_model(repo, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    write_python_model(repo, "bls_bytes", BLS_BYTES, TEXT_CONFIG.replace("{type}", "STRING").replace("{extra}", ""))
    write_python_model(repo, "torch_bf16", TORCH_BF16, TORCH_BF16_CONFIG)
    write_python_model(repo, "cancel_watch", CANCEL_WATCH, TEXT_CONFIG.replace("{type}", "INT32").replace(
        "{extra}", "instance_group [ { count: 1 kind: KIND_CPU } ]"))
    write_python_model(repo, "decoupled_errors", DECOUPLED_ERRORS, TEXT_CONFIG.replace("{type}", "INT32").replace(
        "{extra}", "model_transaction_policy { decoupled: true }"))
    with RunningServer([repo], ["--allow-client-shm=true"], timeout=120) as s:
        yield s


@pytest.fixture()
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


def int_input(value: int, name: str = "INPUT0") -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(name, [1], "INT32")
    tensor.set_data_from_numpy(np.array([value], np.int32))
    return [tensor]


# -- 2: BLS with a bytes model name ----------------------------------------------------------------


def test_bls_takes_bytes_where_it_takes_names(client: grpcclient.InferenceServerClient) -> None:
    """NVIDIA's BLS example passes the name it decoded from a BYTES tensor: ``bytes``, used as UTF-8 text."""
    tensor = grpcclient.InferInput("INPUT0", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"add_sub"], dtype=np.object_))
    seen = json.loads(client.infer("bls_bytes", [tensor]).as_numpy("OUT")[0])
    assert seen == {"error": None, "outputs": {"OUTPUT1": [0.5, 1.0, 1.5, 2.0]}, "ready": True, "tensor_name": "T"}
    tensor.set_data_from_numpy(np.array([b"no_such_model"], dtype=np.object_))
    seen = json.loads(client.infer("bls_bytes", [tensor]).as_numpy("OUT")[0])
    assert "no_such_model" in seen["error"] and "b'" not in seen["error"] and seen["ready"] is False


# -- 3: BF16 through DLPack ---------------------------------------------------------------------------


def test_bf16_through_dlpack_and_torch(client: grpcclient.InferenceServerClient) -> None:
    x = np.array([1.5, -2, 3.25, 100], dtype=ml_dtypes.bfloat16)
    tensor = grpcclient.InferInput("INPUT0", [4], "BF16")
    tensor.set_data_from_numpy(x)
    result = client.infer("torch_bf16", [tensor])
    raw = result.get_response().raw_output_contents
    assert [np.frombuffer(r, ml_dtypes.bfloat16).tolist() for r in raw] == [(x * 2).tolist(), (x + 1).tolist()]
    assert [o.datatype for o in result.get_response().outputs] == ["BF16", "BF16"]


def test_bf16_outputs_over_http(server: RunningServer) -> None:
    x = np.array([0.5, 8, -1, 2], dtype=ml_dtypes.bfloat16)
    c = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("INPUT0", [4], "BF16")
    tensor.set_data_from_numpy(x, binary_data=True)
    result = c.infer("torch_bf16", [tensor], outputs=[httpclient.InferRequestedOutput("DOUBLED", binary_data=True)])
    assert result.as_numpy("DOUBLED").dtype == ml_dtypes.bfloat16
    assert result.as_numpy("DOUBLED").tolist() == (x * 2).tolist()


# -- 4: cancelling a unary gRPC call ------------------------------------------------------------------


def test_unary_grpc_deadline_and_cancel_reach_is_cancelled(client: grpcclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer("cancel_watch", int_input(0), client_timeout=1.0)
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    started = time.monotonic()
    assert client.infer("cancel_watch", int_input(1)).as_numpy("OUT").tolist() == [b"cancelled"]
    assert time.monotonic() - started < 15  # the model stopped waiting when told, not after its 20 s

    errors: queue.Queue[Any] = queue.Queue()
    call = client.async_infer("cancel_watch", int_input(0), callback=lambda result, error: errors.put(error))
    time.sleep(1.0)
    call.cancel()
    assert errors.get(timeout=30).status() == "StatusCode.CANCELLED"
    assert client.infer("cancel_watch", int_input(1)).as_numpy("OUT").tolist() == [b"cancelled"]


# -- 5: the triton_grpc_error header -------------------------------------------------------------------


def stream(server: RunningServer, calls: list[tuple[str, list[Any]]], error_header: bool) -> list[Any]:
    """What one stream carries per call, each sent once the previous one's answers stopped."""
    results: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.start_stream(callback=lambda result, error: results.put((result, error)),
                   headers={"triton_grpc_error": "true"} if error_header else None)
    seen: list[Any] = []
    try:
        for model, inputs in calls:
            try:
                c.async_stream_infer(model, inputs)
            except InferenceServerException:
                seen.append("closed")
                continue
            got = []
            while True:
                try:
                    result, error = results.get(timeout=1.5)
                except queue.Empty:
                    break
                got.append(("error", error.status(), error.message()) if error is not None
                           else result.as_numpy("OUT").tolist() if result.as_numpy("OUT") is not None else "empty")
            seen.append(got)
        return seen
    finally:
        c.stop_stream()
        c.close()


def test_stream_errors_in_band_without_the_header(server: RunningServer) -> None:
    seen = stream(server, [("decoupled_errors", int_input(1)), ("decoupled_errors", int_input(2))], False)
    assert seen == [[("error", None, "not this one"), [b"1"], [b"1"]], [[b"2"], [b"2"]]]


def test_triton_grpc_error_header_ends_the_stream_with_the_status(server: RunningServer) -> None:
    """An error response ends the stream with its gRPC status, even when the model sends more after it (real
    Triton 2.51 crashes there); a request refused before it runs is answered in-band and the stream goes on."""
    refused = ("add_sub", int_input(1))  # wrong input: refused by validation
    seen = stream(server, [refused, ("decoupled_errors", int_input(2)), ("decoupled_errors", int_input(1)),
                           ("decoupled_errors", int_input(2))], True)
    assert seen[0][0][:2] == ("error", None) and "INPUT0" in seen[0][0][2]
    assert seen[1:] == [[[b"2"], [b"2"]], [("error", "StatusCode.INVALID_ARGUMENT", "not this one")], "closed"]
    seen = stream(server, [("decoupled_errors", int_input(3)), ("decoupled_errors", int_input(2))], True)
    assert seen[0][0][:2] == ("error", "StatusCode.INTERNAL") and "execute gave up" in seen[0][0][2]
    assert seen[1] == "closed"
    assert stream(server, [("decoupled_errors", int_input(2))], True) == [[[b"2"], [b"2"]]]  # the server is fine


# -- 9: texts and validations QA tests check ---------------------------------------------------------


def test_version_strings_read_as_triton_reads_them(server: RunningServer,
                                                   client: grpcclient.InferenceServerClient) -> None:
    """gRPC reads a version as C's strtol does (leading integer; not negative; must fit a long); HTTP URLs take
    digits only, and a number too big for a long is the same error."""
    def outcome(call: Any) -> Any:
        try:
            return call()
        except InferenceServerException as e:
            return e.status(), e.message()

    stol = ("StatusCode.INVALID_ARGUMENT", "failed to get model version from specified version string '{}' (details: "
            "stol), version should be an integral value > 0")
    for text in ("abc", "", "99999999999999999999"):
        for call in (client.get_model_metadata, client.is_model_ready, client.get_model_config):
            got = outcome(lambda: call("add_sub", text))
            assert got == (stol[0], stol[1].format(text)) if text else got not in (None, False), (call, text, got)
    assert outcome(lambda: client.is_model_ready("add_sub", "-1")) == (
        "StatusCode.INVALID_ARGUMENT", "invalid model version specified '-1' , version should be an integral value > 0")
    for text in (" 1", "1a", "01", "+1"):
        assert client.is_model_ready("add_sub", text) is True
    assert client.is_model_ready("add_sub", "2") is False
    with urllib.request.urlopen(f"http://{server.url}/v2/models/add_sub/versions/01") as r:
        assert r.status == 200
    for path, code in (("/v2/models/add_sub/versions/1a", 404),
                       ("/v2/models/add_sub/versions/99999999999999999999", 400)):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{server.url}{path}")
        assert info.value.code == code
        info.value.close()


def generate(server: RunningServer, model: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://{server.url}/v2/models/{model}/generate", data=body, method="POST")
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_generate_checks(server: RunningServer) -> None:
    """Duplicate input keys are refused (the JSON object would keep the last); a string input takes strings
    only, a numeric one numbers only; ``parameters`` must be an object of scalars; each error names what is wrong,
    in Triton's words first."""
    ones = '"INPUT1": [1, 1, 1, 1]'
    assert generate(server, "add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT0": [0, 0, 0, 0], ' + ones.encode() + b"}") == (
        400, {"error": "[request id: <id_unknown>] input 'INPUT0' already exists in request"})
    status, body = generate(server, "add_sub",
                            b'{"INPUT0": [1, 2, 3, 4], ' + ones.encode() + b', "parameters": {"a": 1, "a": 2}}')
    assert status == 200 and body["OUTPUT0"] == [2.0, 3.0, 4.0, 5.0]
    for doc, head in (
            ('{"INPUT0": ["1", 2, 3, 4], %s}' % ones, "Unable to parse 'data': input 'INPUT0' is FP32"),
            ('{"INPUT0": [true, 2, 3, 4], %s}' % ones, "Unable to parse 'data': input 'INPUT0' is FP32"),
            ('{"INPUT0": [1, 2, 3, 4], %s, "parameters": [1]}' % ones, "Expected JSON object for keyword: 'parameters'"),
            ('{"INPUT0": [1, 2, 3, 4], %s, "parameters": {"n": [1]}}' % ones,
             "Converting keyword: 'parameters': parameter 'n' has invalid type"),
            ('{"INPUT0": [1, 2, 3, 4], %s, "n": [1]}' % ones, "parameter 'n' has invalid type"),
            ('{"INPUT1": [1, 1, 1, 1]}', "[request id: <id_unknown>] expected 2 inputs but got 1 inputs")):
        status, body = generate(server, "add_sub", doc.encode())
        assert status == 400 and body["error"].startswith(head), (doc, body)
    for value in ("5", "[\"a\", 5]", "null", "{\"a\": \"b\"}"):
        status, body = generate(server, "bls_bytes", b'{"INPUT0": %s}' % value.encode())
        assert status == 400 and body["error"].startswith("Unable to parse JSON bytes array: input 'INPUT0' is BYTES")


# -- 8: iterative sequences and request rescheduling ----------------------------------------------------

#: Runs each request as many times as its input says (rescheduling it, None as its answer meanwhile), then
#: answers its flags per execution and how many requests shared each of its executions.  Input 0 answers a
#: rescheduled request (an error); a negative input raises after rescheduling.
ITERATE = '''
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.seen = {}

    def execute(self, requests):
        time.sleep(0.2)
        real = [r for r in requests if r.correlation_id() != 0]  # (0: an empty slot's null request)
        out = []
        for r in requests:
            key = r.correlation_id()
            n = int(r.inputs()[0].as_numpy().flat[0])
            seen = self.seen.setdefault(key, {"id": key, "flags": [], "batch": []})
            seen["flags"].append(r.flags())
            seen["batch"].append(len(real))
            answer = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([[json.dumps(seen).encode()]], dtype=np.object_))])
            if key != 0 and (n <= 0 or len(seen["flags"]) < n):
                r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                if n < 0:
                    raise ValueError("gave up after rescheduling")
                out.append(answer if n == 0 else None)
            else:
                self.seen.pop(key)
                out.append(answer)
        return out
'''
ITERATE_CONFIG = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    sequence_batching { iterative_sequence: true }
"""

#: Decoupled, one slot: input 0 sends a response and reschedules each execution until its client cancels;
#: input n > 0 counts down from n - 1 (a response per execution); -1 answers what the last cancelled one saw.
ITERATE_DECOUPLED = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def value(v):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([str(v).encode()], dtype=np.object_))])

class TritonPythonModel:
    def initialize(self, args):
        self.left = {}
        self.last = "none"

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            n = int(r.inputs()[0].as_numpy()[0])
            if n == -1:
                sender.send(value(self.last), flags=FINAL)
            elif n == 0:
                if r.is_cancelled():
                    self.last = "cancelled"
                    sender.send(flags=FINAL)
                else:
                    time.sleep(0.05)
                    r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                    sender.send(value("tick"))
            else:
                left = self.left.pop(r.correlation_id(), n) - 1
                if left > 0:
                    self.left[r.correlation_id()] = left
                    r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                    sender.send(value(left))
                else:
                    sender.send(value(left), flags=FINAL)
        return None
'''

#: Reschedules without iterative sequence batching: refused.
RESCHEDULES = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
        return [None for _ in requests]
'''


@pytest.fixture(scope="module")
def iterative(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("iterative"))
    write_python_model(repo, "iterate", ITERATE, ITERATE_CONFIG)
    write_python_model(repo, "iterate_decoupled", ITERATE_DECOUPLED, TEXT_CONFIG.replace("{type}", "INT32").replace(
        "{extra}", "model_transaction_policy { decoupled: true } sequence_batching { iterative_sequence: true }"))
    write_python_model(repo, "reschedules", RESCHEDULES, TEXT_CONFIG.replace("{type}", "INT32").replace("{extra}", ""))
    with RunningServer([repo], [], timeout=120) as s:
        yield s


def iterations(c: grpcclient.InferenceServerClient, n: int) -> dict[str, Any]:
    tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.array([[n]], np.int32))
    return json.loads(c.infer("iterate", [tensor], client_timeout=60).as_numpy("OUT")[0][0])


def test_a_request_runs_until_the_model_answers_it(iterative: RunningServer) -> None:
    """Each request is a sequence of its own (an id, START first), run again while the model reschedules it,
    with flags 0; its answer ends the sequence."""
    c = grpcclient.InferenceServerClient(iterative.grpc_url)
    first, second = iterations(c, 3), iterations(c, 1)
    assert first["flags"] == [1, 0, 0] and second["flags"] == [1]
    assert first["id"] != second["id"] and 0 not in (first["id"], second["id"])


def test_rescheduled_requests_join_the_batches_of_other_sequences(iterative: RunningServer) -> None:
    c = grpcclient.InferenceServerClient(iterative.grpc_url)
    done: queue.Queue[Any] = queue.Queue()
    for n in (4, 4, 4):
        tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT32")
        tensor.set_data_from_numpy(np.array([[n]], np.int32))
        c.async_infer("iterate", [tensor], lambda result, error: done.put(error or result.as_numpy("OUT")[0][0]))
    answers = [json.loads(done.get(timeout=60)) for _ in range(3)]
    assert [a["flags"] for a in answers] == [[1, 0, 0, 0]] * 3
    assert max(max(a["batch"]) for a in answers) >= 2  # executions shared by several sequences


def test_rescheduling_faults_answer_errors_and_release_the_request(iterative: RunningServer) -> None:
    c = grpcclient.InferenceServerClient(iterative.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        iterations(c, 0)  # answered although rescheduled
    assert info.value.status() == "StatusCode.INTERNAL" and "Expected a None object in the execute function return " \
        "list for reschduled request" in info.value.message()
    with pytest.raises(InferenceServerException, match="gave up after rescheduling"):
        iterations(c, -1)
    assert iterations(c, 2)["flags"] == [1, 0]  # nothing of them keeps running: a later request runs alone
    assert iterations(c, 1)["batch"] == [1]


def test_decoupled_iterative_stream_and_its_cancellation(iterative: RunningServer) -> None:
    """Responses come from each execution on the one stream; a request whose client cancels is not run again
    (as Triton, which answers it CANCELLED), and its sequence's slot, the only one, is free again."""
    results: queue.Queue[Any] = queue.Queue()
    c = grpcclient.InferenceServerClient(iterative.grpc_url)
    c.start_stream(callback=lambda result, error: results.put(error or result.as_numpy("OUT").tolist()))
    c.async_stream_infer("iterate_decoupled", int_input(3))
    assert [results.get(timeout=30) for _ in range(3)] == [[b"2"], [b"1"], [b"0"]]
    c.async_stream_infer("iterate_decoupled", int_input(0))
    assert results.get(timeout=30) == [b"tick"] and results.get(timeout=30) == [b"tick"]
    c.stop_stream(cancel_requests=True)
    other = grpcclient.InferenceServerClient(iterative.grpc_url)
    answers: queue.Queue[Any] = queue.Queue()
    other.start_stream(callback=lambda result, error: answers.put(error or result.as_numpy("OUT").tolist()))
    try:
        other.async_stream_infer("iterate_decoupled", int_input(-1))
        # (seen by the model only if the cancellation came after its last execution was sent, before it ran)
        assert answers.get(timeout=30) in ([b"none"], [b"cancelled"])
    finally:
        other.stop_stream()


def test_rescheduling_needs_iterative_sequence_batching(iterative: RunningServer) -> None:
    """Triton logs this refusal and leaves the client waiting; here the client gets it."""
    c = grpcclient.InferenceServerClient(iterative.grpc_url)
    with pytest.raises(InferenceServerException) as info:
        c.infer("reschedules", int_input(1), client_timeout=30)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert info.value.message() == ("Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the "
                                    "model is not configured to handle such a flag.")
