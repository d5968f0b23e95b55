"""Where one request's wall-clock time goes, step by step, at one gRPC stream: a timeline across the server
and the Python backend's stub process.

cProfile (``grpc_profile.py``) shares out CPU time by function; at one stream what counts is the critical
path, which crosses processes (the stub) and includes the waits between them (a wake-up of a sleeping
process, the loop's polls).  This script starts tritium with a ``sitecustomize`` that wraps a few functions
on the path of a unary ``ModelInfer`` (frontend, codec, core, scheduler, Python backend, stub) so that each
writes a ``perf_counter`` stamp (one clock for every process) when it is entered and when it returns; h2load
sends identity requests on one stream; the stamps of every process are merged and cut into requests, and each
step between two consecutive stamps is printed as its median and p90 over the requests.

The stamps cost about 0.3 µs each (a list append), so the steps are slightly longer than unwrapped, and the
code is the tree this script runs in.  Which step dominates is the reading, not the absolute total (for
throughput: ``grpc_infer.py``).

    python benchmarks/request_timeline.py [--backend python|onnxruntime] [--requests 20000]
        [--server-args="--busy-poll-us=0"]
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from grpc_infer import grpc_body  # noqa: E402

from http_infer import build_repo, build_triton_repo, wait_live  # noqa: E402

#: (module, class or "", function, label): wrapped to stamp "<label>" on entry and "<label> end" on return
#: (coroutines: when their result is ready).  Order does not matter; the stamps' times do.
POINTS = [
    ("tritium.frontends.grpc.native.connection", "GrpcConnection", "data_received", "receive bytes"),
    ("tritium.frontends.grpc.native.connection", "GrpcConnection", "_dispatch_unary", "start the call's task"),
    ("tritium.frontends.grpc.server", "GrpcApi", "model_infer", "handler"),
    ("tritium.frontends.grpc.server", "", "to_inference_request", "build the core request"),
    ("tritium.core.model", "Model", "validate", "validate"),
    ("tritium.scheduler.direct", "DirectScheduler", "_dispatch", "batcher dispatch"),
    ("tritium.scheduler.workers", "InstanceWorker", "submit", "instance submit"),
    ("tritium.backends.python.instance", "PythonInstanceState", "_prepare", "inputs to shared memory"),
    ("tritium.backends.python.instance", "PythonInstanceState", "_send", "send to the stub"),
    # the stub runs as __main__ (python -m): its own classes are not these, so it is seen through its channel
    ("tritium.backends.python.protocol", "Channel", "recv", "channel recv"),
    ("tritium.backends.python.protocol", "Channel", "send", "channel send"),
    ("tritium.backends.python.instance", "PythonInstanceState", "_on_reply", "reply read"),
    ("tritium.backends.python.instance", "PythonInstanceState", "_finish", "outputs from shared memory"),
    ("tritium.core.model", "Model", "_shape_response", "core response"),
    ("tritium.frontends.grpc.server", "", "infer_response_bytes", "encode the response"),
    ("tritium.frontends.grpc.native.connection", "GrpcConnection", "_respond", "write the answer"),
]

SITE = '''
import atexit, functools, importlib, inspect, os, sys, time
_stamps = []
_append = _stamps.append
_clock = time.perf_counter

def _wrap(owner, name, label):
    static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    f = getattr(owner, name)
    if inspect.iscoroutinefunction(f):
        async def w(*a, **k):
            _append((label, _clock()))
            r = await f(*a, **k)
            _append((label + " end", _clock()))
            return r
    else:
        def w(*a, **k):
            _append((label, _clock()))
            r = f(*a, **k)
            _append((label + " end", _clock()))
            return r
    functools.update_wrapper(w, f)
    setattr(owner, name, staticmethod(w) if static else w)

for module, cls, name, label in POINTS:
    try:
        m = importlib.import_module(module)
    except ImportError:
        continue
    _wrap(getattr(m, cls) if cls else m, name, label)

@atexit.register
def _dump():
    if _stamps:
        _prefix = "stub: " if sys.argv and "python/stub" in sys.argv[0] else ""  # (python -m sets argv late)
        with open(os.path.join(OUT, str(os.getpid())), "w") as f:
            f.writelines(f"{t!r}\\t{_prefix}{label}\\n" for label, t in _stamps)
        _stamps.clear()

_real_exit = os._exit

def _exit(code):  # the stub's event reader ends the process this way when the server goes
    _dump()
    _real_exit(code)

os._exit = _exit
'''


def merged(folder: str) -> list[tuple[float, str]]:
    stamps = []
    for path in glob.glob(os.path.join(folder, "[0-9]*")):
        with open(path) as f:
            for line in f:
                t, label = line.rstrip("\n").split("\t")
                stamps.append((float(t), label))
    stamps.sort()
    return stamps


def report(stamps: list[tuple[float, str]], skip: float = 0.2) -> None:
    """Cut the stamps into requests at each "receive bytes" that starts one, keep the requests whose steps
    come in the most common order, and print each step's median and p90."""
    requests: list[list[tuple[float, str]]] = []
    for t, label in stamps:
        if label == "receive bytes" or not requests:
            requests.append([])
        requests[-1].append((t, label))
    shapes = collections.Counter(tuple(label for _, label in r) for r in requests if len(r) > 4)
    if not shapes:
        raise SystemExit("no complete request in the stamps")
    shape, count = shapes.most_common(1)[0]
    kept = [r for r in requests if tuple(label for _, label in r) == shape]
    kept = kept[int(len(kept) * skip):]  # warm-up
    nxt = {id(a): b for a, b in zip(requests, requests[1:], strict=False)}
    print(f"{len(kept)} requests of the most common shape ({count} of {len(requests)}), warm-up skipped")
    print(f"{'from':<34}{'to':<34}{'p50 us':>8}{'p90 us':>8}")
    total50 = 0.0
    for i in range(len(shape) - 1):
        gaps = sorted(r[i + 1][0] - r[i][0] for r in kept)
        p50, p90 = gaps[len(gaps) // 2] * 1e6, gaps[len(gaps) * 9 // 10] * 1e6
        total50 += p50
        print(f"{shape[i]:<34}{shape[i + 1]:<34}{p50:>8.1f}{p90:>8.1f}")
    after = sorted(nxt[id(r)][0][0] - r[-1][0] for r in kept if id(r) in nxt)
    if after:
        p50 = after[len(after) // 2] * 1e6
        print(f"{shape[-1]:<34}{'(client) next request':<34}{p50:>8.1f}{after[len(after) * 9 // 10] * 1e6:>8.1f}")
        total50 += p50
    print(f"{'sum of medians':<68}{total50:>8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="python", choices=("python", "onnxruntime"),
                    help="what serves identity_fp32: its model.py (Python backend) or its ONNX graph")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--server-args", default="", help="more tritium flags, e.g. --busy-poll-us=0")
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tritium-timeline-")
    try:
        repo = os.path.join(workdir, "repo")
        if args.backend == "python":
            build_triton_repo(repo)
        else:
            build_repo(repo)
        out = os.path.join(workdir, "stamps")
        site = os.path.join(workdir, "site")
        os.makedirs(out)
        os.makedirs(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            f.write(f"POINTS = {POINTS!r}\nOUT = {out!r}\n" + textwrap.dedent(SITE))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")])))
        log = open(os.path.join(workdir, "server.log"), "wb")
        http, grpc = 18970, 18971
        proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}",
                                 f"--http-port={http}", "--http-address=127.0.0.1", f"--grpc-port={grpc}",
                                 "--grpc-address=127.0.0.1", "--allow-metrics=false",
                                 *shlex.split(args.server_args)], stdout=log, stderr=log, env=env)
        try:
            wait_live(f"127.0.0.1:{http}", proc)
            body = os.path.join(workdir, "body")
            grpc_body(body, "identity_fp32", (1, 16))
            text = subprocess.run(["h2load", "-c1", "-m1", "-t1", f"-n{args.requests}", "-d", body,
                                   "-H", "content-type: application/grpc", "-H", "te: trailers",
                                   f"http://127.0.0.1:{grpc}/inference.GRPCInferenceService/ModelInfer"],
                                  capture_output=True, text=True, check=True).stdout
            print(next((line for line in text.splitlines() if line.startswith("finished")), text))
        finally:
            proc.terminate()  # SIGTERM: a graceful stop, so every process writes its stamps at exit
            proc.wait(60)
        report(merged(out))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
