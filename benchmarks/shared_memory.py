"""System shared memory against binary HTTP: requests/s and latency of one client calling an identity model with
its input and output in registered regions (``tritonclient.utils.shared_memory``), or in the request and
response bodies (binary extension), for 4 KiB, 1 MiB and 16 MiB tensors, on an identity ONNX model and an
identity ``model.py`` (Python backend).

Rounds alternate the order of the modes (and of the servers, with several ``--server``), and the table shows
the median over rounds of each cell, so that a noisy machine hits both sides alike.  ``--server LABEL=SRC``
(repeatable) starts one server per source tree (``SRC`` is a ``src`` folder put first on ``PYTHONPATH``), to
compare two versions of tritium in the same run, e.g. the tree before a change (``git archive``) and after::

    python benchmarks/shared_memory.py [--duration 2] [--rounds 3] [--sizes 4096,1048576,16777216]
    python benchmarks/shared_memory.py --server before=/tmp/before/src --server after=src

Needs ``tritonclient[http]``, ``onnx`` and ``onnxruntime`` (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from models import identity_graph, write_model  # noqa: E402
from server import free_port  # noqa: E402

IDENTITY_PY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
"""

MODELS = {"onnx": "identity_onnx", "python": "identity_py"}


def build_repo(root: str) -> None:
    config = """
        backend: "{backend}"
        max_batch_size: 0
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
    """
    write_model(root, "identity_onnx", identity_graph("FP32", ("n",)), config=config.format(backend="onnxruntime"))
    model_dir = write_model(root, "identity_py", config=config.format(backend="python"))
    with open(os.path.join(model_dir, "1", "model.py"), "w") as f:
        f.write(IDENTITY_PY)


def start(repo: str, src: str, log_path: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={port}",
         "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false", "--allow-client-shm=true"],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server from {src} exited with {proc.returncode}; see {log_path}")
        try:
            if client.is_server_ready():
                return proc, f"127.0.0.1:{port}"
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server from {src} did not become ready; see {log_path}")


class Caller:
    """One client of one server: a call per (model, size, mode), with its regions registered."""

    def __init__(self, url: str, sizes: list[int], tag: str) -> None:
        import tritonclient.http as httpclient
        import tritonclient.utils.shared_memory as shm

        self.httpclient, self.shm = httpclient, shm
        self.client = httpclient.InferenceServerClient(url, network_timeout=600, connection_timeout=600)
        self.client.unregister_system_shared_memory()
        self.inputs = {size: np.random.default_rng(size).random(size // 4, dtype=np.float32) for size in sizes}
        self.handles = []
        for size in sizes:
            for side in ("in", "out"):
                key = f"/tritium_bench_{os.getpid()}_{tag}_{side}_{size}"
                handle = shm.create_shared_memory_region(f"{side}_{size}", key, size)
                self.handles.append(handle)
                self.client.register_system_shared_memory(f"{side}_{size}", key, size)
                if side == "in":
                    shm.set_shared_memory_region(handle, [self.inputs[size]])
                else:
                    self.out_handles = getattr(self, "out_handles", {})
                    self.out_handles[size] = handle

    def call(self, model: str, size: int, mode: str) -> Callable[[], np.ndarray]:
        httpclient, x = self.httpclient, self.inputs[size]
        if mode == "binary":
            def body() -> np.ndarray:
                tensor = httpclient.InferInput("INPUT0", [x.size], "FP32")
                tensor.set_data_from_numpy(x)
                output = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
                return self.client.infer(model, [tensor], outputs=[output]).as_numpy("OUTPUT0")
            return body
        handle = self.out_handles[size]

        def shared() -> np.ndarray:
            tensor = httpclient.InferInput("INPUT0", [x.size], "FP32")
            tensor.set_shared_memory(f"in_{size}", size)
            output = httpclient.InferRequestedOutput("OUTPUT0")
            output.set_shared_memory(f"out_{size}", size)
            self.client.infer(model, [tensor], outputs=[output])
            return self.shm.get_contents_as_numpy(handle, np.float32, [x.size])
        return shared

    def close(self) -> None:
        try:
            self.client.unregister_system_shared_memory()
        finally:
            for handle in self.handles:
                self.shm.destroy_shared_memory_region(handle)


def measure(call: Callable[[], np.ndarray], duration: float, min_calls: int = 5) -> dict[str, float]:
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < duration:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - start
    times.sort()
    return {"rps": len(times) / elapsed, "p50": times[len(times) // 2] * 1e3,
            "p99": times[min(len(times) - 1, len(times) * 99 // 100)] * 1e3}


def size_label(size: int) -> str:
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=2.0, help="seconds per cell and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="4096,1048576,16777216")
    ap.add_argument("--models", default="onnx,python")
    ap.add_argument("--server", action="append", default=[], metavar="LABEL=SRC",
                    help="a tritium source tree to measure (default: this checkout's src)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    models = args.models.split(",")
    servers = [tuple(s.split("=", 1)) for s in args.server] or [("tritium", os.path.join(HERE, "..", "src"))]
    workdir = tempfile.mkdtemp(prefix="tritium-shmbench-")
    repo = os.path.join(workdir, "repo")
    build_repo(repo)
    procs: list[subprocess.Popen] = []
    callers: dict[str, Caller] = {}
    results: dict[tuple, list[dict[str, float]]] = {}
    try:
        for index, (label, src) in enumerate(servers):
            proc, url = start(repo, src, os.path.join(workdir, f"{label}.log"))
            procs.append(proc)
            callers[label] = Caller(url, sizes, str(index))
        for label, caller in callers.items():  # correct answers first, and warm every path
            for model in models:
                for size in sizes:
                    for mode in ("binary", "shm"):
                        call = caller.call(MODELS[model], size, mode)
                        for _ in range(3):
                            got = call()
                        assert np.array_equal(got, caller.inputs[size]), (label, model, size, mode)
        for round_index in range(args.rounds):
            order = list(callers) if round_index % 2 == 0 else list(reversed(callers))
            modes = ("binary", "shm") if round_index % 2 == 0 else ("shm", "binary")
            for model in models:
                for size in sizes:
                    for label in order:
                        for mode in modes:
                            call = callers[label].call(MODELS[model], size, mode)
                            results.setdefault((label, model, size, mode), []).append(measure(call, args.duration))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        print(f"one client, sequential calls; median of {args.rounds} alternating rounds of {args.duration:g} s each")
        print(f"{'server':>10} {'model':>7} {'tensor':>7} {'mode':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
              f" {'shm/binary req/s':>17}")
        for model in models:
            for size in sizes:
                for label in callers:
                    cells = {}
                    for mode in ("binary", "shm"):
                        runs = results[(label, model, size, mode)]
                        cells[mode] = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
                    for mode in ("binary", "shm"):
                        c = cells[mode]
                        ratio = f"{cells['shm']['rps'] / cells['binary']['rps']:.2f}" if mode == "shm" else ""
                        print(f"{label:>10} {model:>7} {size_label(size):>7} {mode:>7} {c['rps']:>8.1f} "
                              f"{c['p50']:>8.2f} {c['p99']:>8.2f} {ratio:>17}")
    finally:
        for caller in callers.values():
            try:
                caller.close()
            except Exception:
                pass
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
