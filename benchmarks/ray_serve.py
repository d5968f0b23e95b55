"""Ray Serve with tritium replicas against tritium's own HTTP frontend, on the same model, in one run.

Starts tritium (``python -m tritium``) on the repository of ``http_infer.py`` (identity FP32 [1,16]) and drives
``/v2/models/identity_fp32/infer`` with wrk; then a local Ray cluster of two nodes (one CPU each, every address
on loopback), Serve's HTTP proxy on the head node and ``tritium.ray.build_app`` with 1 and then 2 replicas, driven
by the same wrk commands through the proxy, and the handle API from this driver (``--handle-requests`` calls, 16 in
flight); last, 2 replicas that open tritium's own HTTP port (``frontends=True``, one port shared through
SO_REUSEPORT), driven directly: Ray places and restarts them, Serve's proxy is not on the path.  Prints one table: req/s, p50, p99, errors and the CPU the serving processes spent per request (tritium's
process tree; for Ray every process of the cluster), and the resident memory (RSS and PSS, summed over the
processes) of tritium alone and of the whole Ray cluster serving it.

    .venv-ray/bin/python benchmarks/ray_serve.py [--duration 10] [--connections 1,8] [--replicas 1,2]

Needs ``ray[serve]`` (scripts/test_ray.sh makes .venv-ray), ``wrk`` and ``onnx``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # "this node" is loopback, never the outward address
os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"  # the head's proxy routes to both nodes
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import numpy as np

from http_infer import _proc_stats, _tree, build_repo, measure, wait_live, wrk_columns, wrk_header
from server import free_port

LOOPBACK = "127.0.0.1"
NODE = {"node_ip_address": LOOPBACK, "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


def memory_mib(pids: list[int]) -> tuple[float, float]:
    """RSS and PSS (shared pages divided among their users: the honest sum) of ``pids``, in MiB."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def handle_rps(handle: Any, count: int, in_flight: int = 16) -> tuple[float, set[str]]:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    replicas: set[str] = set()
    start = time.perf_counter()
    for wave in range(0, count, in_flight):
        pending = [handle.infer.remote("identity_fp32", {"INPUT0": x}) for _ in range(min(in_flight, count - wave))]
        for response in pending:
            replicas.add(response.result(timeout_s=60).replica)
    return count / (time.perf_counter() - start), replicas


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", default="1,8")
    ap.add_argument("--modes", default="json,binary")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--replicas", default="1,2", help="Serve replica counts to measure, in turn")
    ap.add_argument("--handle-requests", type=int, default=2000)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    import tritium.ray as tritium_ray

    workdir = tempfile.mkdtemp(prefix="tritium-ray-bench-")
    repo = os.path.join(workdir, "repo")
    build_repo(repo)
    rows: list[tuple[str, str, str, int, dict[str, float]]] = []
    memory: list[tuple[str, float, float, int]] = []
    handles: list[tuple[str, float]] = []
    proc = None
    try:
        port = free_port()
        url = f"{LOOPBACK}:{port}"
        log = open(os.path.join(workdir, "server.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}",
                                 f"--http-port={port}", f"--http-address={LOOPBACK}", "--allow-grpc=false",
                                 "--allow-metrics=false"], stdout=log, stderr=log)
        wait_live(url, proc)
        rows += measure(args, workdir, url, "tritium", ["identity"], proc.pid)
        pids = _tree(proc.pid, _proc_stats())
        memory.append(("tritium (one process, its HTTP frontend)", *memory_mib(pids), len(pids)))
        proc.terminate()
        proc.wait(30)
        proc = None

        cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **NODE})
        try:
            cluster.add_node(**NODE)
            ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
            serve_port = free_port()
            serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": serve_port})
            serve_url = f"{LOOPBACK}:{serve_port}"
            for replicas in (int(r) for r in args.replicas.split(",")):
                app = tritium_ray.build_app(repo, name="tritium", num_replicas=replicas,
                                            logging_config={"enable_access_log": False})
                handle = serve.run(app, name="tritium", route_prefix="/")
                label = f"serve x{replicas}"
                # the cluster's processes: every descendant of this driver (GCS, raylets, Serve, replicas)
                rows += measure(args, workdir, serve_url, label, ["identity"], os.getpid())
                rps, seen = handle_rps(handle, args.handle_requests)
                handles.append((f"{label} handle API, 16 in flight ({len(seen)} replicas answered)", rps))
                pids = [pid for pid in _tree(os.getpid(), _proc_stats()) if pid != os.getpid()]
                memory.append((f"Ray cluster, 2 nodes, {replicas} tritium replica(s)", *memory_mib(pids), len(pids)))
            # Ray places and restarts the replicas, clients reach tritium's own HTTP frontend in each (one port
            # shared by the replicas of this one machine through SO_REUSEPORT; one port per node in a real cluster)
            direct_port = free_port()
            serve.run(tritium_ray.build_app(
                repo, name="tritium", num_replicas=2, frontends=True, logging_config={"enable_access_log": False},
                server_args=[f"--http-port={direct_port}", f"--http-address={LOOPBACK}", "--reuse-http-port=true",
                             "--allow-grpc=false", "--allow-metrics=false"]), name="tritium", route_prefix="/")
            direct_url = f"{LOOPBACK}:{direct_port}"
            wait_live(direct_url, None)
            rows += measure(args, workdir, direct_url, "direct x2", ["identity"], os.getpid())
        finally:
            serve.shutdown()
            ray.shutdown()
            cluster.shutdown()

        print(f"\n{'server':<12} {'model':<9} {'body':<7} {'conns':>5} {wrk_header(1)}")
        for label, key, mode, c, r in rows:
            print(f"{label:<12} {key:<9} {mode:<7} {c:>5} {wrk_columns(r, [r], 1)}")
        print()
        for label, rps in handles:
            print(f"{label:<60} {rps:>9.0f} req/s")
        print(f"\n{'resident memory':<48} {'RSS MiB':>9} {'PSS MiB':>9} {'procs':>6}")
        for label, rss, pss, count in memory:
            print(f"{label:<48} {rss:>9.0f} {pss:>9.0f} {count:>6}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
