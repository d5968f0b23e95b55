"""What hostile HTTP clients cost the server: memory under a pipelining non-reader, latency under an idle flood.

1. ``pipeline``: one client pipelines 40 ``/infer`` requests whose gzip bodies inflate to 16 MiB each (an
   identity model echoes them: 16 MiB responses) and never reads.  Prints the server's resident memory
   (VmRSS) growth at its peak while the client stays, and after it leaves; and checks that another client
   is answered correctly meanwhile.
2. ``flood``: the server runs under a descriptor limit (``--nofile``, default 1,024) while 1,100 idle
   connections try to hold it (reconnecting whenever closed).  Prints how long a new client's health
   check, a metrics scrape and a Python model's load take meanwhile.

    python benchmarks/hostile_clients.py [--scenarios pipeline,flood] [--requests 40] [--mib 16]
        [--connections 1100] [--nofile 1024]

Run it with ``PYTHONPATH=<another checkout>/src`` to measure another version of tritium.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from hostile import IdleFlood, connect, fd_count, get, inflating_infer_request, rss_mib  # noqa: E402
from models import echo_config, identity_graph, sleep_then_echo, write_model, write_python_model  # noqa: E402
from server import ServerProcess, free_port  # noqa: E402

IDENTITY_U8 = """
    backend: "onnxruntime"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_UINT8 dims: [ -1 ] } ]
"""


def make_repo(root: str) -> str:
    repo = os.path.join(root, "repo")
    write_model(repo, "identity_u8", identity_graph("UINT8", (-1,)), config=IDENTITY_U8)
    write_python_model(repo, "py_echo", sleep_then_echo(0.0), echo_config(0))
    return repo


def start(repo: str, args: list[str], nofile: int | None = None) -> ServerProcess:
    http, grpc, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={http}",
           "--http-address=127.0.0.1", f"--grpc-port={grpc}", "--grpc-address=127.0.0.1",
           f"--metrics-port={metrics}", "--metrics-address=127.0.0.1", *args]
    log = os.path.join(tempfile.gettempdir(), f"hostile-{http}.log")

    def limit() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    server = ServerProcess(cmd, log, dict(os.environ, PYTHONUNBUFFERED="1"), http, grpc, metrics, limit)
    server.wait_live(120)
    return server


def check_other_client(port: int, results: list[str], stop: threading.Event) -> None:
    """Another client, served correctly while the hostile one holds its connection."""
    x = (np.arange(1024) % 251).astype(np.uint8)
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "UINT8", "shape": [1024],
                                   "data": x.tolist()}]}).encode()
    while not stop.is_set():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/identity_u8/infer", data=body)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                out = json.load(r)["outputs"][0]["data"]
            results.append("ok" if out == x.tolist() else "wrong")
        except OSError as e:
            results.append(f"error: {e}")
        time.sleep(0.2)


def pipeline(repo: str, requests: int, mib: int) -> None:
    with start(repo, []) as server:
        pid, port = server.proc.pid, server.http_port
        one = inflating_infer_request("identity_u8", mib << 20)
        for _ in range(2):  # warm up: the model, the allocator, one response of the size
            with connect(port, 60) as s:
                s.sendall(one)
                data = b""
                while len(data) < (mib << 20):
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
        time.sleep(1)
        base, base_fds = rss_mib(pid), fd_count(pid)
        results: list[str] = []
        stop = threading.Event()
        other = threading.Thread(target=check_other_client, args=(port, results, stop))
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(one * requests)
        other.start()
        peak, start_t = base, time.monotonic()
        while time.monotonic() - start_t < 8:
            peak = max(peak, rss_mib(pid))
            time.sleep(0.05)
        held = rss_mib(pid)
        s.close()
        peak_after = 0.0
        start_t = time.monotonic()
        while time.monotonic() - start_t < 8:
            peak_after = rss_mib(pid)
            if peak_after - base < 8:
                break
            time.sleep(0.1)
        stop.set()
        other.join()
        time.sleep(0.5)
        print(f"pipeline: {requests} requests x {mib} MiB, client never reads")
        print(f"  baseline RSS {base:.0f} MiB; peak growth {peak - base:+.0f} MiB; after 8 s {held - base:+.0f} MiB")
        print(f"  after the client left: {peak_after - base:+.0f} MiB "
              f"({time.monotonic() - start_t:.1f} s); descriptors {base_fds} -> {fd_count(pid)}")
        print(f"  other client: {results.count('ok')} correct answers, {len(results) - results.count('ok')} not "
              f"{sorted(set(r for r in results if r != 'ok'))[:3]}")


def flood(repo: str, connections: int, nofile: int) -> None:
    args = ["--model-control-mode=explicit", "--load-model=identity_u8", "--allow-metrics=true"]
    with start(repo, args, nofile) as server:
        pid, port = server.proc.pid, server.http_port
        base_fds = fd_count(pid)
        attack = IdleFlood(port, connections).start()
        time.sleep(3)
        latencies, failures = [], []
        for _ in range(10):
            t = time.monotonic()
            try:
                status, _ = get(port, "/v2/health/ready", timeout=120)
                latencies.append(time.monotonic() - t)
                if status != 200:
                    failures.append(f"HTTP {status}")
            except OSError as e:
                failures.append(f"{type(e).__name__}: {e}")
            time.sleep(0.2)
        t = time.monotonic()
        try:
            with urllib.request.urlopen(server.metrics_url, timeout=120) as r:
                r.read()
            scrape = f"{(time.monotonic() - t) * 1000:.1f} ms"
        except OSError as e:
            scrape = f"failed ({e})"
        t = time.monotonic()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/repository/models/py_echo/load", data=b"",
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                load = f"{time.monotonic() - t:.2f} s (HTTP {r.status})"
        except OSError as e:
            load = f"failed ({e})"
        during_fds = fd_count(pid)
        held, reconnects = attack.held(), attack.reconnects
        attack.stop()
        time.sleep(2)
        print(f"flood: {connections} idle connections (reconnecting), server RLIMIT_NOFILE {nofile}")
        if latencies:
            print(f"  health check: median {statistics.median(latencies) * 1000:.1f} ms, "
                  f"max {max(latencies) * 1000:.1f} ms, {len(failures)} of 10 failed {failures[:2]}")
        else:
            print(f"  health check: all 10 failed {failures[:2]}")
        print(f"  metrics scrape {scrape}; model load {load}")
        print(f"  server descriptors: {base_fds} before, {during_fds} during, {fd_count(pid)} after; "
              f"client sockets open {held}, reconnects {reconnects}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="pipeline,flood")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--mib", type=int, default=16)
    ap.add_argument("--connections", type=int, default=1100)
    ap.add_argument("--nofile", type=int, default=1024)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as root:
        repo = make_repo(root)
        for scenario in args.scenarios.split(","):
            if scenario == "pipeline":
                pipeline(repo, args.requests, args.mib)
            elif scenario == "flood":
                flood(repo, args.connections, args.nofile)


if __name__ == "__main__":
    main()
