"""Dynamic batching and instance counts: the 256→1024→1024→256 ONNX MLP served by tritium, measured with wrk.

For 1 and 2 instances, with and without ``dynamic_batching``, at 1, 8, 32 and 64 connections (binary
HTTP bodies, or JSON ones with ``--mode json``; one row per request), prints requests/s, p50 and p99,
the CPU time the server's processes spent per request (``cpu us``; for Triton, its server and stubs), and
the ceiling: rows/s of the same model run in-process with onnxruntime at the best batch size,
measured in the same run.

    python benchmarks/batching.py [--duration 5] [--connections 1,8,32,64] [--delay-us 500] [--mode json]

With ``--triton-python PYTHON`` (an interpreter whose environment has ``nvidia-pytriton``) it also starts
real Triton through ``../shared/tools/real_triton.sh`` on the same four variants as Python-backend models
computing the same MLP (the same ONNX file through onnxruntime when Triton's environment has it, else numpy;
the Python backend is the only backend that Triton build carries), and measures it in the same
run.  ``--triton-url host:port`` drives an already running server serving the same model names instead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from http_infer import (
    LUA,
    alternating,
    bodies,
    median_runs,
    paired_ratio,
    run_wrk,
    wait_live,
    wrk_columns,
    wrk_header,
)
from models import mlp_graph, save_model, write_model

VARIANTS = {  # name -> (instances, dynamic batching)
    "mlp_1i": (1, False),
    "mlp_1i_batched": (1, True),
    "mlp_2i": (2, False),
    "mlp_2i_batched": (2, True),
}


def build_repo(root: str, delay_us: int) -> str:
    graph, _ = mlp_graph((256, 1024, 1024, 256))
    for name, (count, batched) in VARIANTS.items():
        batching = f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}" if batched else ""
        # Without dynamic_batching, max_batch_size 0 keeps Triton's default scheduler (auto-complete
        # would add dynamic batching to a batching model).
        mbs = 64 if batched else 0
        dims = "[ 256 ]" if batched else "[ -1, 256 ]"
        write_model(root, name, graph, config=f"""
            backend: "onnxruntime"
            max_batch_size: {mbs}
            input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
            output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
            {batching}
            instance_group [ {{ kind: KIND_CPU count: {count} }} ]
            parameters {{ key: "intra_op_thread_count" value: {{ string_value: "1" }} }}
        """)
    return save_model(graph, os.path.join(root, "..", "mlp.onnx"))


TRITON_MLP = """
import numpy as np
import triton_python_backend_utils as pb_utils

try:  # the same ONNX file through onnxruntime when Triton's environment has it, else numpy
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    SESSION = ort.InferenceSession(__file__.replace("model.py", "mlp.onnx"), options, providers=["CPUExecutionProvider"])
except ImportError:
    SESSION = None
WEIGHTS = np.load(__file__.replace("model.py", "weights.npz"))


def mlp(x):
    if SESSION is not None:
        return SESSION.run(None, {"INPUT0": x})[0]
    n = len(WEIGHTS.files) // 2
    for i in range(n):
        x = x @ WEIGHTS[f"w{i}"] + WEIGHTS[f"b{i}"]
        if i < n - 1:
            x = np.maximum(x, 0)
    return x


class TritonPythonModel:
    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        y = mlp(np.concatenate(xs))
        out, start = [], 0
        for xi in xs:
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y[start:start + len(xi)])]))
            start += len(xi)
        return out
"""


def build_triton_repo(root: str, delay_us: int, onnx_path: str) -> None:
    """The same variants as Python-backend models for real Triton: the same ONNX file through onnxruntime
    when Triton's Python environment has it (else the same weights with numpy)."""
    _, weights = mlp_graph((256, 1024, 1024, 256))
    arrays = {}
    for i, (w, b) in enumerate(weights):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    for name, (count, batched) in VARIANTS.items():
        batching = f"dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}" if batched else ""
        mbs = 64 if batched else 0
        dims = "[ 256 ]" if batched else "[ -1, 256 ]"
        os.makedirs(os.path.join(root, name, "1"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(f"""
                backend: "python"
                max_batch_size: {mbs}
                input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
                output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: {dims} }} ]
                {batching}
                instance_group [ {{ kind: KIND_CPU count: {count} }} ]
            """)
        with open(os.path.join(root, name, "1", "model.py"), "w") as f:
            f.write(TRITON_MLP)
        np.savez(os.path.join(root, name, "1", "weights.npz"), **arrays)
        shutil.copy(onnx_path, os.path.join(root, name, "1", "mlp.onnx"))


def start_triton(workdir: str, python: str, port: int, delay_us: int, onnx_path: str) -> subprocess.Popen:
    repo = os.path.join(workdir, "triton-repo")
    build_triton_repo(repo, delay_us, onnx_path)
    script = os.path.join(HERE, "..", "..", "shared", "tools", "real_triton.sh")
    log = open(os.path.join(workdir, "triton.log"), "wb")
    # One BLAS thread per model process, as tritium's onnxruntime instances get one intra-op thread.
    env = dict(os.environ, PYTRITON_PYTHON=python, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        ["bash", script, f"--model-repository={repo}", f"--http-port={port}", f"--grpc-port={port + 1}",
         f"--metrics-port={port + 2}"], stdout=log, stderr=log, env=env)


def ceiling(path: str) -> tuple[int, float]:
    """(best batch size, rows/s) of the model run directly with onnxruntime, one intra-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    best = (0, 0.0)
    for batch in (1, 8, 32, 64):
        x = np.random.default_rng(0).standard_normal((batch, 256)).astype(np.float32)
        session.run(None, {"INPUT0": x})
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            session.run(None, {"INPUT0": x})
            n += 1
        rate = n * batch / (time.perf_counter() - started)
        best = max(best, (batch, rate), key=lambda b: b[1])
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", default="1,8,32,64")
    ap.add_argument("--delay-us", type=int, default=500)
    ap.add_argument("--mode", choices=("binary", "json"), default="binary",
                    help="request and response bodies: binary tensor data, or tensors as JSON arrays")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every server this many times, alternating, and report medians (noisy machines)")
    ap.add_argument("--triton-url", help="also drive this running server (same model names)")
    ap.add_argument("--triton-python", help="also start real Triton with this interpreter and measure it")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="tritium-batching-")
    repo = os.path.join(workdir, "repo")
    onnx_path = build_repo(repo, args.delay_us)
    port = 18650
    url = f"127.0.0.1:{port}"
    log = open(os.path.join(workdir, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={port}",
                             "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false"],
                            stdout=log, stderr=log)
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    triton = None
    try:
        wait_live(url, proc)
        servers = [("tritium", url)] + ([("triton", args.triton_url)] if args.triton_url else [])
        pids = {"tritium": proc.pid}  # CPU per request counts each server's processes (not --triton-url's)
        if args.triton_python:
            # Both servers stay up (an idle one costs nothing) so that rounds can alternate between them.
            triton = start_triton(workdir, args.triton_python, 18660, args.delay_us, onnx_path)
            servers.append(("triton", "127.0.0.1:18660"))
            pids["triton"] = triton.pid
            wait_live("127.0.0.1:18660", triton, timeout=180)
        scripts = {}
        for name in args.variants.split(","):
            body, ctype, extra = bodies(workdir, name, (1, 256))[args.mode]
            scripts[name] = os.path.join(workdir, f"{name}.lua")
            with open(scripts[name], "w") as f:
                f.write(LUA.format(body=body, content_type=ctype, extra=extra))
            for _, server_url in servers:
                run_wrk(server_url, name, scripts[name], 8, 1, 1)  # warm up
        for round_index in range(args.rounds):
            for name, lua in scripts.items():
                for c in (int(x) for x in args.connections.split(",")):
                    for label, server_url in alternating(servers, round_index):
                        results.setdefault((label, name, c), []).append(
                            run_wrk(server_url, name, lua, c, args.duration, 1, pids.get(label)))
        batch, rate = ceiling(onnx_path)
    finally:
        for p in (proc, triton):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(results, args.rounds)
    print(f"ceiling: onnxruntime in-process, 1 thread, batch {batch}: {rate:,.0f} rows/s")
    return 0


def print_table(results: dict[tuple[str, str, int], list[dict[str, float]]], rounds: int) -> None:
    """One row per server, model and connection count: the median run (by req/s) and, with several
    rounds, every round's req/s; then the ratios the scheduling issue asks about."""
    median = median_runs(results)
    print(f"{'server':<8} {'model':<16} {'conns':>5} {wrk_header(rounds)}")
    for (label, name, c), r in sorted(median.items(), key=lambda kv: (kv[0][0] != "tritium", kv[0][0], kv[0][1], kv[0][2])):
        print(f"{label:<8} {name:<16} {c:>5} {wrk_columns(r, results[(label, name, c)], rounds)}")
    print("ratios: the median of each round's ratio, runs made back to back (range over rounds)")
    for (label, name, c), runs in sorted(results.items()):
        plain = results.get((label, name.replace("_batched", ""), c))
        if name.endswith("_batched") and plain:
            line = f"{label}: {name} / {name.replace('_batched', '')} at {c} conns = {paired_ratio(runs, plain)}"
            other = results.get(("triton", name, c))
            if label == "tritium" and other:
                line += f"; tritium / triton = {paired_ratio(runs, other)}"
                if "cpu_us" in runs[0] and "cpu_us" in other[0]:
                    line += f", CPU per request {paired_ratio(runs, other, 'cpu_us')}"
            print(line)


if __name__ == "__main__":
    sys.exit(main())
