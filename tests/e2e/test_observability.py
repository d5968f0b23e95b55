"""Statistics extension and Prometheus metrics: counts move with known traffic, and the two agree."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import echo_config, identity_graph, sleep_then_echo, write_model, write_python_model
from server import RunningServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("repo"))
    write_model(repo, "identity_fp32", identity_graph("FP32", ("batch", 4)), config="""
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
        instance_group [ { kind: KIND_CPU count: 1 } ]
        metric_tags { key: "team" value: "vision" }
    """)
    write_model(repo, "idle", identity_graph("FP32", ("batch", 4)))
    write_python_model(repo, "sleepy", sleep_then_echo(), echo_config(1, extra="dynamic_batching { }"))
    with RunningServer([repo], ["--metrics-interval-ms=100"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url)
    yield c
    c.close()


def _infer(client, batch):
    inp = httpclient.InferInput("INPUT0", [batch, 4], "FP32")
    inp.set_data_from_numpy(np.ones((batch, 4), np.float32), binary_data=True)
    return client.infer("identity_fp32", [inp])


def _metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def _value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics:\n{text}")


def test_statistics_and_metrics_follow_known_traffic(server, client):
    for batch in (1, 1, 3):
        _infer(client, batch)
    with pytest.raises(InferenceServerException):  # refused by validation: not an execution
        inp = httpclient.InferInput("INPUT0", [9, 4], "FP32")
        inp.set_data_from_numpy(np.ones((9, 4), np.float32))
        client.infer("identity_fp32", [inp])

    stats = client.get_inference_statistics("identity_fp32")["model_stats"]
    assert len(stats) == 1
    s = stats[0]
    assert s["name"] == "identity_fp32" and s["version"] == "1"
    assert s["inference_count"] == 5 and s["execution_count"] == 3
    inference = s["inference_stats"]
    assert set(inference) == {"success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
                              "cache_hit", "cache_miss"}
    assert inference["success"]["count"] == 3 and inference["success"]["ns"] > 0
    assert inference["compute_infer"]["count"] == 3 and inference["compute_infer"]["ns"] > 0
    assert s["last_inference"] > 1_600_000_000_000
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]} == {1: 2, 3: 1}

    text = _metrics(server)
    labels = {"model": "identity_fp32", "version": "1"}
    assert "# TYPE nv_inference_request_success counter" in text
    assert _value(text, "nv_inference_request_success", **labels) == 3
    assert _value(text, "nv_inference_count", **labels) == 5
    assert _value(text, "nv_inference_exec_count", **labels) == 3
    assert _value(text, "nv_inference_request_failure", reason="BACKEND", **labels) == 0
    assert _value(text, "nv_inference_pending_request_count", **labels) == 0
    assert _value(text, "nv_inference_count", model="identity_fp32", _team="vision") == 5
    # The cumulative microsecond counters agree with the statistics' nanoseconds.
    assert _value(text, "nv_inference_compute_infer_duration_us", **labels) == inference["compute_infer"]["ns"] // 1000
    assert _value(text, "nv_inference_request_duration_us", **labels) == inference["success"]["ns"] // 1000
    assert _value(text, "nv_inference_count", model="idle", version="1") == 0


def test_pending_request_count_counts_requests_waiting_for_the_instance(server):
    import threading

    def call(seconds: float) -> None:
        c = httpclient.InferenceServerClient(server.url)
        inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.full((1, 1), seconds, np.float32))
        c.infer("sleepy", [inp])
        c.close()

    blocker = threading.Thread(target=call, args=(1.5,))
    blocker.start()
    import time

    time.sleep(0.4)  # the blocker is executing
    waiting = [threading.Thread(target=call, args=(0.0,)) for _ in range(2)]
    for t in waiting:
        t.start()
    time.sleep(0.4)
    labels = {"model": "sleepy", "version": "1"}
    assert _value(_metrics(server), "nv_inference_pending_request_count", **labels) == 2
    for t in (blocker, *waiting):
        t.join()
    assert _value(_metrics(server), "nv_inference_pending_request_count", **labels) == 0


def test_all_models_and_unknown_model(server, client):
    names = [s["name"] for s in client.get_inference_statistics()["model_stats"]]
    assert names == ["identity_fp32", "idle", "sleepy"]
    with pytest.raises(InferenceServerException, match="requested model 'nope' is not available"):
        client.get_inference_statistics("nope")
    with urllib.request.urlopen(f"http://{server.url}/v2/models/identity_fp32/versions/1/stats") as r:
        assert json.loads(r.read())["model_stats"][0]["version"] == "1"


def test_cpu_metrics(server):
    text = _metrics(server)
    assert 0.0 <= _value(text, "nv_cpu_utilization") <= 1.0
    total = _value(text, "nv_cpu_memory_total_bytes")
    assert total > 0 and 0 < _value(text, "nv_cpu_memory_used_bytes") <= total


def test_metrics_endpoint_only_serves_metrics(server):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(server.metrics_url.replace("/metrics", "/other"))
    assert info.value.code == 404
    info.value.close()
    assert "statistics" in client_extensions(server)


def client_extensions(server) -> list[str]:
    with urllib.request.urlopen(f"http://{server.url}/v2") as r:
        return json.loads(r.read())["extensions"]


def test_grpc_statistics_agree_with_http(server, client):
    import tritonclient.grpc as grpcclient

    _infer(client, 2)
    http_stats = client.get_inference_statistics("identity_fp32")["model_stats"][0]
    g = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        grpc_stats = g.get_inference_statistics("identity_fp32", as_json=True)["model_stats"][0]
        with pytest.raises(Exception, match="requested model 'nope' is not available"):
            g.get_inference_statistics("nope")
    finally:
        g.close()
    # protobuf JSON writes uint64 as strings
    assert int(grpc_stats["inference_count"]) == http_stats["inference_count"]
    assert int(grpc_stats["execution_count"]) == http_stats["execution_count"]
    assert int(grpc_stats["inference_stats"]["success"]["count"]) == http_stats["inference_stats"]["success"]["count"]
    assert {int(b["batch_size"]) for b in grpc_stats["batch_stats"]} == {b["batch_size"] for b in http_stats["batch_stats"]}


def test_latency_summaries(tmp_path):
    repo = str(tmp_path)
    write_model(repo, "identity_fp32", identity_graph("FP32", ("batch", 4)))
    args = ["--metrics-config=summary_latencies=true", "--metrics-config=summary_quantiles=0.5:0.05,0.99:0.001"]
    with RunningServer([repo], args) as s:
        c = httpclient.InferenceServerClient(s.url)
        try:
            for _ in range(5):
                _infer(c, 1)
        finally:
            c.close()
        text = _metrics(s)
    labels = {"model": "identity_fp32", "version": "1"}
    assert "# TYPE nv_inference_request_summary_us summary" in text
    assert _value(text, "nv_inference_request_summary_us_count", **labels) == 5
    total = _value(text, "nv_inference_request_summary_us_sum", **labels)
    median = _value(text, "nv_inference_request_summary_us", quantile="0.5", **labels)
    p99 = _value(text, "nv_inference_request_summary_us", quantile="0.99", **labels)
    assert 0 < median <= p99 <= total
    assert _value(text, "nv_inference_compute_infer_summary_us_count", **labels) == 5
    assert 'quantile="0.9"' not in text  # only the quantiles asked for


def test_no_gpu_metrics_without_gpus(server):
    """This machine has no NVIDIA driver: no nv_gpu_* family, as Triton on a CPU-only machine."""
    from tritium.core.devices import available_gpus

    if available_gpus():
        pytest.skip("a GPU is present: GPU metrics are expected")
    assert "nv_gpu_" not in _metrics(server)
