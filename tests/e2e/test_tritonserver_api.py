"""``tritium.tritonserver``, Triton's in-process API, end to end: a real in-process server (private loop thread,
Python-backend stub processes, ONNX Runtime), loaded and called as Triton's own tests call it; network endpoints
opened over the same core with ``tritium.tritonfrontend`` and reached with tritonclient."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import sys
import threading
import tracemalloc
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tritium.tritonserver as tritonserver
from tritium.tritonfrontend import KServeGrpc, KServeHttp, Metrics
from tritium.tritonserver import _dlpack

from models import identity_graph, write_model, write_python_model
from server import free_port

ECHO = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            tensors = [pb_utils.Tensor(t.name().replace("input", "output"), t.as_numpy()) for t in r.inputs()]
            if any(t.name() == "fp32_input" and t.as_numpy().size and t.as_numpy().reshape(-1)[0] < 0
                   for t in r.inputs()):
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("negative input")))
                continue
            params = np.array([r.parameters()], dtype=np.object_)
            tensors.append(pb_utils.Tensor("output_parameters", params))
            out.append(pb_utils.InferenceResponse(tensors))
        return out
'''

ECHO_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "text_input" data_type: TYPE_STRING dims: [ -1 ] optional: true },
        { name: "fp32_input" data_type: TYPE_FP32 dims: [ -1 ] optional: true } ]
output [ { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] },
         { name: "fp32_output" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "output_parameters" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

STREAM = '''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(r, "COUNT").as_numpy()[0])
            delay = float(pb_utils.get_input_tensor_by_name(r, "DELAY").as_numpy()[0])
            for i in range(count):
                if r.is_cancelled():
                    break
                time.sleep(delay)
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("INDEX", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

STREAM_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [ { name: "COUNT" data_type: TYPE_INT32 dims: [ 1 ] },
        { name: "DELAY" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "INDEX" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

IDENTITY_CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


ACC_CONFIG = """
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
sequence_batching {
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state [ { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } ] } ]
}
"""


def accumulator_graph():  # type: ignore[no-untyped-def]
    """OUTPUT = START ? INPUT : STATE_IN + INPUT, kept per sequence as STATE_OUT."""
    from onnx import TensorProto, helper

    def tensor(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])

    nodes = [helper.make_node("Cast", ["START"], ["is_start"], to=TensorProto.BOOL),
             helper.make_node("Add", ["STATE_IN", "INPUT"], ["sum"]),
             helper.make_node("Where", ["is_start", "INPUT", "sum"], ["OUTPUT"]),
             helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"])]
    return helper.make_graph(nodes, "acc", [tensor("INPUT"), tensor("START"), tensor("STATE_IN")],
                             [tensor("OUTPUT"), tensor("STATE_OUT")])


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("repo"))
    write_python_model(path, "echo", ECHO, ECHO_CONFIG)
    write_python_model(path, "stream", STREAM, STREAM_CONFIG)
    write_python_model(path, "shout", SHOUT, SHOUT_CONFIG)
    write_model(path, "identity", identity_graph("FP32", ("batch", 16)), IDENTITY_CONFIG)
    write_model(path, "acc", accumulator_graph(), ACC_CONFIG)
    return path


@pytest.fixture(scope="module")
def server(repo: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    logs = tmp_path_factory.mktemp("logs")
    server = tritonserver.Server(
        model_repository=repo, model_control_mode=tritonserver.ModelControlMode.EXPLICIT,
        startup_models=["echo", "identity"], log_info=True, log_file=str(logs / "server.log"),
    ).start(wait_until_ready=True, timeout=120)
    yield server
    server.stop()


def test_server_health_metadata_and_index(server: tritonserver.Server) -> None:
    assert server.live() and server.ready()
    assert server.metadata()["name"] == "triton"
    assert "model_repository" in server.metadata()["extensions"]
    models = server.models()
    assert models[("echo", 1)].state == "READY"
    assert models["identity"].name == "identity"
    with pytest.raises(KeyError, match="Unknown Model"):
        models["nothing"]
    assert set(server.models(exclude_not_ready=True)) >= {("echo", 1), ("identity", 1)}
    identity = server.model("identity")
    assert identity.ready()
    assert identity.batch_properties() == tritonserver.ModelBatchFlag.FIRST_DIM
    assert identity.transaction_properties() == tritonserver.ModelTxnPropertyFlag.ONE_TO_ONE
    assert identity.metadata()["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}]
    assert identity.config()["max_batch_size"] == 8


def test_infer_numeric_outputs_are_viewed_without_copy(server: tritonserver.Server) -> None:
    data = np.arange(32, dtype=np.float32).reshape(2, 16)
    responses = list(server.model("identity").infer(inputs={"INPUT0": data}))
    assert len(responses) == 1 and responses[0].final and responses[0].error is None
    output = responses[0].outputs["OUTPUT0"]
    assert output.data_type == tritonserver.DataType.FP32 and list(output.shape) == [2, 16]
    assert output.memory_type == tritonserver.MemoryType.CPU
    array = np.from_dlpack(output)
    np.testing.assert_array_equal(array, data)
    assert array.ctypes.data == output.data_ptr  # a view of the response's memory
    assert responses[0].model.version == 1  # the version that answered


def test_bytes_inputs_and_request_parameters(server: tritonserver.Server) -> None:
    params = {"int_parameter": 3, "float_parameter": 0.5, "bool_parameter": True, "string_parameter": "x"}
    text = tritonserver.Tensor.from_string_array([["hello", "wörld"]][0])
    request = server.model("echo").create_request(inputs={"text_input": text}, parameters=params, request_id="r1")
    (response,) = server.model("echo").infer(request)
    assert response.request_id == "r1"
    assert response.outputs["text_output"].to_string_array().tolist() == ["hello", "wörld"]
    assert json.loads(response.outputs["output_parameters"].to_bytes_array()[0]) == params
    # lists and numpy text arrays are taken as BYTES too
    (response,) = server.model("echo").infer(inputs={"text_input": np.array([b"a", b"bc"])})
    assert response.outputs["text_output"].to_bytes_array().tolist() == [b"a", b"bc"]


def test_load_with_config_and_file_overrides_then_unload(server: tritonserver.Server) -> None:
    config = {"backend": "python", "max_batch_size": 0,
              "input": [{"name": "fp32_input", "data_type": "TYPE_FP32", "dims": [-1]}],
              "output": [{"name": "fp32_output", "data_type": "TYPE_FP32", "dims": [-1]},
                         {"name": "output_parameters", "data_type": "TYPE_STRING", "dims": [1]}]}
    model = server.load("uploaded", {"config": json.dumps(config), "file:1/model.py": ECHO.encode()})
    assert model.ready()
    (response,) = model.infer(inputs={"fp32_input": np.array([1.5, 2.5], np.float32)})
    np.testing.assert_array_equal(np.from_dlpack(response.outputs["fp32_output"]), [1.5, 2.5])
    # a config override of a model of the repository: the new config is served
    server.load("echo", {"config": json.dumps({**config, "parameters": {"tag": {"string_value": "v2"}}})})
    assert server.model("echo").config()["parameters"]["tag"]["string_value"] == "v2"
    server.load("echo", {"config": ECHO_CONFIG_JSON})
    server.unload("uploaded", wait_until_unloaded=True, timeout=60)
    assert not server.model("uploaded").ready()
    with pytest.raises(tritonserver.TritonError):
        server.load("uploaded", {"config": json.dumps({"backend": "python", "max_batch_size": -3})})


SHOUT = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            prompts = pb_utils.get_input_tensor_by_name(r, "prompt").as_numpy()
            image = np.stack([np.frombuffer(bytes(p[0]).upper(), np.uint8)[None, :] for p in prompts])
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("generated_image", image)]))
        return out
'''

SHOUT_CONFIG = """
backend: "python"
max_batch_size: 8
input [ { name: "prompt" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "generated_image" data_type: TYPE_UINT8 dims: [ -1, -1 ] } ]
"""


def test_the_calls_of_rays_triton_example_from_a_replicas_threads(server: tritonserver.Server) -> None:
    """What Ray's Triton example does in a Serve replica (tests/e2e/test_ray_serve.py runs the example itself):
    ``model(name).ready()`` is False, not an error, before the model is loaded; ``load`` returns a ready model;
    a nested ``[[prompt]]`` list is a BYTES [1, 1] input; the output is read with ``numpy.from_dlpack``; and the
    blocking ``infer`` works from a thread whose own asyncio loop is running (the replica's) and from the
    threads of a pool that loop hands sync handlers to (Serve's)."""
    assert not server.model("shout").ready()  # in the repository, not loaded yet (EXPLICIT)
    assert not server.model("no_such_model").ready()
    model = server.load("shout")
    assert model.ready()

    def generate(prompt: str) -> bytes:
        (response,) = model.infer(inputs={"prompt": [[prompt]]})
        return np.from_dlpack(response.outputs["generated_image"]).squeeze().astype(np.uint8).tobytes()

    async def replica(pool: ThreadPoolExecutor) -> tuple[bytes, list[bytes]]:
        loop = asyncio.get_running_loop()
        on_loop_thread = generate("on the loop's thread")
        pooled = await asyncio.gather(*(loop.run_in_executor(pool, generate, f"prompt {i}") for i in range(8)))
        return on_loop_thread, pooled

    try:
        with ThreadPoolExecutor(4) as pool:
            on_loop_thread, pooled = asyncio.run(replica(pool))
        assert on_loop_thread == b"ON THE LOOP'S THREAD"
        assert pooled == [f"PROMPT {i}".encode() for i in range(8)]
    finally:
        server.unload("shout", wait_until_unloaded=True, timeout=60)


ECHO_CONFIG_JSON = json.dumps({
    "backend": "python", "max_batch_size": 0,
    "input": [{"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1], "optional": True},
              {"name": "fp32_input", "data_type": "TYPE_FP32", "dims": [-1], "optional": True}],
    "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]},
               {"name": "fp32_output", "data_type": "TYPE_FP32", "dims": [-1]},
               {"name": "output_parameters", "data_type": "TYPE_STRING", "dims": [1]}]})


def test_decoupled_model_streams_and_cancels(server: tritonserver.Server) -> None:
    model = server.load("stream")
    assert model.transaction_properties() == tritonserver.ModelTxnPropertyFlag.DECOUPLED
    inputs = {"COUNT": np.array([3], np.int32), "DELAY": np.array([0.0], np.float32)}
    responses = list(model.infer(inputs=inputs))
    assert [r.final for r in responses] == [False, False, False, True]
    assert [int(np.from_dlpack(r.outputs["INDEX"])[0]) for r in responses[:3]] == [0, 1, 2]
    assert responses[3].outputs == {}
    # a long stream cancelled after its first response ends with a CANCELLED error
    iterator = model.infer(inputs={"COUNT": np.array([1000], np.int32), "DELAY": np.array([0.01], np.float32)},
                           raise_on_error=False)
    first = next(iterator)
    assert not first.final
    iterator.cancel()
    rest = list(iterator)
    assert len(rest) < 999 and rest[-1].final
    assert rest[-1].error is not None and rest[-1].error.status.name == "CANCELLED"


def test_sequences_through_correlation_id_and_flags(server: tritonserver.Server) -> None:
    model = server.load("acc")
    start, end = tritonserver.RequestFlag.SEQUENCE_START, tritonserver.RequestFlag.SEQUENCE_END

    def send(sequence: int, value: int, flags: int) -> int:
        (response,) = model.infer(inputs={"INPUT": np.array([[value]], np.int32)}, correlation_id=sequence,
                                  flags=flags)
        return int(np.from_dlpack(response.outputs["OUTPUT"])[0, 0])

    assert [send(7, 1, start), send(8, 10, start), send(7, 2, 0), send(8, 20, end), send(7, 3, end)] == \
        [1, 10, 3, 30, 6]


def test_async_infer_from_the_callers_loop(server: tritonserver.Server) -> None:
    model = server.model("identity")

    async def main() -> list[float]:
        async def one(value: float) -> float:
            data = np.full((1, 16), value, np.float32)
            got = [np.from_dlpack(r.outputs["OUTPUT0"])[0, 0] async for r in model.async_infer(inputs={"INPUT0": data})]
            return float(got[0])

        results = await asyncio.gather(*(one(float(i)) for i in range(20)))
        user_queue: asyncio.Queue[tritonserver.InferenceResponse] = asyncio.Queue()
        iterator = model.async_infer(inputs={"INPUT0": np.ones((1, 16), np.float32)}, response_queue=user_queue)
        queued = await asyncio.wait_for(user_queue.get(), 60)
        assert queued.final
        assert [r async for r in iterator] == [queued]
        return results

    assert asyncio.run(main()) == [float(i) for i in range(20)]


def test_response_queue_gets_responses_without_iterating(server: tritonserver.Server) -> None:
    user_queue: queue.SimpleQueue[tritonserver.InferenceResponse] = queue.SimpleQueue()
    iterators = [server.model("identity").infer(inputs={"INPUT0": np.ones((1, 16), np.float32)},
                                                response_queue=user_queue) for _ in range(3)]
    got = [user_queue.get(timeout=60) for _ in range(3)]
    assert all(r.final for r in got)
    for iterator in iterators:
        assert len(list(iterator)) == 1
    assert user_queue.empty()


def test_calls_from_many_threads(server: tritonserver.Server) -> None:
    errors: list[BaseException] = []

    def caller(value: float) -> None:
        try:
            for _ in range(50):
                data = np.full((1, 16), value, np.float32)
                (response,) = server.model("identity").infer(inputs={"INPUT0": data})
                np.testing.assert_array_equal(np.from_dlpack(response.outputs["OUTPUT0"]), data)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(float(i),)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and not any(t.is_alive() for t in threads)


def test_errors_raise_where_triton_raises_them(server: tritonserver.Server, repo: str) -> None:
    ones = np.ones((1, 16), np.float32)
    with pytest.raises(tritonserver.NotFoundError, match="unknown model"):
        server.model("nothing").infer(inputs={"INPUT0": ones})
    with pytest.raises(tritonserver.InvalidArgumentError, match="data-type is 'FP64'"):
        server.model("identity").infer(inputs={"INPUT0": ones.astype(np.float64)})
    with pytest.raises(tritonserver.InvalidArgumentError, match="unexpected inference input 'nope'"):
        server.model("identity").infer(inputs={"nope": ones})
    with pytest.raises(tritonserver.InvalidArgumentError, match="'invalid' of type dict"):
        server.model("identity").infer(inputs={"INPUT0": ones}, parameters={"invalid": {"a": 1}})
    with pytest.raises(tritonserver.InvalidArgumentError, match="Memory Type"):
        server.model("identity").infer(inputs={"INPUT0": ones}, output_memory_type="unsupported")
    with pytest.raises(tritonserver.InvalidArgumentError, match="not supported"):
        server.model("identity").infer(inputs={"INPUT0": ones}, output_memory_type="gpu")
    with pytest.raises(tritonserver.InvalidArgumentError, match="Input type dict not supported"):
        server.model("identity").infer(inputs={"INPUT0": {"a": 1}})
    # an error response of the model: raised while iterating, or handed over with raise_on_error=False
    with pytest.raises(tritonserver.TritonError, match="negative input"):
        list(server.model("echo").infer(inputs={"fp32_input": np.array([-1.0], np.float32)}))
    (response,) = server.model("echo").infer(inputs={"fp32_input": np.array([-1.0], np.float32)},
                                             raise_on_error=False)
    assert response.final and "negative input" in str(response.error)
    # and the server is still there
    assert server.model("echo").ready()
    # server-level errors
    with pytest.raises(tritonserver.InvalidArgumentError, match="not started"):
        tritonserver.Server(model_repository=repo).ready()
    with pytest.raises(tritonserver.InvalidArgumentError, match="already started"):
        server.start()
    with pytest.raises(TypeError, match="server_id"):
        tritonserver.Server(model_repository=repo, server_id=1).start()
    with pytest.raises(tritonserver.InvalidArgumentError, match="must be specified"):
        tritonserver.Server(model_repository=None).start()
    with pytest.raises(tritonserver.InternalError, match="failed to stat"):
        tritonserver.Server(model_repository=os.path.join(repo, "missing")).start()
    with pytest.raises(tritonserver.UnavailableError, match="POLL"):
        server.poll_model_repository()


def test_async_infer_needs_a_running_loop(server: tritonserver.Server) -> None:
    with pytest.raises(tritonserver.InvalidArgumentError, match="running asyncio event loop"):
        server.model("identity").async_infer(inputs={"INPUT0": np.ones((1, 16), np.float32)})


def test_dlpack_reference_counts_and_torch(server: tritonserver.Server) -> None:
    owner = np.ones(1 << 20)
    assert sys.getrefcount(owner) - 1 == 1
    tensor = tritonserver.Tensor.from_dlpack(owner)
    assert sys.getrefcount(owner) - 1 == 2
    view = np.from_dlpack(tensor)
    assert view.ctypes.data == owner.ctypes.data and sys.getrefcount(tensor) - 1 == 2
    del view
    assert sys.getrefcount(tensor) - 1 == 1 and _dlpack.exported_count() == 0
    torch = pytest.importorskip("torch")
    from_torch = tritonserver.Tensor.from_dlpack(torch.arange(16, dtype=torch.float32).reshape(1, 16))
    (response,) = server.model("identity").infer(inputs={"INPUT0": from_torch})
    exported = _dlpack.exported_count()  # the torch input's view may still be held by the core's last request
    as_torch = torch.from_dlpack(response.outputs["OUTPUT0"])
    assert as_torch.data_ptr() == response.outputs["OUTPUT0"].data_ptr
    assert as_torch.tolist() == [list(range(16))]
    assert _dlpack.exported_count() == exported + 1
    del as_torch
    assert _dlpack.exported_count() == exported


def test_memory_is_steady_over_thousands_of_inferences(server: tritonserver.Server) -> None:
    """Python-side memory after 500 inferences and after 3,000 more differ by less than 64 KiB (no per-request
    leak in the API, its conversions or DLPack exports)."""
    model = server.model("echo")

    def run(count: int) -> None:
        for _ in range(count):
            data = np.random.rand(100).astype(np.float32)
            for response in model.infer(inputs={"fp32_input": data}):
                np.testing.assert_array_equal(np.from_dlpack(response.outputs["fp32_output"]), data)

    gc.collect()
    tracemalloc.start()
    try:
        run(500)
        warm, _ = tracemalloc.get_traced_memory()
        run(3000)
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - warm < 64 * 1024, f"grew {after - warm} bytes over 3,000 inferences"
    assert _dlpack.exported_count() <= 1  # at most the last input, if the core still holds its request


def test_network_endpoints_share_the_core(server: tritonserver.Server) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    data = np.arange(16, dtype=np.float32).reshape(1, 16)
    with KServeHttp(server, KServeHttp.Options(address="127.0.0.1", port=http_port)), \
            KServeGrpc(server, KServeGrpc.Options(address="127.0.0.1", port=grpc_port)), \
            Metrics(server, Metrics.Options(address="127.0.0.1", port=metrics_port)):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for client, module in ((http, httpclient), (grpc, grpcclient)):
                assert client.is_model_ready("identity")
                infer_input = module.InferInput("INPUT0", [1, 16], "FP32")
                infer_input.set_data_from_numpy(data)
                np.testing.assert_array_equal(client.infer("identity", [infer_input]).as_numpy("OUTPUT0"), data)
        finally:
            http.close()
            grpc.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=60) as page:
            text = page.read().decode()
        assert 'nv_inference_count{model="identity",version="1"}' in text
    assert "nv_inference_request_success" in server.metrics()
    with pytest.raises(OSError):  # closed with the block
        urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/live", timeout=10)


def test_endpoints_forward_headers_by_their_options_patterns(server: tritonserver.Server) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    with pytest.raises(tritonserver.InvalidArgumentError, match="not a regular expression"):
        KServeHttp(server, KServeHttp.Options(address="127.0.0.1", port=free_port(), header_forward_pattern="("))
    http_port, grpc_port = free_port(), free_port()
    with KServeHttp(server, KServeHttp.Options(address="127.0.0.1", port=http_port, header_forward_pattern="^x-fw")), \
            KServeGrpc(server, KServeGrpc.Options(address="127.0.0.1", port=grpc_port, forward_header_pattern="^x-fw")):
        http = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            for client, module in ((http, httpclient), (grpc, grpcclient)):
                infer_input = module.InferInput("fp32_input", [1], "FP32")
                infer_input.set_data_from_numpy(np.ones(1, np.float32))
                result = client.infer("echo", [infer_input], headers={"x-fw-one": "1", "x-other": "2"})
                seen = json.loads(result.as_numpy("output_parameters")[0])
                assert seen.get("x-fw-one") == "1" and "x-other" not in seen, seen
        finally:
            http.close()
            grpc.close()


def test_poll_mode_and_stop_when_collected(tmp_path: object) -> None:
    repo = str(tmp_path)
    server = tritonserver.Server(model_repository=repo, model_control_mode=tritonserver.ModelControlMode.POLL)
    server.start(wait_until_ready=True, timeout=60)
    assert list(server.models()) == []
    write_model(repo, "identity", identity_graph("FP32", ("batch", 16)), IDENTITY_CONFIG)
    server.poll_model_repository()
    assert server.model("identity").ready()
    with pytest.raises(tritonserver.UnavailableError, match="polling is enabled"):
        server.load("identity")
    thread = server._started().thread
    model = server.model("identity")
    del server
    gc.collect()
    assert thread.is_alive()  # a model object still holds the server
    del model
    gc.collect()
    thread.join(timeout=60)
    assert not thread.is_alive() and threading.active_count() >= 1


def test_cache_rate_limiter_and_namespacing_options_reach_the_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Triton's Options for the response cache, the rate limiter and namespacing configure the server as the
    command line's flags do (and a cache config Triton refuses is refused at start, in its words)."""
    first, second = str(tmp_path / "a"), str(tmp_path / "b")
    cached = IDENTITY_CONFIG + "\nresponse_cache { enable: true }\n"
    write_model(first, "identity", identity_graph("FP32", ("batch", 16)), cached)
    write_model(second, "identity", identity_graph("FP32", ("batch", 16)), IDENTITY_CONFIG)
    with pytest.raises(tritonserver.InternalError, match="stoull"):
        tritonserver.Server(model_repository=first, cache_config={"local": {"size": "lots"}}).start()
    server = tritonserver.Server(
        model_repository=[first, second], model_namespacing=True, cache_config={"local": {"size": 1 << 20}},
        rate_limiter_mode=tritonserver.RateLimitMode.EXEC_COUNT,
        rate_limiter_resources=[tritonserver.RateLimiterResource("R", 1, -1)],
    ).start(wait_until_ready=True, timeout=120)
    try:
        # the same name in two repositories: both load (namespacing), and a request by that name is ambiguous
        assert [(m[0], m[1]) for m in server.models()].count(("identity", 1)) >= 1
        with pytest.raises(tritonserver.TritonError, match="identifiers of model 'identity'"):
            list(server.model("identity").infer(inputs={"INPUT0": np.ones((1, 16), np.float32)}))
    finally:
        server.stop()
    server = tritonserver.Server(model_repository=first, cache_config={"local": {"size": 1 << 20}}).start(
        wait_until_ready=True, timeout=120)
    try:
        data = np.arange(16, dtype=np.float32).reshape(1, 16)
        for _ in range(3):
            (response,) = server.model("identity").infer(inputs={"INPUT0": data})
            np.testing.assert_array_equal(np.from_dlpack(response.outputs["OUTPUT0"]), data)
        stats = server.model("identity").statistics()["model_stats"][0]
        assert stats["inference_stats"]["cache_hit"]["count"] == 2
        assert stats["inference_stats"]["cache_miss"]["count"] == 1
        assert stats["execution_count"] == 1
    finally:
        server.stop()
