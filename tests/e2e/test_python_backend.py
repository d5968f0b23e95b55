"""The Python backend end to end: Triton's model.py files served unchanged, each instance in its own process."""

from __future__ import annotations

import os
import queue
import signal
import textwrap
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import copy_examples, write_model
from server import RunningServer

IDENTITY = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.args = args

    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for tensor in request.inputs():
                outputs.append(pb_utils.Tensor(tensor.name().replace("INPUT", "OUTPUT"), tensor.as_numpy()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
'''

STRINGS = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            out = np.array([b.upper()[::-1] for b in text.reshape(-1)], dtype=np.object_).reshape(text.shape)
            lengths = np.array([len(b) for b in text.reshape(-1)], dtype=np.int32).reshape(text.shape)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("REVERSED", out),
                                                         pb_utils.Tensor("LENGTH", lengths)]))
        return responses
'''

BLS = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.config = json.loads(args["model_config"])
        self.args = args

    def execute(self, requests):
        responses = []
        for request in requests:
            target = json.loads(request.parameters()).get("target", "simple")
            call = pb_utils.InferenceRequest(
                model_name=target,
                inputs=[pb_utils.get_input_tensor_by_name(request, "INPUT0"),
                        pb_utils.get_input_tensor_by_name(request, "INPUT1")],
                requested_output_names=["OUTPUT0", "OUTPUT1"])
            result = call.exec()
            if result.has_error():
                raise pb_utils.TritonModelException(result.error().message())
            responses.append(pb_utils.InferenceResponse([
                pb_utils.get_output_tensor_by_name(result, "OUTPUT0"),
                pb_utils.get_output_tensor_by_name(result, "OUTPUT1"),
                pb_utils.Tensor("ARGS", np.array([json.dumps(self.args).encode()], dtype=np.object_)),
            ]))
        return responses
'''

ASYNC_BLS = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            y = pb_utils.Tensor("INPUT1", x.as_numpy())
            calls = [pb_utils.InferenceRequest(model_name="simple", inputs=[x, y],
                                               requested_output_names=["OUTPUT0"]).async_exec() for _ in range(3)]
            results = await asyncio.gather(*calls)
            total = sum(pb_utils.get_output_tensor_by_name(r, "OUTPUT0").as_numpy() for r in results)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total)]))
        return responses
'''

REPEAT = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.respond, args=(request,)).start()
        return None

    def respond(self, request):
        sender = request.get_response_sender()
        count = int(pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()[0])
        for i in range(count):
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], dtype=np.int32))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

#: Streams COUNT responses of SIZE floats each (value i in response i), from two threads at once for the
#: arena's sake; its last response is sent with the final flag.
BIG_STREAM = '''
import threading
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            threading.Thread(target=self.respond, args=(request,)).start()
        return None

    def respond(self, request):
        sender = request.get_response_sender()
        count, size = (int(v) for v in pb_utils.get_input_tensor_by_name(request, "IN").as_numpy())
        def send(values):
            for i in values:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(size, i, np.float32))]))
        threads = [threading.Thread(target=send, args=(range(k, count - 1, 2),)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.full(size, count - 1, np.float32))]),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

FAULTY = '''
import json
import os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.marker = params["marker"]["string_value"]
        with open(self.marker + ".pid", "w") as f:
            f.write(str(os.getpid()))

    def execute(self, requests):
        responses = []
        for request in requests:
            x = int(pb_utils.get_input_tensor_by_name(request, "X").as_numpy()[0])
            if x == 1:
                raise RuntimeError("boom in execute")
            if x == 2:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("value 2 is refused")))
                continue
            if x == 3:
                os.kill(os.getpid(), 9)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", np.array([x * 10], dtype=np.int32))]))
        return responses

    def finalize(self):
        with open(self.marker + ".finalized", "w") as f:
            f.write("done")
'''

INITFAIL = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("boom in initialize")

    def execute(self, requests):
        return []
'''

AUTOCOMPLETE = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "INPUT0", "data_type": "TYPE_INT64", "dims": [3]})
        config.add_output({"name": "OUTPUT0", "data_type": "TYPE_INT64", "dims": [3]})
        config.set_max_batch_size(4)
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() * 2)])
                for r in requests]
'''


def tensor(name: str, dtype: str, shape: str) -> str:
    return f'{{ name: "{name}", data_type: {dtype}, dims: [ {shape} ] }}'


def python_model(repo: str, name: str, source: str, inputs: list[str], outputs: list[str], extra: str = "",
                 max_batch_size: int = 0) -> None:
    config = (f'backend: "python"\nmax_batch_size: {max_batch_size}\ninput [ {", ".join(inputs)} ]\n'
              f'output [ {", ".join(outputs)} ]\n{extra}')
    model_dir = write_model(repo, name, config=config)
    with open(os.path.join(model_dir, "1", "model.py"), "w") as f:
        f.write(textwrap.dedent(source))


#: Passes its input through another Python model by BLS (tensors cross both ways out of band).
BLS_IDENTITY = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            result = pb_utils.InferenceRequest(model_name="identity", inputs=request.inputs(),
                                               requested_output_names=["OUTPUT0"]).exec()
            out.append(pb_utils.InferenceResponse([pb_utils.get_output_tensor_by_name(result, "OUTPUT0")]))
        return out
'''

#: Many big BLS calls at once (more than one shared-memory arena region holds, so some go inline), each with
#: its own tensor, and big strings: how many came back equal to what was sent.
BLS_MANY = '''
import asyncio
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    async def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            sent = [(x + i).reshape(1, -1) for i in range(6)]  # identity batches: [1, n]
            calls = [pb_utils.InferenceRequest(model_name="identity", inputs=[pb_utils.Tensor("INPUT0", a)],
                                               requested_output_names=["OUTPUT0"]).async_exec() for a in sent]
            results = await asyncio.gather(*calls)
            same = sum(np.array_equal(pb_utils.get_output_tensor_by_name(r, "OUTPUT0").as_numpy(), a)
                       for r, a in zip(results, sent))
            text = np.array([b"word%05d-" % i * 4 for i in range(2000)], dtype=np.object_)  # 80 KB of strings
            result = pb_utils.InferenceRequest(model_name="strings", inputs=[pb_utils.Tensor("TEXT", text)],
                                               requested_output_names=["REVERSED"]).exec()
            reversed_ = pb_utils.get_output_tensor_by_name(result, "REVERSED").as_numpy()
            same += list(reversed_) == [t.upper()[::-1] for t in text]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SAME", np.array([same], np.int32))]))
        return responses
'''

#: Outputs its input as is, a view of part of it, and a new array; and whether the server's request bodies
#: are mapped into this process (``memfd:tritium-body``), which they are once a big HTTP body was read in place.
IN_PLACE = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            with open("/proc/self/maps") as f:
                mapped = "memfd:tritium-body" in f.read()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("SAME", x), pb_utils.Tensor("TAIL", x.reshape(-1)[1:]),
                pb_utils.Tensor("DOUBLE", x * 2), pb_utils.Tensor("MAPPED", np.array([mapped]))]))
        return out
'''


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("pyrepo"))
    copy_examples(path, "simple", "add_sub_python")
    python_model(path, "identity", IDENTITY, [tensor("INPUT0", "TYPE_FP32", "-1")], [tensor("OUTPUT0", "TYPE_FP32", "-1")],
                 "dynamic_batching { }\ninstance_group [ { kind: KIND_CPU, count: 2 } ]", max_batch_size=8)
    python_model(path, "strings", STRINGS, [tensor("TEXT", "TYPE_STRING", "-1")],
                 [tensor("REVERSED", "TYPE_STRING", "-1"), tensor("LENGTH", "TYPE_INT32", "-1")])
    int16 = [tensor("INPUT0", "TYPE_INT32", "16"), tensor("INPUT1", "TYPE_INT32", "16")]
    python_model(path, "bls", BLS, int16, [tensor("OUTPUT0", "TYPE_INT32", "16"), tensor("OUTPUT1", "TYPE_INT32", "16"),
                                           tensor("ARGS", "TYPE_STRING", "1")], max_batch_size=8)
    python_model(path, "bls_identity", BLS_IDENTITY, [tensor("INPUT0", "TYPE_FP32", "-1")],
                 [tensor("OUTPUT0", "TYPE_FP32", "-1")], max_batch_size=8)
    python_model(path, "bls_many", BLS_MANY, [tensor("INPUT0", "TYPE_FP32", "-1")], [tensor("SAME", "TYPE_INT32", "1")])
    python_model(path, "in_place", IN_PLACE, [tensor("INPUT0", "TYPE_FP32", "-1")],
                 [tensor("SAME", "TYPE_FP32", "-1"), tensor("TAIL", "TYPE_FP32", "-1"),
                  tensor("DOUBLE", "TYPE_FP32", "-1"), tensor("MAPPED", "TYPE_BOOL", "1")])
    python_model(path, "async_bls", ASYNC_BLS, [tensor("INPUT0", "TYPE_INT32", "16")],
                 [tensor("OUTPUT0", "TYPE_INT32", "16")], max_batch_size=8)
    python_model(path, "big_stream", BIG_STREAM, [tensor("IN", "TYPE_INT32", "2")], [tensor("OUT", "TYPE_FP32", "-1")],
                 "model_transaction_policy { decoupled: true }")
    python_model(path, "repeat", REPEAT, [tensor("IN", "TYPE_INT32", "1")], [tensor("OUT", "TYPE_INT32", "1")],
                 "model_transaction_policy { decoupled: true }")
    marker = os.path.join(path, "faulty_marker")
    python_model(path, "faulty", FAULTY, [tensor("X", "TYPE_INT32", "1")], [tensor("Y", "TYPE_INT32", "1")],
                 f'parameters {{ key: "marker" value: {{ string_value: "{marker}" }} }}')
    python_model(path, "initfail", INITFAIL, [tensor("X", "TYPE_INT32", "1")], [tensor("Y", "TYPE_INT32", "1")])
    os.makedirs(os.path.join(path, "autocfg", "1"))
    with open(os.path.join(path, "autocfg", "config.pbtxt"), "w") as f:
        f.write('backend: "python"\n')
    with open(os.path.join(path, "autocfg", "1", "model.py"), "w") as f:
        f.write(AUTOCOMPLETE)
    return path


@pytest.fixture(scope="module")
def server(repo: str):  # type: ignore[no-untyped-def]
    with RunningServer([repo], ["--allow-metrics=false", "--exit-on-error=false"]) as s:
        client = httpclient.InferenceServerClient(s.url)
        deadline = time.monotonic() + 60
        while not client.is_model_ready("faulty") and time.monotonic() < deadline:
            time.sleep(0.1)
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url, concurrency=8)


def infer_input(name: str, array: np.ndarray, dtype: str) -> httpclient.InferInput:
    i = httpclient.InferInput(name, list(array.shape), dtype)
    i.set_data_from_numpy(array)
    return i


def test_add_sub_example(client: httpclient.InferenceServerClient) -> None:
    a = np.random.rand(3, 4).astype(np.float32)
    b = np.random.rand(3, 4).astype(np.float32)
    result = client.infer("add_sub_python", [infer_input("INPUT0", a, "FP32"), infer_input("INPUT1", b, "FP32")])
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), a - b)


def test_identity_concurrent_requests_batched(client: httpclient.InferenceServerClient) -> None:
    arrays = [np.random.rand(1, 1000 + i).astype(np.float32) for i in range(4)] + \
             [np.random.rand(2, 5).astype(np.float32) for _ in range(12)]
    pending = [client.async_infer("identity", [infer_input("INPUT0", a, "FP32")]) for a in arrays]
    for a, p in zip(arrays, pending):
        np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT0"), a)


def test_large_tensor_grows_shared_memory(client: httpclient.InferenceServerClient) -> None:
    big = np.random.rand(2, 700_000).astype(np.float32)  # 5.6 MB: beyond the 1 MiB default arena
    np.testing.assert_array_equal(client.infer("identity", [infer_input("INPUT0", big, "FP32")]).as_numpy("OUTPUT0"), big)


def test_large_tensor_over_grpc_grows_shared_memory(server: RunningServer) -> None:
    # gRPC bodies are not received into shared memory: the tensor is copied into the instance's arena
    big = np.random.rand(2, 700_000).astype(np.float32)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    i = grpcclient.InferInput("INPUT0", list(big.shape), "FP32")
    i.set_data_from_numpy(big)
    np.testing.assert_array_equal(client.infer("identity", [i]).as_numpy("OUTPUT0"), big)


def test_big_http_bodies_are_read_in_place(client: httpclient.InferenceServerClient) -> None:
    """A body of 64 KiB or more is received into shared memory, which the model process maps and reads
    (no copy); outputs that are views of it come back from there, new arrays through the arena."""
    small = np.arange(8, dtype=np.float32)
    result = client.infer("in_place", [infer_input("INPUT0", small, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("TAIL"), small[1:])
    assert result.as_numpy("MAPPED").tolist() == [False]  # a small body is copied into the arena
    big = np.random.default_rng(2).standard_normal(100_000).astype(np.float32)
    result = client.infer("in_place", [infer_input("INPUT0", big, "FP32")])
    assert result.as_numpy("MAPPED").tolist() == [True]
    np.testing.assert_array_equal(result.as_numpy("SAME"), big)
    np.testing.assert_array_equal(result.as_numpy("TAIL"), big[1:])
    np.testing.assert_array_equal(result.as_numpy("DOUBLE"), big * 2)


def test_big_http_bodies_in_place_under_concurrency(client: httpclient.InferenceServerClient) -> None:
    # many bodies in flight at once, batched together, each in its own block; blocks are reused after
    rng = np.random.default_rng(3)
    for _ in range(3):
        arrays = [rng.standard_normal((1, 20_000 + 4_000 * i)).astype(np.float32) for i in range(12)]
        pending = [client.async_infer("identity", [infer_input("INPUT0", a, "FP32")]) for a in arrays]
        for a, p in zip(arrays, pending):
            np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT0"), a)


def test_bytes_in_and_out(client: httpclient.InferenceServerClient) -> None:
    text = np.array([b"hello", b"", b"\xff\x00bin", "ünï".encode()], dtype=np.object_)
    result = client.infer("strings", [infer_input("TEXT", text, "BYTES")])
    assert list(result.as_numpy("REVERSED")) == [t.upper()[::-1] for t in text]
    assert list(result.as_numpy("LENGTH")) == [5, 0, 5, len("ünï".encode())]


def test_bls_calls_onnx_model(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    result = client.infer("bls", [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", b, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    import json
    args = json.loads(result.as_numpy("ARGS")[0])
    assert args["model_name"] == "bls" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and args["model_instance_name"].startswith("bls")
    assert json.loads(args["model_config"])["max_batch_size"] == 8


def test_bls_error_comes_back_as_response_error(client: httpclient.InferenceServerClient) -> None:
    a = np.zeros((1, 16), dtype=np.int32)
    # Triton's words and code (INTERNAL) for a BLS call the server does not take
    with pytest.raises(InferenceServerException, match="Model nosuchmodel - Error when running inference: Failed for "
                                                       "execute the inference request. Model 'nosuchmodel' is not ready"):
        client.infer("bls", [infer_input("INPUT0", a, "INT32"), infer_input("INPUT1", a, "INT32")],
                     parameters={"target": "nosuchmodel"})


def test_bls_carries_megabytes_both_ways(client: httpclient.InferenceServerClient) -> None:
    x = np.random.default_rng(1).standard_normal((1, 700_000)).astype(np.float32)  # 2.8 MB each way
    result = client.infer("bls_identity", [infer_input("INPUT0", x, "FP32")])
    assert np.array_equal(result.as_numpy("OUTPUT0"), x)


def test_bls_big_tensors_many_at_once(client: httpclient.InferenceServerClient) -> None:
    # 6 calls of 1.2 MB each way at once: some travel in the stub's and the server's shared-memory arenas,
    # the rest inline once those are full; the arenas are reused from the start once every region is free.
    x = np.random.default_rng(2).standard_normal(300_000).astype(np.float32)
    started = time.time() - 1
    for round_ in range(3):
        result = client.infer("bls_many", [infer_input("INPUT0", x + round_, "FP32")])
        assert result.as_numpy("SAME").tolist() == [7]
    # each arena's name was unlinked once the other side mapped it: nothing is left behind in /dev/shm
    left = [name for name in os.listdir("/dev/shm") if name.startswith("tritium_python_")
            and os.stat(os.path.join("/dev/shm", name)).st_mtime >= started]
    assert left == []


def test_async_execute_with_async_bls(client: httpclient.InferenceServerClient) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    result = client.infer("async_bls", [infer_input("INPUT0", a, "INT32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), 3 * (a + a))


def test_decoupled_streams_100_responses_in_order(server: RunningServer) -> None:
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        i = grpcclient.InferInput("IN", [1], "INT32")
        i.set_data_from_numpy(np.array([100], dtype=np.int32))
        client.async_stream_infer("repeat", [i], request_id="r1")
        got = []
        while len(got) < 100:
            result, error = responses.get(timeout=30)
            assert error is None, error
            got.append(int(result.as_numpy("OUT")[0]))
        assert got == list(range(100))
    finally:
        client.stop_stream()


def test_decoupled_streams_big_tensors(server: RunningServer) -> None:
    # 1 MB responses sent from two threads at once: every one arrives whole, in one piece, and nothing is left
    # in /dev/shm.
    started = time.time() - 1
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        i = grpcclient.InferInput("IN", [2], "INT32")
        i.set_data_from_numpy(np.array([24, 250_000], dtype=np.int32))
        client.async_stream_infer("big_stream", [i])
        got = []
        while len(got) < 24:
            result, error = responses.get(timeout=60)
            assert error is None, error
            out = result.as_numpy("OUT")
            assert out.shape == (250_000,) and (out == out[0]).all()
            got.append(int(out[0]))
        assert sorted(got) == list(range(24)) and got[-1] == 23
    finally:
        client.stop_stream()
    left = [name for name in os.listdir("/dev/shm") if name.startswith("tritium_python_")
            and os.stat(os.path.join("/dev/shm", name)).st_mtime >= started]
    assert left == []


def test_decoupled_model_refused_over_http(client: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="decoupled") as refused:
        client.infer("repeat", [infer_input("IN", np.array([1], dtype=np.int32), "INT32")])
    assert refused.value.status() == "501"  # as Triton (UNSUPPORTED)


def test_faults_fail_only_their_requests(client: httpclient.InferenceServerClient) -> None:
    x = lambda v: [infer_input("X", np.array([v], dtype=np.int32), "INT32")]  # noqa: E731
    with pytest.raises(InferenceServerException, match="boom in execute"):
        client.infer("faulty", x(1))
    with pytest.raises(InferenceServerException, match="value 2 is refused"):
        client.infer("faulty", x(2))
    assert client.infer("faulty", x(4)).as_numpy("Y")[0] == 40


def _stub_pid(marker: str) -> int:
    """The pid the faulty model's stub wrote when it started."""
    with open(marker + ".pid") as f:
        return int(f.read())


def test_killed_stub_fails_request_and_restarts(client: httpclient.InferenceServerClient, repo: str) -> None:
    marker = os.path.join(repo, "faulty_marker")
    x = lambda v: [infer_input("X", np.array([v], dtype=np.int32), "INT32")]  # noqa: E731
    first_pid = _stub_pid(marker)
    with pytest.raises(InferenceServerException, match="exited unexpectedly"):
        client.infer("faulty", x(3))
    assert client.infer("faulty", x(5)).as_numpy("Y")[0] == 50  # a new stub serves
    assert _stub_pid(marker) != first_pid
    assert client.is_server_live()


def test_kill_from_outside_while_idle(client: httpclient.InferenceServerClient, repo: str,
                                     server: RunningServer) -> None:
    marker = os.path.join(repo, "faulty_marker")
    x = lambda v: [infer_input("X", np.array([v], dtype=np.int32), "INT32")]  # noqa: E731
    for _ in range(2):  # the event loop watches the stub's socket between requests: twice, so a new stub too
        assert client.infer("faulty", x(6)).as_numpy("Y")[0] == 60
        os.kill(_stub_pid(marker), signal.SIGKILL)
        time.sleep(0.2)
        for v in (7, 8, 9):
            assert client.infer("faulty", x(v)).as_numpy("Y")[0] == 10 * v
    assert "no execution waiting" not in server.output()


def test_initialize_error_makes_model_unavailable(client: httpclient.InferenceServerClient,
                                                  server: RunningServer) -> None:
    assert not client.is_model_ready("initfail")
    log = server.output()
    assert "failed to load 'initfail'" in log and "RuntimeError: boom in initialize" in log
    assert "model.py(4): initialize" in log  # the line that raised
    assert client.is_server_live()


def test_auto_complete_config(client: httpclient.InferenceServerClient) -> None:
    config = client.get_model_config("autocfg")
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [("INPUT0", "TYPE_INT64", [3])]
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(client.infer("autocfg", [infer_input("INPUT0", a, "INT64")]).as_numpy("OUTPUT0"), a * 2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purposes
        return f.read().split(")")[-1].split()[0] != "Z"


def test_finalize_on_shutdown_and_no_orphans(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = str(tmp_path)
    marker = os.path.join(repo, "m")
    python_model(repo, "faulty", FAULTY, [tensor("X", "TYPE_INT32", "1")], [tensor("Y", "TYPE_INT32", "1")],
                 f'parameters {{ key: "marker" value: {{ string_value: "{marker}" }} }}\n'
                 'instance_group [ { kind: KIND_CPU, count: 2 } ]')
    with RunningServer([repo], ["--allow-metrics=false", "--allow-grpc=false"]) as s:
        pid = _stub_pid(marker)
        assert _alive(pid)
    assert os.path.exists(marker + ".finalized")
    assert not _alive(pid)
    # SIGKILL of the server: the stubs notice their sockets close and exit by themselves.
    os.unlink(marker + ".finalized")
    s = RunningServer([repo], ["--allow-metrics=false", "--allow-grpc=false"])
    try:
        client = httpclient.InferenceServerClient(s.url)
        deadline = time.monotonic() + 30
        while not client.is_model_ready("faulty") and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _stub_pid(marker)
        s.proc.kill()
        s.proc.wait()
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        s.stop()
