"""pb_utils features model code reaches the server with: custom metrics, model management, cancellation,
request parameters, decoupled error responses.  Expected behaviour as real Triton 2.51 shows it."""

from __future__ import annotations

import json
import queue
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from models import write_python_model
from server import RunningServer

TEXT_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
    {extra}
"""
ECHO_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    {extra}
"""
DECOUPLED = "model_transaction_policy { decoupled: true }"

#: Model code shared by the models below: the outcome of a call as text, exceptions included.
ATTEMPT = '''
def attempt(f):
    try:
        return repr(f())
    except Exception as e:
        return "EXC " + type(e).__name__ + ": " + str(e)
'''

#: Answers a JSON dict per request; ``op`` (a request parameter) says what to do.
METRICS = '''
import gc, json, numpy as np
import triton_python_backend_utils as pb_utils
''' + ATTEMPT + '''
class TritonPythonModel:
    def initialize(self, args):
        self.c = pb_utils.MetricFamily(name="custom_requests", description="Requests seen", kind=pb_utils.MetricFamily.COUNTER)
        self.g = pb_utils.MetricFamily(name="custom_last_value", description="Last input", kind=pb_utils.MetricFamily.GAUGE)
        self.h = pb_utils.MetricFamily(name="custom_sizes", description="Input sizes", kind=pb_utils.MetricFamily.HISTOGRAM)
        self.cm = self.c.Metric(labels={"model": "metrics", "kind": "x"})
        self.gm = self.g.Metric(labels={"model": "metrics"})
        self.hm = self.h.Metric(labels={"model": "metrics"}, buckets=[1.0, 5.0, 10.0])
        self.keep = None

    def execute(self, requests):
        out = []
        for r in requests:
            op = json.loads(r.parameters()).get("op", "")
            x = float(r.inputs()[0].as_numpy()[0])
            res = {}
            if op == "update":
                self.cm.increment(x); self.gm.set(x); self.hm.observe(x)
                res = {"c": self.cm.value(), "g": self.gm.value(), "same": self.c.Metric(labels={"kind": "x", "model": "metrics"}).value()}
            elif op == "errors":
                res = {
                    "negative": attempt(lambda: self.cm.increment(-1)),
                    "counter_set": attempt(lambda: self.cm.set(3)),
                    "gauge_observe": attempt(lambda: self.gm.observe(3)),
                    "histogram_value": attempt(self.hm.value),
                    "no_buckets": attempt(lambda: self.h.Metric(labels={"a": "b"})),
                    "buckets": attempt(lambda: self.c.Metric(labels={"a": "b"}, buckets=[1.0])),
                    "other_kind": attempt(lambda: pb_utils.MetricFamily(name="custom_requests", description="d", kind=pb_utils.MetricFamily.GAUGE)),
                    "bad_name": attempt(lambda: pb_utils.MetricFamily(name="bad name", description="d", kind=pb_utils.MetricFamily.GAUGE)),
                    "kinds": [int(pb_utils.MetricFamily.COUNTER), int(pb_utils.MetricFamily.GAUGE), int(pb_utils.MetricFamily.HISTOGRAM)],
                }
            elif op == "make_temporary":
                family = pb_utils.MetricFamily(name="custom_temporary", description="tmp", kind=pb_utils.MetricFamily.GAUGE)
                metric = family.Metric(labels={"a": "1"}); metric.set(5)
                self.keep = [family, metric]
            elif op == "drop_metric":
                self.keep.pop(); gc.collect()
            elif op == "drop_family":
                self.keep = None; gc.collect()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([json.dumps(res)], dtype=np.object_))]))
        return out
'''

MANAGEMENT = '''
import json, numpy as np
import triton_python_backend_utils as pb_utils
''' + ATTEMPT + '''
CONFIG = json.dumps({"backend": "python", "max_batch_size": 0,
                     "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
                     "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}]})
CODE = b"""
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy() * 3)]) for r in requests]
"""

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            res = {
                "ready_before": attempt(lambda: pb_utils.is_model_ready("echo")),
                "load": attempt(lambda: pb_utils.load_model("echo")),
                "ready_after": attempt(lambda: pb_utils.is_model_ready("echo")),
                "ready_v1": attempt(lambda: pb_utils.is_model_ready("echo", "1")),
                "ready_v9": attempt(lambda: pb_utils.is_model_ready("echo", "9")),
                "load_unknown": attempt(lambda: pb_utils.load_model("nope")),
                "load_files": attempt(lambda: pb_utils.load_model("tripler", config=CONFIG, files={"file:1/model.py": CODE})),
                "ready_tripler": attempt(lambda: pb_utils.is_model_ready("tripler")),
                "unload": attempt(lambda: pb_utils.unload_model("echo")),
                "ready_after_unload": attempt(lambda: pb_utils.is_model_ready("echo")),
                "unload_unknown": attempt(lambda: pb_utils.unload_model("nope", unload_dependents=True)),
            }
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([json.dumps(res)], dtype=np.object_))]))
        return out
'''

ECHO = '''
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())]) for r in requests]
'''

PARAMETERS = '''
import json, numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(
            [json.dumps([json.loads(r.parameters()), r.correlation_id(), r.flags()])], dtype=np.object_))])
            for r in requests]
'''

DECOUPLED_ERROR = '''
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            x = r.inputs()[0].as_numpy()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("boom in the middle", pb_utils.TritonError.INVALID_ARG)))
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + 1)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

#: Waits up to 20 s for the client to go away; says in a gauge how long it waited, labelled by request id.
CANCELLABLE = '''
import time
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        self.family = pb_utils.MetricFamily(name="cancel_seen", description="Cancellations seen", kind=pb_utils.MetricFamily.GAUGE)

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            self.family.Metric(labels={"id": r.request_id(), "how": "started"}).set(1.0)
            start = time.monotonic()
            while time.monotonic() - start < 20 and not r.is_cancelled():
                time.sleep(0.01)
            self.family.Metric(labels={"id": r.request_id(), "how": "request"}).set(time.monotonic() - start)
            self.family.Metric(labels={"id": r.request_id(), "how": "sender"}).set(float(sender.is_cancelled()))
            # a gauge reads 0 from its creation until its set arrives: this one says the two above are set
            self.family.Metric(labels={"id": r.request_id(), "how": "done"}).set(1.0)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

#: Calls ``cancellable`` through decoupled BLS and cancels the call after 0.3 s.
BLS_CANCEL = '''
import json, time, numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            call = pb_utils.InferenceRequest(model_name="cancellable", inputs=[r.inputs()[0]],
                                             requested_output_names=["OUTPUT0"], request_id="bls")
            responses = call.exec(decoupled=True)
            time.sleep(0.3)
            start = time.monotonic()
            responses.cancel()
            count = sum(1 for _ in responses)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(
                [json.dumps([count, time.monotonic() - start])], dtype=np.object_))]))
        return out
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("pbutils"))
    write_python_model(repo, "metrics", METRICS, TEXT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "management", MANAGEMENT, TEXT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "echo", ECHO, ECHO_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "parameters", PARAMETERS, TEXT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "decoupled_error", DECOUPLED_ERROR, ECHO_CONFIG.replace("{extra}", DECOUPLED))
    write_python_model(repo, "cancellable", CANCELLABLE, ECHO_CONFIG.replace("{extra}", DECOUPLED))
    write_python_model(repo, "bls_cancel", BLS_CANCEL, TEXT_CONFIG.replace("{extra}", ""))
    models = ["metrics", "management", "parameters", "decoupled_error", "cancellable", "bls_cancel"]
    with RunningServer([repo], ["--model-control-mode=explicit", *[f"--load-model={m}" for m in models]]) as s:
        yield s


def call(server: RunningServer, model: str, x: float = 1.0, **kwargs) -> dict:  # type: ignore[no-untyped-def]
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([x], np.float32))
    return json.loads(client.infer(model, [tensor], **kwargs).as_numpy("OUT")[0])


def scrape(server: RunningServer, prefix: str) -> list[str]:
    with urllib.request.urlopen(server.metrics_url) as r:
        return [line for line in r.read().decode().splitlines() if prefix in line]


def test_custom_metrics_on_the_metrics_endpoint(server: RunningServer) -> None:
    first = call(server, "metrics", 2.5, parameters={"op": "update"})
    second = call(server, "metrics", 7.0, parameters={"op": "update"})
    assert first == {"c": 2.5, "g": 2.5, "same": 2.5}
    assert second == {"c": 9.5, "g": 7.0, "same": 9.5}  # value() sees every update sent before it
    lines = scrape(server, "custom_")
    assert "# HELP custom_requests Requests seen" in lines
    assert "# TYPE custom_requests counter" in lines
    assert 'custom_requests{kind="x",model="metrics"} 9.5' in lines
    assert "# TYPE custom_last_value gauge" in lines
    assert 'custom_last_value{model="metrics"} 7.0' in lines
    assert "# HELP custom_sizes Input sizes" in lines and "# TYPE custom_sizes histogram" in lines
    assert 'custom_sizes_count{model="metrics"} 2.0' in lines
    assert 'custom_sizes_sum{model="metrics"} 9.5' in lines
    assert 'custom_sizes_bucket{le="1",model="metrics"} 0.0' in lines
    assert 'custom_sizes_bucket{le="5",model="metrics"} 1.0' in lines
    assert 'custom_sizes_bucket{le="10",model="metrics"} 2.0' in lines
    assert 'custom_sizes_bucket{le="+Inf",model="metrics"} 2.0' in lines


def test_custom_metric_misuse_gives_tritons_errors(server: RunningServer) -> None:
    errors = call(server, "metrics", parameters={"op": "errors"})
    prefix = "EXC TritonModelException: "
    assert errors["negative"] == prefix + (
        "Failed to increment metric value: Failed to process the request for model 'metrics_0', message: "
        "TRITONSERVER_METRIC_KIND_COUNTER can only be incremented monotonically by non-negative values.")
    assert errors["counter_set"].endswith("TRITONSERVER_METRIC_KIND_COUNTER does not support Set")
    assert errors["gauge_observe"].endswith("TRITONSERVER_METRIC_KIND_GAUGE does not support Observe")
    assert errors["histogram_value"].endswith("TRITONSERVER_METRIC_KIND_HISTOGRAM does not support Value")
    assert errors["no_buckets"] == prefix + "Failed to create metric. Missing required buckets."
    assert errors["buckets"] == prefix + "Failed to create metric. Unexpected buckets found."
    assert errors["other_kind"].startswith(prefix + "Error when creating MetricFamily")
    assert errors["other_kind"].endswith("Family name already exists with different type")
    assert errors["bad_name"].endswith("Invalid metric name")
    assert errors["kinds"] == [0, 1, 2]


def test_deleting_a_family_removes_its_metrics(server: RunningServer) -> None:
    call(server, "metrics", parameters={"op": "make_temporary"})
    assert 'custom_temporary{a="1"} 5.0' in scrape(server, "custom_temporary")
    call(server, "metrics", parameters={"op": "drop_metric"})  # Triton keeps the series while the family lives
    assert 'custom_temporary{a="1"} 5.0' in scrape(server, "custom_temporary")
    call(server, "metrics", parameters={"op": "drop_family"})
    assert scrape(server, "custom_temporary") == []


def test_model_management_from_model_code(server: RunningServer) -> None:
    result = call(server, "management")
    assert result["ready_before"] == "False"
    assert result["load"] == "None"
    assert result["ready_after"] == "True" and result["ready_v1"] == "True"
    assert result["ready_v9"] == "False"
    assert result["load_unknown"].startswith(
        "EXC TritonModelException: Failed to load model: Failed to process the request for model 'management_0', "
        "message: ")
    assert "nope" in result["load_unknown"]
    assert result["load_files"] == "None" and result["ready_tripler"] == "True"
    assert result["unload"] == "None"
    assert result["ready_after_unload"] == "False"
    assert result["unload_unknown"] == "None"  # unknown models unload fine, as in Triton
    client = httpclient.InferenceServerClient(server.url)
    tensor = httpclient.InferInput("INPUT0", [2], "FP32")
    tensor.set_data_from_numpy(np.array([1, 2], np.float32))
    assert client.infer("tripler", [tensor]).as_numpy("OUTPUT0").tolist() == [3, 6]


def test_sequence_parameters_are_not_request_parameters(server: RunningServer) -> None:
    params, correlation_id, flags = call(server, "parameters", parameters={"foo": "bar"}, sequence_id=5,
                                         sequence_start=True)
    # Over HTTP too the model sees only the client's own parameters (no sequence_*, no binary_data_output).
    assert (params, correlation_id, flags) == ({"foo": "bar"}, 5, 1)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1], np.float32))
    result = client.infer("parameters", [tensor], parameters={"foo": "bar"}, sequence_id=7, sequence_end=True)
    assert json.loads(result.as_numpy("OUT")[0]) == [{"foo": "bar"}, 7, 2]


def stream_results(client: grpcclient.InferenceServerClient):  # type: ignore[no-untyped-def]
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    return results


def test_decoupled_error_response_keeps_the_stream_open(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results = stream_results(client)
    tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1], np.float32))
    try:
        for request_id in ("a", "b"):  # the stream serves the next request after the error, too
            client.async_stream_infer("decoupled_error", [tensor], request_id=request_id,
                                      enable_empty_final_response=True)
            got = [results.get(timeout=20) for _ in range(4)]
            assert got[0][0].as_numpy("OUTPUT0").tolist() == [1.0]
            assert got[1][0] is None and "boom in the middle" in str(got[1][1])
            assert got[2][0].as_numpy("OUTPUT0").tolist() == [2.0]
            final = got[3][0].get_response()
            assert final.parameters["triton_final_response"].bool_param and final.id == request_id
    finally:
        client.stop_stream()


def waited_until_cancelled(server: RunningServer, request_id: str) -> tuple[float, list[str]]:
    """How long ``cancellable`` waited for request ``request_id`` to be cancelled (its gauge)."""
    deadline = time.monotonic() + 15
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = scrape(server, f'id="{request_id}"')
        if f'cancel_seen{{how="done",id="{request_id}"}} 1.0' in lines:
            return [float(line.split()[-1]) for line in lines if 'how="request"' in line][0], lines
        time.sleep(0.1)
    raise AssertionError(f"the model never finished request '{request_id}'")


def test_cancelled_stream_request_is_seen_by_the_model(server: RunningServer) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    stream_results(client)
    tensor = grpcclient.InferInput("INPUT0", [1], "FP32")
    tensor.set_data_from_numpy(np.array([1], np.float32))
    client.async_stream_infer("cancellable", [tensor], request_id="stream")
    deadline = time.monotonic() + 15
    while not scrape(server, 'how="started",id="stream"') and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the model is executing, and has waited this long
    client.stop_stream(cancel_requests=True)
    waited, lines = waited_until_cancelled(server, "stream")
    assert 0.3 < waited < 10, lines  # it stopped early, well before its 20 s
    assert 'cancel_seen{how="sender",id="stream"} 1.0' in lines


def test_cancelled_bls_call_is_seen_by_the_called_model(server: RunningServer) -> None:
    count, seconds = call(server, "bls_cancel")
    waited, _ = waited_until_cancelled(server, "bls")
    assert 0.2 < waited < 10
    # the iteration ended once cancelled, with only the final flag, which a decoupled BLS iterator yields as an
    # empty response (as Triton 2.51 does; its iterator has no cancel() yet)
    assert count == 1 and seconds < 10


def test_models_metrics_go_when_it_unloads(server: RunningServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    call(server, "metrics", 1.0, parameters={"op": "update"})
    assert scrape(server, "custom_requests{")
    client.unload_model("metrics")
    deadline = time.monotonic() + 15
    while scrape(server, "custom_") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scrape(server, "custom_") == []
    client.load_model("metrics")
    assert call(server, "metrics", 2.0, parameters={"op": "update"})["c"] == 2.0  # a fresh family


def test_load_model_needs_explicit_mode(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = str(tmp_path)
    write_python_model(repo, "management", MANAGEMENT, TEXT_CONFIG.replace("{extra}", ""))
    with RunningServer([repo]) as s:
        result = call(s, "management")
    assert result["load"] == ("EXC TritonModelException: Failed to load model: Failed to process the request for "
                              "model 'management_0', message: explicit model load / unload is not allowed if "
                              "polling is enabled")
    assert result["unload"].startswith("EXC TritonModelException: Failed to unload model")
    assert result["ready_before"] == "False"
