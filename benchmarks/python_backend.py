"""Python backend: the cost of crossing into a model's stub process, and HTTP throughput of an identity model.

1. In-process (no HTTP): one request holding a tensor of each size, through Triton's identity ``model.py``:
   median and p99 of the round trip.  Its input either lies in private memory (copied into the instance's
   shared-memory arena) or in a shared body block, as tensors of HTTP bodies of 64 KiB or more do; the
   output comes back as a view, not copied.  Called either on a thread (``execute``, blocking) or as the
   server calls it, from the event loop (``execute_async``, the reply read or polled for by the loop).
2. HTTP (wrk, binary body, FP32 [1,16]) at 1, 8 and 32 connections, and a 1 MiB tensor at 1 and 4, against
   the same ``model.py``; with ``--triton-python PYTHON`` also against real Triton on the same repository
   (side by side).  ``cpu us``: CPU time per request of the server and its model processes (tritium's
   stubs poll for work while executes come often, yielding the CPU on every poll: that polling counts).
3. BLS: a ``model.py`` that calls an identity ``model.py`` by ``InferenceRequest.exec()`` with a tensor of
   each size, timed inside the calling model (median and p90 of 40 calls), on both servers.
4. A 1 MiB tensor through the identity ``model.py`` from ``tritonclient.http``: in the request body, and
   through the system shared-memory extension (input and output in registered regions), on both servers.

    python benchmarks/python_backend.py [--duration 10] [--triton-python /work/triton-ref/.venv-triton/bin/python]
        [--parts http --rounds 5 --duration 4]

Where the time goes: ``TRITIUM_STUB_PROFILE=/tmp/stub.prof`` in the server's environment makes each stub write a
cProfile of its serve loop to ``/tmp/stub.prof.<pid>`` when its model is unloaded (``python -m pstats``); the
server itself, ``py-spy`` or ``perf record -g -p <pid>``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from tritium._proto import model_config_pb2 as mc  # noqa: E402
from tritium.backends.base import InstanceSpec, ModelContext  # noqa: E402
from tritium.backends.python.backend import PythonBackend  # noqa: E402
from tritium.config.parse import load_config_file  # noqa: E402
from tritium.core import shared_memory  # noqa: E402
from tritium.core.inference import InferenceRequest  # noqa: E402
from tritium.core.types import Tensor  # noqa: E402

import http_infer  # noqa: E402


def _loop_factory():  # type: ignore[no-untyped-def]
    try:
        import uvloop  # the server's loop where it is installed
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


async def _on_loop(instance, request, iterations):  # type: ignore[no-untyped-def]
    """Executes as the server runs them: sent from the event loop, the reply read by the loop's reader."""
    loop = asyncio.get_running_loop()
    times = []
    response = None
    for i in range(iterations + 50):
        future = loop.create_future()
        start = time.perf_counter_ns()
        instance.execute_async([request], loop, lambda responses, error: future.set_result((responses, error)))
        responses, error = await future
        elapsed = time.perf_counter_ns() - start
        assert error is None, error
        response = responses[0]
        if i >= 50:
            times.append(elapsed / 1000)
    return response, times


def crossing(repo: str, sizes: list[int], iterations: int, shared: bool = False,
             on_loop: bool = False) -> list[tuple[int, float, float]]:
    """``shared``: the input lies in shared memory, as the tensors of HTTP bodies of 64 KiB or more do
    (``core.shared_memory``); else in private memory, copied into the instance's arena.  ``on_loop``: through
    ``execute_async`` on an event loop (uvloop), as the server executes; else ``execute`` on this thread."""
    model_dir = os.path.join(repo, "identity_fp32")
    config = load_config_file(os.path.join(model_dir, "config.pbtxt"), "identity_fp32")
    config.default_model_filename = "model.py"
    backend = PythonBackend()
    backend.initialize({"shm-default-byte-size": str(8 << 20)})
    state = backend.model_initialize(ModelContext("identity_fp32", 1, model_dir, config))
    instance = state.instance_initialize(InstanceSpec("identity_fp32_0", "KIND_CPU", 0, mc.ModelInstanceGroup()))
    if on_loop:
        instance.execute([InferenceRequest("identity_fp32", inputs=[Tensor.from_numpy(
            "INPUT0", np.zeros((1, 4), np.float32))])])  # starts the stub (execute_async does not)
    rows = []
    runner = asyncio.Runner(loop_factory=_loop_factory())  # one loop: the instance's reader stays on it
    try:
        for size in sizes:
            x = np.random.default_rng(0).standard_normal((1, size // 4)).astype(np.float32)
            body = shared_memory.take(x.nbytes) if shared else None
            if body is not None:
                np.frombuffer(body, np.float32)[:] = x.reshape(-1)
                x = np.frombuffer(body, np.float32).reshape(x.shape)
            request = InferenceRequest("identity_fp32", inputs=[Tensor.from_numpy("INPUT0", x)])
            times = []
            if on_loop:
                response, times = runner.run(_on_loop(instance, request, iterations))
            else:
                for i in range(iterations + 50):
                    start = time.perf_counter_ns()
                    response = instance.execute([request])[0]
                    elapsed = time.perf_counter_ns() - start
                    if i >= 50:
                        times.append(elapsed / 1000)
            assert np.array_equal(response.outputs[0].data, x)  # type: ignore[union-attr]
            times.sort()
            rows.append((size, statistics.median(times), times[int(len(times) * 0.99)]))
    finally:
        instance.finalize()
        runner.close()
    return rows


#: Times BLS calls to ``identity_any`` from inside a model: input N (floats per call), output [median, p90] µs.
BLS_TIMER = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = np.random.rand(int(r.inputs()[0].as_numpy()[0])).astype(np.float32)
            times = []
            for _ in range(40):
                start = time.perf_counter()
                result = pb_utils.InferenceRequest(model_name="identity_any", inputs=[pb_utils.Tensor("INPUT0", x)],
                                                   requested_output_names=["OUTPUT0"]).exec()
                y = pb_utils.get_output_tensor_by_name(result, "OUTPUT0").as_numpy()
                times.append(time.perf_counter() - start)
                assert y.shape == x.shape
            times.sort()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("US", np.array(
                [times[20] * 1e6, times[36] * 1e6], np.float32))]))
        return out
"""


def add_bls_models(repo: str) -> None:
    """identity_any (the identity model.py on any length) and bls_timer, which calls it."""
    for name, code, io in (
        ("identity_any", http_infer.TRITON_IDENTITY, """
            input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
            output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]"""),
        ("bls_timer", BLS_TIMER, """
            input [ { name: "N" data_type: TYPE_FP32 dims: [ 1 ] } ]
            output [ { name: "US" data_type: TYPE_FP32 dims: [ 2 ] } ]"""),
    ):
        os.makedirs(os.path.join(repo, name, "1"))
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            f.write(f'backend: "python"\nmax_batch_size: 0\n{io}\ninstance_group [ {{ kind: KIND_CPU count: 1 }} ]\n')
        with open(os.path.join(repo, name, "1", "model.py"), "w") as f:
            f.write(code)


def bls_rows(url: str, sizes: list[int]) -> list[tuple[int, float, float]]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url, network_timeout=300)
    rows = []
    for size in [sizes[0], *sizes]:  # the first round warms both models up and is not reported
        tensor = httpclient.InferInput("N", [1], "FP32")
        tensor.set_data_from_numpy(np.array([size // 4], np.float32))
        median, p90 = client.infer("bls_timer", [tensor]).as_numpy("US").tolist()
        rows.append((size, median, p90))
    return rows[1:]


def shm_rows(url: str, calls: int = 300) -> list[tuple[str, float, float]]:
    """A 1 MiB tensor through the identity model.py with tritonclient.http: in the body (binary) and through the
    system shared-memory extension (input and output in registered regions).  Median and p90 µs per call."""
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    client = httpclient.InferenceServerClient(url, network_timeout=300)
    x = np.random.default_rng(0).random(262144, dtype=np.float32)
    keys = (f"/tritium_bench_{os.getpid()}_in", f"/tritium_bench_{os.getpid()}_out")
    handles = [shm.create_shared_memory_region(key[1:], key, x.nbytes) for key in keys]
    shm.set_shared_memory_region(handles[0], [x])

    def body() -> np.ndarray:
        tensor = httpclient.InferInput("INPUT0", [x.size], "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer("identity_any", [tensor]).as_numpy("OUTPUT0")

    def shared() -> np.ndarray:
        tensor = httpclient.InferInput("INPUT0", [x.size], "FP32")
        tensor.set_shared_memory("bench_in", x.nbytes)
        output = httpclient.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory("bench_out", x.nbytes)
        client.infer("identity_any", [tensor], outputs=[output])
        return shm.get_contents_as_numpy(handles[1], np.float32, [x.size])

    rows = []
    try:
        client.register_system_shared_memory("bench_in", keys[0], x.nbytes)
        client.register_system_shared_memory("bench_out", keys[1], x.nbytes)
        for label, call in (("binary body", body), ("system shm", shared)):
            assert np.array_equal(call(), x)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                call()
                times.append((time.perf_counter() - start) * 1e6)
            times.sort()
            rows.append((label, times[calls // 2], times[calls * 9 // 10]))
    finally:
        client.unregister_system_shared_memory()
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    return rows


def _counts(url: str, model: str) -> tuple[int, int]:
    """The model's inference and execution counts from the statistics extension (both servers have it):
    their ratio over a run is the requests per ``execute`` that the batcher formed."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=30) as reply:
        stats = json.load(reply)["model_stats"]
    return (sum(int(s.get("inference_count", 0)) for s in stats),
            sum(int(s.get("execution_count", 0)) for s in stats))


def _batch_hook(url: str, model: str):  # type: ignore[no-untyped-def]
    """For ``http_infer.measure``: adds ``batch``, the requests per execute of the run, to its result."""
    before = _counts(url, model)

    def after(result: dict[str, float]) -> None:
        now = _counts(url, model)
        executions = now[1] - before[1]
        result["batch"] = (now[0] - before[0]) / executions if executions else 0.0

    return after


def _print_crossing(repo: str, iterations: int) -> None:
    print("process crossing, in-process (execute of one request, identity model.py):")
    print(f"{'tensor':>10} {'input in':>12} {'called':>12} {'median us':>10} {'p99 us':>10}")
    sizes = [64, 64 << 10, 1 << 20, 4 << 20]
    for on_loop in (False, True):
        for shared in (False, True):
            where = "shared body" if shared else "private"
            called = "event loop" if on_loop else "thread"
            for size, median, p99 in crossing(repo, sizes if not shared else sizes[1:], iterations, shared, on_loop):
                print(f"{size:>10} {where:>12} {called:>12} {median:>10.1f} {p99:>10.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--big-connections", default="1,4", help="connections for the 1 MiB tensor")
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--parts", default="crossing,http,big,bls,shm",
                    help="what to run, of: crossing (in-process), http (FP32 [1,16] over HTTP), big (1 MiB over "
                         "HTTP), bls, shm")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times and report medians")
    ap.add_argument("--triton-python", help="also measure real Triton on the same model.py")
    ap.add_argument("--baseline-python", help="also measure tritium as installed for this interpreter (another "
                                              "checkout's .venv/bin/python: before and after, side by side)")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tritium-pybench-")
    repo = os.path.join(workdir, "triton-repo")  # the name http_infer.start_triton uses
    http_infer.build_triton_repo(repo)
    add_bls_models(repo)
    # The wrk config of http_infer's "identity" row: FP32 [1,16] into identity_fp32.
    args.modes, args.threads = "binary", 1
    parts = set(args.parts.split(","))
    procs: list[subprocess.Popen] = []
    try:
        if "crossing" in parts:
            _print_crossing(repo, args.iterations)
        if args.skip_http or not parts - {"crossing"}:
            return 0
        port = http_infer.free_port() if hasattr(http_infer, 'free_port') else 28710
        log = open(os.path.join(workdir, "server.log"), "wb")
        proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={port}",
                                 "--http-address=127.0.0.1", "--allow-grpc=false", "--allow-metrics=false",
                                 "--allow-client-shm=true"],
                                stdout=log, stderr=log)
        procs.append(proc)
        http_infer.wait_live(f"127.0.0.1:{port}", proc)
        servers = [("tritium", f"127.0.0.1:{port}")]
        pids = {"tritium": proc.pid}  # CPU per request counts each server's processes
        if args.baseline_python:
            # tritium as it was (another checkout's interpreter, tritium installed there), side by side
            log = open(os.path.join(workdir, "baseline.log"), "wb")
            proc = subprocess.Popen([args.baseline_python, "-m", "tritium", f"--model-repository={repo}",
                                     f"--http-port={port + 10}", "--http-address=127.0.0.1", "--allow-grpc=false",
                                     "--allow-metrics=false", "--allow-client-shm=true"],
                                    stdout=log, stderr=log, cwd="/")
            procs.append(proc)
            http_infer.wait_live(f"127.0.0.1:{port + 10}", proc)
            servers.append(("baseline", f"127.0.0.1:{port + 10}"))
            pids["baseline"] = proc.pid
        if args.triton_python:
            # Both stay up (idle they cost nothing) so that rounds can alternate between them; Triton's
            # repository is a copy of the same model.py.
            triton_workdir = os.path.join(workdir, "triton")
            os.makedirs(triton_workdir)
            proc = http_infer.start_triton(triton_workdir, args.triton_python, 28750, add_bls_models)
            procs.append(proc)
            http_infer.wait_live("127.0.0.1:28750", proc, timeout=120)
            servers.append(("triton", "127.0.0.1:28750"))
            pids["triton"] = proc.pid
        for model, what, connections in (("identity", "FP32 [1,16]", args.connections if "http" in parts else ""),
                                         ("identity_1mib", "FP32 [262144] (1 MiB)",
                                          args.big_connections if "big" in parts else "")):
            if not connections:
                continue
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            warm = True  # each server once, at the first measurement of this model
            for round_index in range(args.rounds):
                for c in (int(x) for x in connections.split(",")):
                    for label, url in http_infer.alternating(servers, round_index):
                        args_one = argparse.Namespace(**{**vars(args), "connections": str(c)})
                        for row in http_infer.measure(args_one, workdir, url, label, [model], pids[label],
                                                      functools.partial(_batch_hook, url), warm):
                            results.setdefault((label, c), []).append(row[4])
                    warm = False
            print(f"\nHTTP, identity model.py, {what}, binary body, wrk {args.duration}s"
                  + (f", median of {args.rounds} alternating rounds:" if args.rounds > 1 else ":"))
            print(f"{'server':<10} {'conns':>5} {http_infer.wrk_header(args.rounds)}")
            median = http_infer.median_runs(results)
            order = {label: i for i, (label, _) in enumerate(servers)}
            for (label, c), r in sorted(median.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
                print(f"{label:<10} {c:>5} {http_infer.wrk_columns(r, results[(label, c)], args.rounds)}"
                      f"  {statistics.median(x['batch'] for x in results[(label, c)]):.1f} requests/execute")
            print("paired ratios: median of each round's ratio of two runs made back to back (range):")
            for ours, theirs in (("tritium", "triton"), ("baseline", "triton"), ("tritium", "baseline")):
                for c in sorted({c for _, c in results}):
                    mine, other = results.get((ours, c)), results.get((theirs, c))
                    if mine and other:
                        print(f"  {ours} / {theirs} at {c:>2} conns: req/s {http_infer.paired_ratio(mine, other)}, "
                              f"CPU per request {http_infer.paired_ratio(mine, other, 'cpu_us')}, "
                              f"p99 {http_infer.paired_ratio(mine, other, 'p99')}")
        if "bls" in parts:
            _print_bls(servers, args.rounds)
        if "shm" in parts:
            _print_shm(servers, args.rounds)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _print_bls(servers: list[tuple[str, str]], rounds: int) -> None:
    bls: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for round_index in range(max(1, rounds)):
        for label, url in http_infer.alternating(servers, round_index):
            for size, median_us, p90_us in bls_rows(url, [64, 1 << 20, 4 << 20]):
                bls.setdefault((label, size), []).append((median_us, p90_us))
    print("\nBLS exec() from a model.py to the identity model.py, timed in the calling model (40 calls)"
          + (f", median of {rounds} alternating rounds:" if rounds > 1 else ":"))
    print(f"{'server':<10} {'tensor':>10} {'median us':>10} {'p90 us':>10}")
    for (label, size), runs in sorted(bls.items(), key=lambda kv: (kv[0][0] != "tritium", kv[0][1])):
        median_us, p90_us = sorted(runs)[len(runs) // 2]
        print(f"{label:<10} {size:>10} {median_us:>10.1f} {p90_us:>10.1f}")
    for (label, size), runs in sorted(bls.items()):
        other = bls.get(("triton", size))
        if label == "tritium" and other:
            ratios = sorted(ours[0] / theirs[0] for ours, theirs in zip(runs, other))
            spread = f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
            print(f"BLS time tritium / triton at {size} B = {statistics.median(ratios):.2f}x{spread}"
                  " (lower is faster; median of each round's ratio)")


def _print_shm(servers: list[tuple[str, str]], rounds: int) -> None:
    print("\n1 MiB through the identity model.py from tritonclient.http, one call at a time (300 calls):")
    print(f"{'server':<10} {'tensor in':>12} {'median us':>10} {'p90 us':>10}")
    for _ in range(max(1, rounds)):
        for label, url in servers:
            for how, median_us, p90_us in shm_rows(url):
                print(f"{label:<10} {how:>12} {median_us:>10.1f} {p90_us:>10.1f}")


if __name__ == "__main__":
    sys.exit(main())
