"""The same 256→1024→1024→256 ReLU MLP as TorchScript (pytorch backend) and as ONNX (onnxruntime backend).

Builds both from one set of weights (``tests/models.py`` ``mlp_graph``), checks that they agree, then:

* in-process ceilings: the framework alone (``torch.jit`` module under ``inference_mode`` /
  ``onnxruntime.InferenceSession.run``), one thread, batch 1 and batch 32;
* through tritium over HTTP with wrk (binary bodies, one row per request), with the dynamic
  batcher on and off, at several connection counts.

    python benchmarks/pytorch_vs_onnx.py [--duration 5] [--connections 1,8,32]

Needs ``wrk``, ``onnx`` and ``torch`` (``pip install 'tritium[pytorch]'``).  Both frameworks get one
intra-op thread and one instance, so the table compares them, not the machine's core count.
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
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from http_infer import LUA, bodies, run_wrk, wait_live  # noqa: E402
from models import mlp_graph, mlp_reference, write_model  # noqa: E402

SIZES = (256, 1024, 1024, 256)


def torch_mlp(weights):  # type: ignore[no-untyped-def]
    """The ONNX twin's weights in an ``nn.Sequential``, traced to TorchScript."""
    import torch

    layers: list[torch.nn.Module] = []
    for i, (w, b) in enumerate(weights):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    return torch.jit.trace(torch.nn.Sequential(*layers).eval(), torch.zeros(1, SIZES[0]))


def config(backend: str, batching: bool) -> str:
    names = ("INPUT__0", "OUTPUT__0") if backend == "pytorch" else ("INPUT0", "OUTPUT0")
    threads = "INTRA_OP_THREAD_COUNT" if backend == "pytorch" else "intra_op_thread_count"
    return f"""
        backend: "{backend}"
        max_batch_size: 32
        input [ {{ name: "{names[0]}" data_type: TYPE_FP32 dims: [ {SIZES[0]} ] }} ]
        output [ {{ name: "{names[1]}" data_type: TYPE_FP32 dims: [ {SIZES[-1]} ] }} ]
        {"dynamic_batching { }" if batching else ""}
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        parameters {{ key: "{threads}" value: {{ string_value: "1" }} }}
    """


def build_repo(root: str, graph, module) -> None:  # type: ignore[no-untyped-def]
    import torch

    for batching in (True, False):
        suffix = "batched" if batching else "single"
        write_model(root, f"onnx_{suffix}", graph, config=config("onnxruntime", batching))
        path = write_model(root, f"torch_{suffix}", config=config("pytorch", batching))
        torch.jit.save(module, os.path.join(path, "1", "model.pt"))


def ceiling(fn, x: np.ndarray, seconds: float = 2.0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(calls per second, rows per second) of ``fn(x)`` on this thread."""
    for _ in range(20):
        fn(x)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn(x)
        n += 1
    return n / elapsed, n * x.shape[0] / elapsed


def in_process(graph_path: str, module, weights) -> list[tuple[str, int, float, float]]:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(graph_path, sess_options=options, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 32):
        x = np.random.default_rng(batch).standard_normal((batch, SIZES[0])).astype(np.float32)
        expected = mlp_reference(x, weights)
        with torch.inference_mode():
            got_torch = module.forward(torch.from_numpy(x)).numpy()
        got_onnx = session.run(["OUTPUT0"], {"INPUT0": x})[0]
        np.testing.assert_allclose(got_torch, expected, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got_onnx, expected, rtol=1e-3, atol=1e-4)

        def run_torch(a: np.ndarray) -> None:
            with torch.inference_mode():
                module.forward(torch.from_numpy(a)).numpy()

        rows.append(("torch", batch, *ceiling(run_torch, x)))
        rows.append(("onnxruntime", batch, *ceiling(lambda a: session.run(["OUTPUT0"], {"INPUT0": a}), x)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--port", type=int, default=18700)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="tritium-torch-bench-")
    graph, weights = mlp_graph(SIZES)
    module = torch_mlp(weights)
    repo = os.path.join(workdir, "repo")
    build_repo(repo, graph, module)

    print("in-process ceiling (framework alone, 1 thread)")
    print(f"{'framework':<12} {'batch':>5} {'calls/s':>9} {'rows/s':>9} {'us/call':>9}")
    for framework, batch, calls, rows in in_process(os.path.join(repo, "onnx_single", "1", "model.onnx"), module,
                                                    weights):
        print(f"{framework:<12} {batch:>5} {calls:>9.0f} {rows:>9.0f} {1e6 / calls:>9.1f}")

    url = f"127.0.0.1:{args.port}"
    log = open(os.path.join(workdir, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={args.port}",
                             "--http-address=127.0.0.1"], stdout=log, stderr=log)
    try:
        wait_live(url, proc)
        results = []
        for model in ("torch_batched", "onnx_batched", "torch_single", "onnx_single"):
            name = "INPUT__0" if model.startswith("torch") else "INPUT0"
            out = "OUTPUT__0" if model.startswith("torch") else "OUTPUT0"
            body, ctype, extra = bodies(workdir, model, (1, SIZES[0]))["binary"]
            with open(body, "rb") as f:
                data = f.read()
            with open(body, "wb") as f:  # bodies() names the tensors INPUT0/OUTPUT0
                header_len = int(extra.rsplit('"', 2)[-2])
                header = data[:header_len].replace(b'"INPUT0"', f'"{name}"'.encode()).replace(
                    b'"OUTPUT0"', f'"{out}"'.encode())
                f.write(header + data[header_len:])
            extra = f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"'
            lua = os.path.join(workdir, f"{model}.lua")
            with open(lua, "w") as f:
                f.write(LUA.format(body=body, content_type=ctype, extra=extra))
            run_wrk(url, model, lua, 8, 2, 1)  # warm up
            for c in (int(x) for x in args.connections.split(",")):
                try:
                    results.append((model, c, run_wrk(url, model, lua, c, args.duration, 1)))
                except subprocess.CalledProcessError as e:  # wrk gives up (e.g. socket errors on a loaded host)
                    print(f"wrk failed for {model} at {c} connections: {e.stderr or e.stdout}", file=sys.stderr)
                    nan = float("nan")
                    results.append((model, c, {"rps": nan, "p50": nan, "p99": nan, "errors": -1}))
        print("\nthrough tritium over HTTP (binary body, 1 row per request, wrk 1 thread)")
        print(f"{'model':<14} {'batcher':<8} {'conns':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for model, c, r in results:
            framework, mode = model.split("_")
            print(f"{framework:<14} {'on' if mode == 'batched' else 'off':<8} {c:>5} {r['rps']:>8.0f} "
                  f"{r['p50']:>8.3f} {r['p99']:>8.3f} {r['errors']:>6}")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
