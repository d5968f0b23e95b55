"""The same MLP (256 -> 1024 -> 1024 -> 256, ReLU, FP32) as ONNX, OpenVINO IR and TensorFlow SavedModel:
in-process ceiling of each framework (one thread) and served by tritium.

In process: rows/s at batch 1 and 32 (ONNX Runtime session, OpenVINO compiled model, TensorFlow session's
C++ callable, each on one thread).  Served (one instance, one thread per framework, binary
HTTP by wrk, 1-row requests): 1, 8 and 32 connections, without and with dynamic batching; rows/s, p50,
p99, the mean batch executed, and rows/s as a share of the framework's in-process ceiling at batch 32.
Per-request overhead: an identity model (16 FP32) of each framework at 1 connection, server CPU time per
request (and that minus the framework's own call) compared with the ONNX backend's, round by round.

    python benchmarks/frameworks.py [--duration 5] [--connections 1,8,32] [--frameworks onnx,openvino,tensorflow]
        [--parts mlp,identity] [--rounds 1] [--baseline-src OTHER_CHECKOUT/src [--baseline-frameworks tensorflow]]
        [--pin 0/1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import http_infer
from http_infer import LUA, alternating, run_wrk, wait_live

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SIZES = (256, 1024, 1024, 256)
RNG = np.random.default_rng(0)
WEIGHTS = [(RNG.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(SIZES, SIZES[1:])]
#: OpenVINO's precision: f32 compares like with like; on CPUs with AMX/AVX512-BF16 OpenVINO's default is bf16
#: (--openvino-precision bf16 measures that).
PRECISION = "f32"
FILES = {"onnx": ("onnxruntime", "model.onnx"), "openvino": ("openvino", "model.xml"),
         "tensorflow": ("tensorflow", "model.savedmodel")}


def build(framework: str, folder: str, identity: bool) -> None:
    """The MLP (or an identity of 16 values) as ``framework``'s file in ``folder``; tensors ``x`` -> ``y``."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FILES[framework][1])
    width_in, width_out = (16, 16) if identity else (SIZES[0], SIZES[-1])
    if framework == "onnx":
        import onnx
        from onnx import helper, numpy_helper

        nodes, inits, last = [], [], "x"
        if identity:
            nodes.append(helper.make_node("Identity", ["x"], ["y"]))
        for i, w in enumerate([] if identity else WEIGHTS):
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            out = "y" if i == len(WEIGHTS) - 1 else f"h{i}"
            nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}" if out != "y" else "y"]))
            if out != "y":
                nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
            last = out
        graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", 1, ["n", width_in])],
                                  [helper.make_tensor_value_info("y", 1, ["n", width_out])], inits)
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    elif framework == "openvino":
        import openvino as ov
        import openvino.opset13 as ops

        x = ops.parameter([-1, width_in], ov.Type.f32, name="x")
        node = ops.convert(x, "f32") if identity else x
        for i, w in enumerate([] if identity else WEIGHTS):
            node = ops.matmul(node, ops.constant(w), False, False)
            if i < len(WEIGHTS) - 1:
                node = ops.relu(node)
        node.output(0).set_names({"y"})
        ov.save_model(ov.Model([node], [x], "mlp"), path, compress_to_fp16=False)
    else:
        import tensorflow as tf

        class Mlp(tf.Module):
            def __init__(self) -> None:
                super().__init__()
                self.w = [tf.Variable(w) for w in ([] if identity else WEIGHTS)]

            @tf.function(input_signature=[tf.TensorSpec([None, width_in], tf.float32, name="x")])
            def serve(self, x):  # type: ignore[no-untyped-def]
                for i, w in enumerate(self.w):
                    x = tf.matmul(x, w)
                    if i < len(self.w) - 1:
                        x = tf.nn.relu(x)
                return {"y": tf.identity(x)}

        module = Mlp()
        tf.saved_model.save(module, path, signatures=module.serve)


def runner(framework: str, folder: str):  # type: ignore[no-untyped-def]
    """A one-thread in-process call: rows -> outputs."""
    path = os.path.join(folder, FILES[framework][1])
    if framework == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(["y"], {"x": x})
    if framework == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": "1",
                                                         "INFERENCE_PRECISION_HINT": PRECISION,
                                                         "ENABLE_CPU_PINNING": False})
        request = compiled.create_infer_request()
        # as the backend runs it: into the request's own input tensor, the binding's bare infer, a copy out
        from tritium.backends.openvino import _bare_infer

        run, tensor, out = _bare_infer(request), request.get_input_tensor(0), request.get_output_tensor(0)
        known: list = [None, None]  # the input's shape and view (reading the tensor's shape costs ~30 us)

        def call(x: np.ndarray) -> np.ndarray:
            if known[0] != x.shape:
                tensor.shape = x.shape
                known[:] = x.shape, tensor.data
            known[1][...] = x
            run()
            return out.data.copy()
        return call
    import tensorflow as tf

    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=1, inter_op_parallelism_threads=1, use_per_session_threads=True))
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    from tensorflow.core.protobuf.config_pb2 import CallableOptions

    sig = meta.signature_def["serving_default"]
    # as the backend runs it: the session's C++ callable, ops on the calling thread (one inter-op thread)
    options = CallableOptions(feed=[sig.inputs["x"].name], fetch=[sig.outputs["y"].name])
    options.run_options.inter_op_thread_pool = -1
    call = session._make_callable_from_options(options)
    return lambda x: call(x)[0]


def ceiling(framework: str, folder: str, batches: tuple[int, ...], seconds: float = 2.0) -> dict[int, float]:
    call = runner(framework, folder)
    x = RNG.standard_normal((max(batches), SIZES[0])).astype(np.float32)
    rates = {}
    for batch in batches:
        rows = np.ascontiguousarray(x[:batch])
        call(rows)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            call(rows)
            n += 1
        rates[batch] = batch * n / (time.perf_counter() - start)
    return rates


def call_us(framework: str, folder: str, width: int = 16, calls: int = 2000) -> tuple[float, float]:
    """CPU microseconds per in-process call of one row (best of 3 runs), back to back and with a 100 us
    sleep before each call (as requests arrive when served at one connection: the framework's threads
    and caches cool between calls): the framework's own per-call cost."""
    call = runner(framework, folder)
    x = np.ones((1, width), np.float32)
    for _ in range(200):
        call(x)
    costs = []
    for gap in (0.0, 100e-6):
        best = float("inf")
        for _ in range(3):
            spent = 0.0
            for _ in range(calls // 2 if gap else calls):
                if gap:
                    time.sleep(gap)
                start = time.process_time()
                call(x)
                spent += time.process_time() - start
            best = min(best, spent / (calls // 2 if gap else calls) * 1e6)
        costs.append(best)
    return costs[0], costs[1]


def config(framework: str, name: str, batching: bool, width: int) -> str:
    backend, filename = FILES[framework]
    params = {"onnx": {"intra_op_thread_count": "1", "inter_op_thread_count": "1"},
              "openvino": {"INFERENCE_NUM_THREADS": "1", "NUM_STREAMS": "1", "INFERENCE_PRECISION_HINT": PRECISION},
              "tensorflow": {"TF_NUM_INTRA_THREADS": "1", "TF_NUM_INTER_THREADS": "1",
                             "TF_USE_PER_SESSION_THREADS": "true"}}[framework]
    text = (f'name: "{name}"\nbackend: "{backend}"\ndefault_model_filename: "{filename}"\nmax_batch_size: 32\n'
            f'input [ {{ name: "x" data_type: TYPE_FP32 dims: [ {width} ] }} ]\n'
            f'output [ {{ name: "y" data_type: TYPE_FP32 dims: [ {width if width == 16 else SIZES[-1]} ] }} ]\n'
            'instance_group [ { kind: KIND_CPU count: 1 } ]\n')
    if batching:
        text += "dynamic_batching { }\n"
    return text + "".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n' for k, v in params.items())


def body(workdir: str, width: int) -> str:
    x = RNG.standard_normal((1, width)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, width], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    path = os.path.join(workdir, f"x{width}.bin")
    with open(path, "wb") as f:
        f.write(header + x.tobytes())
    lua = os.path.join(workdir, f"x{width}.lua")
    with open(lua, "w") as f:
        f.write(LUA.format(body=path, content_type="application/octet-stream",
                           extra=f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"'))
    return lua


def counts(url: str, model: str) -> tuple[int, int, int]:
    """Inferences, executions and the nanoseconds spent in the framework's calls (compute_infer) so far."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.loads(r.read())["model_stats"][0]
    return (int(stats["inference_count"]), int(stats["execution_count"]),
            int(stats["inference_stats"]["compute_infer"]["ns"]))


#: Put before the server's command line (``--pin``: taskset).
SERVER_PREFIX: list[str] = []


def start_server(repo: str, port: int, workdir: str, src: str | None = None) -> subprocess.Popen:
    """tritium serving ``repo`` on ``port``; from the sources in ``src`` (a checkout's ``src`` folder: the
    baseline of a before/after comparison) where given."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    log = open(os.path.join(workdir, f"server{port}.log"), "wb")
    proc = subprocess.Popen([*SERVER_PREFIX, sys.executable, "-m", "tritium", f"--model-repository={repo}",
                             f"--http-port={port}", "--http-address=127.0.0.1", "--allow-grpc=false",
                             "--allow-metrics=false",
                             # the configs are complete; auto-complete would turn dynamic batching on
                             "--disable-auto-complete-config"], stdout=log, stderr=log, env=env)
    wait_live(f"127.0.0.1:{port}", proc, timeout=300)
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--frameworks", default="onnx,openvino,tensorflow")
    ap.add_argument("--parts", default="mlp,identity", help="mlp (ceilings, served MLP), identity (overhead)")
    ap.add_argument("--rounds", type=int, default=1, help="identity: rounds, frameworks alternating in each")
    ap.add_argument("--baseline-src", help="identity: also serve from this tritium 'src' folder (before/after)")
    ap.add_argument("--baseline-frameworks", help="identity: frameworks served by the baseline (default all)")
    ap.add_argument("--openvino-precision", default="f32", choices=("f32", "bf16", "f16"))
    ap.add_argument("--pin", metavar="SERVER_CPUS/CLIENT_CPUS",
                    help="taskset CPU lists, e.g. 0/1: servers on one core, wrk on the other (on 2 cores the "
                         "scheduler otherwise moves them between rounds, and CPU per request jumps with it)")
    args = ap.parse_args()
    if args.pin:
        server_cpus, client_cpus = args.pin.split("/")
        SERVER_PREFIX[:] = ["taskset", "-c", server_cpus]
        http_infer.CLIENT_PREFIX[:] = ["taskset", "-c", client_cpus]
    global PRECISION
    PRECISION = args.openvino_precision
    frameworks = args.frameworks.split(",")
    parts = args.parts.split(",")
    conns = [int(c) for c in args.connections.split(",")]
    workdir = tempfile.mkdtemp(prefix="tritium-frameworks-bench-")
    procs: dict[str, subprocess.Popen | None] = {}
    served: list[tuple[str, bool, int, dict[str, float], float]] = []
    overhead: dict[str, list[dict[str, float]]] = {}
    ceilings: dict[str, dict[int, float]] = {}
    own: dict[str, tuple[float, float]] = {}
    try:
        repo = os.path.join(workdir, "repo")
        for fw in frameworks:
            for identity in (False, True):
                kind = "identity" if identity else "mlp"
                if kind not in parts:
                    continue
                build(fw, os.path.join(workdir, "files", f"{kind}_{fw}"), identity)
                for batching in ((False,) if identity else (False, True)):
                    name = f"{kind}_{fw}{'_batched' if batching else ''}"
                    shutil.copytree(os.path.join(workdir, "files", f"{kind}_{fw}"), os.path.join(repo, name, "1"))
                    with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
                        f.write(config(fw, name, batching, 16 if identity else SIZES[0]))

        def in_process() -> None:
            """Ceilings and own per-call costs; measured before and after serving, the best of the two kept
            (other load on the machine comes and goes)."""
            for fw in frameworks:
                if "mlp" in parts:
                    rates = ceiling(fw, os.path.join(workdir, "files", f"mlp_{fw}"), (1, 32))
                    ceilings[fw] = {b: max(r, ceilings.get(fw, {}).get(b, 0.0)) for b, r in rates.items()}
                if "identity" in parts:
                    costs = call_us(fw, os.path.join(workdir, "files", f"identity_{fw}"))
                    old = own.get(fw, (float("inf"), float("inf")))
                    own[fw] = (min(old[0], costs[0]), min(old[1], costs[1]))

        in_process()
        url = "127.0.0.1:18690"
        procs["main"] = start_server(repo, 18690, workdir)
        pids = {"": procs["main"].pid}
        urls = {"": url}
        entries = [(fw, "") for fw in frameworks]
        if args.baseline_src and "identity" in parts:
            procs["baseline"] = start_server(repo, 18691, workdir, args.baseline_src)
            pids["@baseline"], urls["@baseline"] = procs["baseline"].pid, "127.0.0.1:18691"
            entries += [(fw, "@baseline") for fw in (args.baseline_frameworks or args.frameworks).split(",")]
        identity_lua = body(workdir, 16)
        if "identity" in parts:
            for fw, where in entries:
                run_wrk(urls[where], f"identity_{fw}", identity_lua, 1, 1, 1)  # warm-up
            for i in range(args.rounds):
                for fw, where in alternating(entries, i):
                    before = counts(urls[where], f"identity_{fw}")
                    result = run_wrk(urls[where], f"identity_{fw}", identity_lua, 1, args.duration, 1, pids[where])
                    after = counts(urls[where], f"identity_{fw}")
                    # the framework's call as served (wall, on the one thread that runs it)
                    result["infer_us"] = (after[2] - before[2]) / 1e3 / max(1, after[0] - before[0])
                    overhead.setdefault(fw + where, []).append(result)
        if "mlp" in parts:
            mlp_lua = body(workdir, SIZES[0])
            for fw in frameworks:
                for batching in (False, True):
                    model = f"mlp_{fw}{'_batched' if batching else ''}"
                    run_wrk(url, model, mlp_lua, 4, 1, 1)
                    for c in conns:
                        before = counts(url, model)
                        result = run_wrk(url, model, mlp_lua, c, args.duration, min(c, 2), procs["main"].pid)
                        after = counts(url, model)
                        served.append((fw, batching, c, result,
                                       (after[0] - before[0]) / max(1, after[1] - before[1])))
        for key in list(procs):
            stop(procs.pop(key))
        in_process()
    except BaseException:
        for name in os.listdir(workdir):  # why a server failed
            if name.startswith("server") and name.endswith(".log"):
                with open(os.path.join(workdir, name), errors="replace") as f:
                    sys.stderr.write("".join(f.readlines()[-30:]))
        raise
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    if "mlp" in parts:
        print("in process, 1 thread: rows/s of the MLP 256-1024-1024-256 (best of before and after serving)")
        print(f"{'framework':<12}{'batch 1':>12}{'batch 32':>12}")
        for fw, rates in ceilings.items():
            print(f"{fw:<12}{rates[1]:>12,.0f}{rates[32]:>12,.0f}")
        print("\nserved by tritium (1 instance, 1 thread, 1-row requests, binary HTTP, wrk); 'of ceiling@32': rows/s"
              " over the in-process rows/s at batch 32; 'per cpu-s': rows per second of server CPU over the same"
              " ceiling (rows per second of one thread): steadier where other load takes the cores")
        print(f"{'framework':<12}{'batching':>9}{'conns':>6}{'rows/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'cpu us/req':>11}{'mean batch':>11}{'of ceiling@32':>14}{'per cpu-s':>10}")
        for fw, batching, c, r, batch in served:
            cpu = r.get("cpu_us", float("nan"))
            print(f"{fw:<12}{'dynamic' if batching else 'none':>9}{c:>6}{r['rps']:>9,.0f}{r['p50']:>8.2f}"
                  f"{r['p99']:>8.2f}{cpu:>11,.0f}{batch:>11.1f}{r['rps'] / ceilings[fw][32]:>14.0%}"
                  f"{1e6 / cpu / ceilings[fw][32]:>10.0%}")
    if "identity" in parts:
        report_overhead(overhead, own, args.rounds)
    return 0


def report_overhead(overhead: dict[str, list[dict[str, float]]], own: dict[str, tuple[float, float]],
                    rounds: int) -> None:
    """Per-request overhead: server CPU per request, and that minus the framework's call as served; each
    round's ratio to ONNX's of the same round: median and range."""
    print(f"\nper-request overhead: identity (16 FP32), 1 connection, {rounds} round(s). 'call us': the framework's"
          " own call in process (CPU), back to back / with 100 us gaps; 'infer us': its call as served (the"
          " model's compute_infer per request); 'tritium us' = server CPU per request - 'infer us'; ratios to"
          " ONNX's of the same round, median (range)")
    print(f"{'server':<20}{'req/s':>8}{'cpu us/req':>11}{'vs onnx':>18}{'call us':>9}{'infer us':>9}"
          f"{'tritium us':>11}{'vs onnx':>18}")
    base = overhead.get("onnx")

    def versus(values: list[float], minus_infer: bool) -> str:
        if not base:
            return ""
        ratios = sorted(v / (b["cpu_us"] - (b["infer_us"] if minus_infer else 0.0)) for v, b in zip(values, base,
                                                                                             strict=True))
        return f"{statistics.median(ratios):.2f}" + (f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if rounds > 1 else "")

    for key, runs in overhead.items():
        fw = key.split("@")[0]
        cpus = [r["cpu_us"] for r in runs]
        mine = [r["cpu_us"] - r["infer_us"] for r in runs]
        print(f"{key:<20}{statistics.median(r['rps'] for r in runs):>8,.0f}{statistics.median(cpus):>11,.0f}"
              f"{versus(cpus, False):>18}{f'{own[fw][0]:.0f}/{own[fw][1]:.0f}':>9}"
              f"{statistics.median(r['infer_us'] for r in runs):>9,.0f}{statistics.median(mine):>11,.0f}"
              f"{versus(mine, True):>18}")


if __name__ == "__main__":
    sys.exit(main())
