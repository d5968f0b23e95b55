"""Prometheus for real (issue 28): Debian's ``prometheus`` scrapes two tritium replicas every second, load runs,
and Prometheus's HTTP API answers for tritium's series, for every PromQL query of the shipped Grafana dashboard
(deploy/grafana/dashboard.json, Triton's Kubernetes dashboard) and for the Prometheus adapter's rules behind the
chart's HorizontalPodAutoscaler (deploy/prometheus/adapter-values.yaml).

The scrape config gives each replica the ``namespace`` and ``pod`` labels that the Prometheus Operator's
ServiceMonitor gives it in a cluster, since the dashboard and the adapter group by them.  One replica is started
with the exact command line of deploy/kserve/servingruntime.yaml (Triton's flags as KServe passes them), only its
ports and repository path replaced by the test's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import yaml

from models import identity_graph, write_model
from server import ROOT, RunningServer, ServerProcess, free_port, stop_process

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None,
                                reason="needs Debian's prometheus (scripts/system-packages.txt; scripts/test.sh "
                                       "installs it as root)")

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboard.json")
ADAPTER_VALUES = os.path.join(ROOT, "deploy", "prometheus", "adapter-values.yaml")
SERVING_RUNTIME = os.path.join(ROOT, "deploy", "kserve", "servingruntime.yaml")
NAMESPACE = "default"
PODS = ("tritium-0", "tritium-1")

CONFIG = """
    max_batch_size: 8
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    dynamic_batching { max_queue_delay_microseconds: 2000 }
"""


def kserve_replica(repo: str) -> ServerProcess:
    """tritium started with the ServingRuntime's container args (``tritium`` and Triton's flags, run by the image's
    entrypoint), ports and model store replaced."""
    with open(SERVING_RUNTIME) as f:
        container = yaml.safe_load(f)["spec"]["containers"][0]
    program, *flags = container["args"]
    assert program == "tritium" and "command" not in container
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    replace = {"--model-store": repo, "--http-port": str(http_port), "--grpc-port": str(grpc_port)}
    args = []
    for arg in flags:
        flag, _, value = arg.partition("=")
        args.append(f"{flag}={replace.get(flag, value)}")
    assert [a.split("=")[0] for a in args] == [a.split("=")[0] for a in flags]
    # Not KServe's flags: the metrics port (KServe leaves tritonserver's 8002) is taken from the test's free ports.
    args += [f"--metrics-port={metrics_port}"]
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tritium-kserve-{http_port}.log")
    cmd = [sys.executable, "-m", "tritium", *args]
    return ServerProcess(cmd, log_path, dict(os.environ, PYTHONUNBUFFERED="1"), http_port, grpc_port, metrics_port)


class Prometheus:
    """Debian's prometheus on a free port, scraping ``targets`` (address -> extra labels) every second."""

    def __init__(self, workdir: str, targets: dict[str, dict[str, str]]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "tritium",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [address], "labels": labels} for address, labels in targets.items()],
            }],
        }
        config_path = os.path.join(workdir, "prometheus.yml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config_path}", f"--storage.tsdb.path={os.path.join(workdir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready in {timeout}s:\n{self.output()}")

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer (an error answer fails the test with its text)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{path} {params}: HTTP {e.code}: {e.read().decode()}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel of the shipped dashboard."""
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def adapter_queries() -> dict[str, str]:
    """The adapter's metric name -> its metricsQuery as the adapter sends it when the HPA asks for every pod of the
    namespace (``<<.LabelMatchers>>``: namespace and pods; ``<<.GroupBy>>``: pod)."""
    with open(ADAPTER_VALUES) as f:
        rules = yaml.safe_load(f)["rules"]["custom"]
    matchers = f'namespace="{NAMESPACE}",pod=~"{"|".join(PODS)}"'
    return {rule["name"]["as"]: rule["metricsQuery"].replace("<<.LabelMatchers>>", matchers)
            .replace("<<.GroupBy>>", "pod") for rule in rules}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("repo"))
    write_model(repo, "identity", identity_graph("FP32", ("batch", 4)), config=CONFIG)
    workdir = str(tmp_path_factory.mktemp("prometheus"))
    with RunningServer([repo]) as first, kserve_replica(repo) as second:
        second.wait_live()
        replicas = dict(zip(PODS, (first, second)))
        prometheus = Prometheus(workdir, {f"127.0.0.1:{s.metrics_port}": {"namespace": NAMESPACE, "pod": pod}
                                          for pod, s in replicas.items()})
        try:
            prometheus.wait_ready()
            yield prometheus, replicas
        finally:
            prometheus.stop()


def load(replicas: dict[str, ServerProcess], seconds: float) -> None:
    """Requests to every replica from a few threads for ``seconds`` (bounded)."""
    stop_at = time.monotonic() + seconds

    def run(url: str) -> None:
        client = httpclient.InferenceServerClient(url)
        inp = httpclient.InferInput("INPUT0", [2, 4], "FP32")
        inp.set_data_from_numpy(np.ones((2, 4), np.float32))
        try:
            for _ in range(2000):
                if time.monotonic() > stop_at:
                    break
                client.infer("identity", [inp])
        finally:
            client.close()

    threads = [threading.Thread(target=run, args=(s.url,)) for s in replicas.values() for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


def eventually(prometheus: Prometheus, replicas: dict[str, ServerProcess], check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    """``check`` until it passes, with load between tries: scrapes land every second, and a rate needs two samples
    in its window (the earlier tests' load usually still is)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        load(replicas, 2.0)
        time.sleep(1.5)  # a scrape after the load


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def test_prometheus_scrapes_both_replicas(stack):
    prometheus, _ = stack

    def check() -> None:
        targets = prometheus.api("targets")["activeTargets"]
        assert sorted(t["labels"]["pod"] for t in targets) == sorted(PODS)
        assert all(t["health"] == "up" for t in targets), targets

    eventually(prometheus, stack[1], check)


def test_series_rates_and_queue_time(stack):
    prometheus, replicas = stack

    def check() -> None:
        series = prometheus.api("series", **{"match[]": 'nv_inference_queue_duration_us{model="identity"}'})
        assert sorted(s["pod"] for s in series) == sorted(PODS), series
        assert all(s["version"] == "1" for s in series)
        rate = prometheus.query('sum by (pod) (rate(nv_inference_request_success{model="identity"}[30s]))')
        assert sorted(r["metric"]["pod"] for r in rate) == sorted(PODS)
        assert all(v > 0 for v in _values(rate)), rate
        queue = prometheus.query('sum by (pod) (rate(nv_inference_queue_duration_us{model="identity"}[30s]))')
        assert len(queue) == len(PODS) and all(v > 0 for v in _values(queue)), queue
        failures = prometheus.query('sum by (pod) (nv_inference_request_failure{model="identity"})')
        assert sorted(r["metric"]["pod"] for r in failures) == sorted(PODS), failures

    eventually(prometheus, replicas, check)


DASHBOARD_QUERIES = dashboard_queries()


@pytest.mark.parametrize(("title", "expr"), DASHBOARD_QUERIES, ids=[f"{t}:{e[:40]}" for t, e in DASHBOARD_QUERIES])
def test_every_dashboard_query_returns_data(stack, title, expr):
    """Each query of Triton's dashboard answers with at least one sample, and every number is a number (no NaN:
    e.g. a division by an absent rate)."""
    prometheus, replicas = stack

    def check() -> list[dict[str, Any]]:
        result = prometheus.query(expr)
        assert result, f"{title}: {expr} returned no data"
        assert all(np.isfinite(v) for v in _values(result)), result
        return result

    result = eventually(prometheus, replicas, check)
    if "by (pod)" in expr:
        assert sorted(r["metric"]["pod"] for r in result) == sorted(PODS), result
    if expr.startswith("count(count(nv_inference_count) by (instance))"):
        assert _values(result) == [float(len(PODS))]


def test_dashboard_has_no_gpu_panels():
    """The dashboard's queries use only tritium's per-model series; none needs a GPU (nv_gpu_*), so none is left
    out on this CPU-only machine."""
    assert DASHBOARD_QUERIES
    assert not [expr for _, expr in DASHBOARD_QUERIES if "nv_gpu" in expr or "nv_energy" in expr]


@pytest.mark.parametrize("metric", sorted(adapter_queries()))
def test_adapter_rules_behind_the_autoscaler_return_data(stack, metric):
    """The Prometheus adapter's queries (what the HorizontalPodAutoscaler reads) give one finite value per pod."""
    prometheus, replicas = stack
    expr = adapter_queries()[metric]

    def check() -> list[dict[str, Any]]:
        result = prometheus.query(expr)
        assert sorted(r["metric"].get("pod") for r in result) == sorted(PODS), (expr, result)
        assert all(np.isfinite(v) and v >= 0 for v in _values(result)), result
        return result

    result = eventually(prometheus, replicas, check)
    if metric == "avg_time_queue_us":
        assert all(v > 0 for v in _values(result)), result
