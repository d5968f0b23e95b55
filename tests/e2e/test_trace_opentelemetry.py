"""Trace mode ``opentelemetry``: each traced request reaches an OTLP/HTTP collector as spans."""

from __future__ import annotations

import http.server
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from models import identity_graph, write_model
from server import RunningServer, free_port

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")


class _Collector(http.server.BaseHTTPRequestHandler):
    """A real OTLP/HTTP endpoint: decodes each export request with the OTLP protobuf messages."""

    spans: list = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service.ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    type(self).spans.append((resource, span))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def collector():
    _Collector.spans = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Collector)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_spans_exported_with_stage_events(tmp_path, collector):
    repo = tmp_path / "repo"
    write_model(str(repo), "identity_fp32", identity_graph("FP32", ("batch", 4)))
    url = f"http://127.0.0.1:{collector.server_address[1]}/v1/traces"
    args = ["--trace-config=mode=opentelemetry", "--trace-config=level=TIMESTAMPS", "--trace-config=rate=1",
            f"--trace-config=opentelemetry,url={url}", "--trace-config=opentelemetry,bsp_schedule_delay=50",
            "--trace-config=opentelemetry,resource=service.name=tritium-test"]
    with RunningServer([str(repo)], args) as s:
        client = httpclient.InferenceServerClient(s.url)
        assert client.get_trace_settings()["trace_mode"] == "opentelemetry"
        inp = httpclient.InferInput("INPUT0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        client.infer("identity_fp32", [inp], request_id="otel-1")
        deadline = time.monotonic() + 10
        while len(_Collector.spans) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
    by_name = {span.name: (resource, span) for resource, span in _Collector.spans}
    resource, root = by_name["InferRequest"]
    _, compute = by_name["compute"]
    assert resource["service.name"] == "tritium-test"
    attributes = {a.key: a.value for a in root.attributes}
    assert attributes["triton.model_name"].string_value == "identity_fp32"
    assert attributes["triton.model_version"].int_value == 1
    assert attributes["triton.request_id"].string_value == "otel-1"
    events = [e.name for e in root.events]
    assert events[0] == "HTTP_RECV_START" and events[-1] == "HTTP_SEND_END" and "QUEUE_START" in events
    assert compute.parent_span_id == root.span_id and compute.trace_id == root.trace_id
    assert [e.name for e in compute.events] == ["COMPUTE_START", "COMPUTE_INPUT_END", "COMPUTE_OUTPUT_START",
                                                "COMPUTE_END"]
    assert root.start_time_unix_nano <= compute.start_time_unix_nano <= compute.end_time_unix_nano <= root.end_time_unix_nano
    assert abs(root.start_time_unix_nano - time.time_ns()) < 60e9  # wall-clock epoch times, not monotonic
