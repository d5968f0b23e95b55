"""Scheduling on a real server through tritonclient: dynamic batching, instances, priorities, queue policies.

Models reveal what the scheduler did: ``batchsize`` answers each row with the batch size it was executed
in; the Python ``sleepy`` models hold their one instance for as many seconds as the input says, so requests
queue behind a known wait; ``ragged`` echoes the batch inputs Triton synthesises for a ragged batch.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from models import echo_config, sleep_then_echo, write_model, write_python_model
from server import RunningServer


def batchsize_graph():  # type: ignore[no-untyped-def]
    """OUTPUT0[i] = the batch dimension the model was executed with, for every row i."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("Shape", ["INPUT0"], ["shape"], start=0, end=1),
        helper.make_node("Cast", ["shape"], ["n"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["INPUT0", "axes"], ["rows"], keepdims=1),
        helper.make_node("Mul", ["rows", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "n"], ["OUTPUT0"]),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.zeros(1, np.float32), "zero")]
    return helper.make_graph(nodes, "batchsize", [x], [y], initializer=inits)


def ragged_graph():  # type: ignore[no-untyped-def]
    """A flat ragged INPUT0 doubled, and the batch inputs echoed as [n, 1] outputs."""
    x = helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["n"])
    count = helper.make_tensor_value_info("COUNT", TensorProto.INT32, ["r"])
    acc = helper.make_tensor_value_info("ACC", TensorProto.INT32, ["r"])
    shape = helper.make_tensor_value_info("SHAPE", TensorProto.INT32, ["b", 1])
    outs = [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("COUNT_OUT", TensorProto.INT32, ["r", 1]),
            helper.make_tensor_value_info("ACC_OUT", TensorProto.INT32, ["r", 1]),
            helper.make_tensor_value_info("SHAPE_OUT", TensorProto.INT32, ["b", 1])]
    nodes = [helper.make_node("Add", ["INPUT0", "INPUT0"], ["OUTPUT0"]),
             helper.make_node("Unsqueeze", ["COUNT", "one"], ["COUNT_OUT"]),
             helper.make_node("Unsqueeze", ["ACC", "one"], ["ACC_OUT"]),
             helper.make_node("Identity", ["SHAPE"], ["SHAPE_OUT"])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "one")]
    return helper.make_graph(nodes, "ragged", [x, count, acc, shape], outs, initializer=inits)




@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("scheduling"))
    io = """
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]
        instance_group [ { kind: KIND_CPU count: 1 } ]
    """
    write_model(repo, "batchsize", batchsize_graph(), config=f"""
        max_batch_size: 8 {io}
        dynamic_batching {{ max_queue_delay_microseconds: 100000 }}""")
    write_model(repo, "preferred", batchsize_graph(), config=f"""
        max_batch_size: 8 {io}
        dynamic_batching {{ preferred_batch_size: [ 4 ] max_queue_delay_microseconds: 20000000 }}""")
    # Queue behaviour is shown behind a request that holds the model's one instance for a known time:
    # Python models that sleep for as many seconds as their input says.
    write_python_model(repo, "priority", sleep_then_echo(), echo_config(1, extra="""
        dynamic_batching { priority_levels: 2 default_priority_level: 2 }"""))
    write_python_model(repo, "queue_full", sleep_then_echo(), echo_config(1, extra="""
        dynamic_batching { default_queue_policy { max_queue_size: 2 } }"""))
    write_python_model(repo, "timeouts", sleep_then_echo(), echo_config(1, extra="""
        dynamic_batching { priority_levels: 2 default_priority_level: 1
            priority_queue_policy [
              { key: 1 value: { timeout_action: REJECT default_timeout_microseconds: 30000000
                                allow_timeout_override: true } },
              { key: 2 value: { timeout_action: DELAY default_timeout_microseconds: 30000000
                                allow_timeout_override: true } } ] }"""))
    write_model(repo, "ragged", ragged_graph(), config="""
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] allow_ragged_batch: true } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] },
                 { name: "COUNT_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
                 { name: "ACC_OUT" data_type: TYPE_INT32 dims: [ 1 ] },
                 { name: "SHAPE_OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
        batch_input [
          { kind: BATCH_ELEMENT_COUNT target_name: "COUNT" data_type: TYPE_INT32 source_input: "INPUT0" },
          { kind: BATCH_ACCUMULATED_ELEMENT_COUNT target_name: "ACC" data_type: TYPE_INT32 source_input: "INPUT0" },
          { kind: BATCH_ITEM_SHAPE target_name: "SHAPE" data_type: TYPE_INT32 source_input: "INPUT0" } ]
        batch_output [ { target_name: "OUTPUT0" kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: "INPUT0" } ]
        dynamic_batching { preferred_batch_size: [ 3 ] max_queue_delay_microseconds: 20000000 }
        instance_group [ { kind: KIND_CPU count: 1 } ]""")
    write_python_model(repo, "client_gone", sleep_then_echo(), echo_config(1, extra="dynamic_batching { }"))
    # Instances that each sleep 1 s per execution (Python backend: one process per instance).
    write_python_model(repo, "sleep_2", sleep_then_echo(1.0), echo_config(0, count=2))
    with RunningServer([repo]) as s:
        yield s


def _client(server: RunningServer, concurrency: int = 1) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url, concurrency=concurrency, connection_timeout=120,
                                            network_timeout=120)


def _inputs(x: np.ndarray) -> list[httpclient.InferInput]:
    i = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    i.set_data_from_numpy(x, binary_data=True)
    return [i]


def _parallel(calls: list[Callable[[], object]]) -> list[object]:
    """Run the calls on threads at once; results (or exceptions) in call order."""
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_dynamic_batching_joins_concurrent_requests_within_max_batch_size(server: RunningServer) -> None:
    client = _client(server, concurrency=20)
    x = np.ones((1, 4), np.float32)
    pending = [client.async_infer("batchsize", _inputs(x)) for _ in range(20)]
    sizes = [int(p.get_result().as_numpy("OUTPUT0")[0, 0]) for p in pending]
    assert max(sizes) <= 8
    assert max(sizes) > 1, sizes  # 20 requests within 100 ms of queue delay were joined
    # A request of batch 3 is joined with others but counts 3 towards max_batch_size.
    big = client.infer("batchsize", _inputs(np.ones((3, 4), np.float32))).as_numpy("OUTPUT0")
    assert big.shape == (3, 1) and 3 <= big[0, 0] <= 8
    client.close()


def test_preferred_batch_size_runs_without_waiting_for_the_delay(server: RunningServer) -> None:
    client = _client(server, concurrency=4)
    x = np.ones((1, 4), np.float32)
    started = time.monotonic()
    pending = [client.async_infer("preferred", _inputs(x)) for _ in range(4)]
    sizes = [int(p.get_result().as_numpy("OUTPUT0")[0, 0]) for p in pending]
    elapsed = time.monotonic() - started
    assert sizes == [4, 4, 4, 4]
    assert elapsed < 10, elapsed  # the queue delay is 20 s: the preferred size sent the batch at once
    client.close()


def test_two_instances_execute_at_the_same_time(server: RunningServer) -> None:
    """Two instances that each sleep 1 s serve two requests in well under 2 s (the issue's own check)."""
    x = np.ones(3, np.float32)
    inp = httpclient.InferInput("INPUT0", [3], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    c = _client(server, concurrency=2)
    try:
        started = time.monotonic()
        for p in [c.async_infer("sleep_2", [inp]) for _ in range(2)]:
            np.testing.assert_array_equal(p.get_result().as_numpy("OUTPUT0"), x)
        elapsed = time.monotonic() - started
    finally:
        c.close()
    assert 1.0 <= elapsed < 1.8, elapsed


def _blocker(server: RunningServer, model: str, seconds: float = 2.0) -> threading.Thread:
    """Occupy the model's one instance for ``seconds`` (on a thread), once it has started executing."""
    x = np.full((1, 1), seconds, np.float32)
    t = threading.Thread(target=lambda: _client(server).infer(model, _inputs(x)))
    t.start()
    time.sleep(0.6)  # generous: the request must be executing before the test queues others behind it
    return t


def test_priority_reorders_the_queue(server: RunningServer) -> None:
    small = np.full((1, 1), 0.2, np.float32)  # 0.2 s each: completions far enough apart to order
    done: list[str] = []
    lock = threading.Lock()

    def call(tag: str, priority: int) -> Callable[[], object]:
        def run() -> object:
            _client(server).infer("priority", _inputs(small), priority=priority)
            with lock:
                done.append(tag)
            return None
        return run

    blocker = _blocker(server, "priority")
    low = [call(f"low{i}", 2) for i in range(3)]
    results = _parallel(low[:1] + [lambda: time.sleep(0.05)] + low[1:] + [call("high", 1)])
    blocker.join()
    assert not any(isinstance(r, Exception) for r in results), results
    assert done.index("high") < max(done.index(f"low{i}") for i in range(3)), done
    assert done[0] in ("high", "low0"), done


def test_full_queue_is_refused_with_unavailable(server: RunningServer) -> None:
    small = np.zeros((1, 1), np.float32)
    blocker = _blocker(server, "queue_full")
    results = _parallel([lambda: _client(server).infer("queue_full", _inputs(small)) for _ in range(5)])
    blocker.join()
    errors = [r for r in results if isinstance(r, InferenceServerException)]
    assert len(errors) == 3, results  # two fit in the queue behind the executing request
    for e in errors:
        assert "Exceeds maximum queue size" in e.message() and e.status() == "503"


def test_expired_timeout_rejects_or_delays(server: RunningServer) -> None:
    small = np.full((1, 1), 0.2, np.float32)  # 0.2 s each: completions far enough apart to order
    order: list[str] = []

    def call(tag: str, **kw: int) -> Callable[[], object]:
        def run() -> object:
            started = time.monotonic()
            try:
                _client(server).infer("timeouts", _inputs(small), **kw)
            finally:
                order.append(tag)
            return time.monotonic() - started
        return run

    blocker = _blocker(server, "timeouts")
    results = _parallel([
        call("rejected", priority=1, timeout=50_000),   # REJECT level: fails after 50 ms
        call("delayed", priority=2, timeout=50_000),    # DELAY level: moves behind "plain"
        lambda: (time.sleep(0.1), call("plain", priority=2)())[1],
    ])
    blocker.join()
    rejected = results[0]
    assert isinstance(rejected, InferenceServerException), results
    assert "Request timeout expired" in rejected.message() and rejected.status() == "503"
    assert not isinstance(results[1], Exception) and not isinstance(results[2], Exception), results
    assert order.index("rejected") == 0 and order.index("plain") < order.index("delayed"), order


def test_bad_priority_parameter_is_refused(server: RunningServer) -> None:
    with pytest.raises(InferenceServerException, match="priority"):
        _client(server).infer("priority", _inputs(np.zeros((1, 1), np.float32)), parameters={"priority": "high"})


def test_ragged_batch_gives_each_request_its_own_results(server: RunningServer) -> None:
    client = _client(server, concurrency=3)
    xs = [np.arange(n, dtype=np.float32).reshape(1, n) + 10 * n for n in (3, 4, 5)]
    pending = [client.async_infer("ragged", _inputs(x)) for x in xs]
    results = [p.get_result() for p in pending]
    accs = []
    for x, r in zip(xs, results):
        np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), 2 * x)
        assert r.as_numpy("COUNT_OUT").tolist() == [[x.size]]
        assert r.as_numpy("SHAPE_OUT").tolist() == [[x.size]]
        accs.append((int(r.as_numpy("ACC_OUT")[0, 0]), x.size))
    accs.sort()
    assert [a for a, _ in accs] == list(np.cumsum([n for _, n in accs])), accs  # one batch of three
    client.close()


def test_a_request_whose_client_goes_away_while_queued_is_dropped_and_counted_canceled(server: RunningServer) -> None:
    blocker = _blocker(server, "client_gone")
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [5.0]}]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:  # queues behind the blocker
        sock.sendall(b"POST /v2/models/client_gone/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        time.sleep(0.3)
    blocker.join()
    stats = _client(server).get_inference_statistics("client_gone")["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] == 1  # it never ran (it would have slept 5 s)
    assert stats["inference_stats"]["success"]["count"] == 1  # the blocker
    with urllib.request.urlopen(server.metrics_url) as r:
        lines = [line for line in r.read().decode().splitlines()
                 if line.startswith("nv_inference_request_failure{") and 'model="client_gone"' in line]
    counts = {line.split('reason="')[1].split('"')[0]: float(line.split()[-1]) for line in lines}
    assert counts == {"REJECTED": 0, "CANCELED": 1, "BACKEND": 0, "OTHER": 0}, lines
