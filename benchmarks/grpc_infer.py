"""gRPC inference throughput and latency of tritium, measured with h2load, beside HTTP (wrk) on the same server.

h2load (Debian package ``nghttp2-client``) is a C HTTP/2 load generator; a gRPC unary call is an
HTTP/2 POST to ``/inference.GRPCInferenceService/ModelInfer`` with ``content-type: application/grpc``,
``te: trailers`` and a body of one length-prefixed message (1 byte compression flag, 4 bytes
big-endian length, the serialized ``ModelInferRequest`` with ``raw_input_contents``).  This script
pre-encodes that body once, runs h2load with N clients of one stream each (N = 1, 8, 32 concurrent
streams), takes p50/p99 from h2load's per-request log, and checks one answer with tritonclient first
(h2load sees only the HTTP status; the gRPC status is in the trailers).  The HTTP figures come from
``http_infer.py``'s wrk runner on the same server and model, binary tensor bodies.

    python benchmarks/grpc_infer.py [--duration 10] [--streams 1,8,32] [--models identity,mlp] \\
        [--grpc-transport grpcio,native] [--rounds 3] [--client-threads 1] [--pin 0/1] \\
        [--triton-python /work/triton-ref/.venv-triton/bin/python] [--baseline-python OTHER_CHECKOUT/.venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import http_infer  # noqa: E402
from http_infer import LUA, MODELS, bodies, build_repo, build_triton_repo, run_wrk, start_triton, tree_cpu_s, wait_live  # noqa: E402


def grpc_body(path: str, model: str, shape: tuple[int, ...]) -> None:
    from tritonclient.grpc import service_pb2 as pb

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="INPUT0", datatype="FP32", shape=list(shape))
    request.raw_input_contents.append(x.tobytes())
    message = request.SerializeToString()
    with open(path, "wb") as f:
        f.write(struct.pack(">BI", 0, len(message)) + message)


def check_grpc(url: str, model: str, shape: tuple[int, ...]) -> None:
    import tritonclient.grpc as grpcclient

    x = np.ones(shape, np.float32)
    inp = grpcclient.InferInput("INPUT0", list(shape), "FP32")
    inp.set_data_from_numpy(x)
    with grpcclient.InferenceServerClient(url) as client:
        out = client.infer(model, [inp]).as_numpy("OUTPUT0")
    if out is None or out.shape[0] != shape[0]:
        raise SystemExit(f"unexpected gRPC answer from {model}")


def run_h2load(url: str, body: str, streams: int, duration: int, log: str,
               pid: int | None = None, method: str = "ModelInfer", threads: int = 2) -> dict[str, float]:
    """One h2load run: req/s, p50/p99 ms, errors, response data bytes per request; with the server's ``pid``,
    ``cpu_us`` (server CPU per request)."""
    cmd = [*http_infer.CLIENT_PREFIX, "h2load", f"-c{streams}", "-m1", f"-t{min(streams, threads)}", f"-D{duration}", "--warm-up-time=1",
           "-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers", f"--log-file={log}",
           f"http://{url}/inference.GRPCInferenceService/{method}"]
    if os.path.exists(log):
        os.remove(log)  # h2load appends to its log: a reused name would count earlier runs' requests too
    cpu_before = tree_cpu_s(pid) if pid is not None else 0.0
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu_s(pid) - cpu_before if pid is not None else 0.0
    latencies, errors = [], 0
    with open(log) as f:
        for line in f:
            _, status, micros = line.split()[:3]
            latencies.append(int(micros) / 1000)
            errors += status != "200"
    if not latencies:
        raise SystemExit(f"h2load completed no request:\n{text}")
    values = np.array(latencies)
    result = {"rps": len(values) / duration, "p50": float(np.percentile(values, 50)),
              "p99": float(np.percentile(values, 99)), "errors": errors}
    traffic = re.search(r"\((\d+)\) data", text)
    done = re.search(r"requests: .*? (\d+) done", text)
    if traffic and done and int(done.group(1)):
        result["data_bytes"] = int(traffic.group(1)) / int(done.group(1))
    if pid is not None:
        # the log holds the measured requests only (after --warm-up-time=1); the CPU covers the warm-up too
        result["cpu_us"] = cpu * 1e6 / (len(values) * (duration + 1) / duration)
    return result


#: A command prefix for the servers (``taskset -c 0``), empty by default.
SERVER_PREFIX: list[str] = []


def start_server(repo: str, workdir: str, http_port: int, grpc_port: int, transport: str,
                 python: str | None = None) -> subprocess.Popen:
    """tritium from this checkout, or with ``python`` (another checkout's interpreter, tritium installed there,
    started outside this checkout so that it imports its own)."""
    log = open(os.path.join(workdir, f"server-{transport}{'-baseline' if python else ''}.log"), "wb")
    return subprocess.Popen([*SERVER_PREFIX, python or sys.executable, "-m", "tritium", f"--model-repository={repo}",
                             f"--http-port={http_port}", "--http-address=127.0.0.1", f"--grpc-port={grpc_port}",
                             "--grpc-address=127.0.0.1", f"--grpc-transport={transport}"], stdout=log, stderr=log,
                            cwd="/" if python else None)


def print_ratios(results: dict[tuple[str, str, int], list[dict[str, float]]], rounds: int) -> None:
    """req/s, CPU per request and p99 of each gRPC row over the others of its model and streams, and of each HTTP
    row over the other HTTP rows, paired round by round (median, range)."""
    keys = sorted({(key, n) for _, key, n in results})
    labels = sorted({label for label, _, _ in results})
    pairs = [(a, b) for a in labels for b in labels if a != b and (a.endswith("/grpc") or b.endswith("/http"))
             and not (a.endswith("/http") and b.endswith("/grpc"))]
    print(f"\npaired ratios (per round; median and range of {rounds} rounds)")
    for key, n in keys:
        for a, b in pairs:
            if (a, key, n) not in results or (b, key, n) not in results:
                continue
            ours, theirs = results[(a, key, n)], results[(b, key, n)]
            if len(ours) != len(theirs) or not all(y["rps"] > 0 for y in theirs):
                continue
            line = f"  {key:<9} {n:>3} streams  {a} / {b}: req/s {http_infer.paired_ratio(ours, theirs)}"
            if all(y.get("cpu_us") for y in theirs) and all("cpu_us" in x for x in ours):
                line += f", CPU per request {http_infer.paired_ratio(ours, theirs, 'cpu_us')}"
            if all(y["p99"] > 0 for y in theirs):
                line += f", p99 {http_infer.paired_ratio(ours, theirs, 'p99')}"
            print(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--models", default="identity,mlp")
    ap.add_argument("--grpc-transport", default="native",
                    help="comma-separated: grpcio, native; each round serves each in turn (alternating)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--client-threads", type=int, default=1,
                    help="threads of each load generator (h2load and wrk alike: on a 2-core machine a second client "
                         "thread takes CPU from the server)")
    ap.add_argument("--pin", metavar="SERVER_CPUS/CLIENT_CPUS",
                    help="taskset CPU lists, e.g. 0/1: servers on one core, load generators on the other (so the "
                         "clients' own cost, which differs between h2load and wrk, takes nothing from the server)")
    ap.add_argument("--baseline-python", help="also tritium as it was: another checkout's interpreter (tritium "
                                              "installed there), measured in each round after this checkout's")
    ap.add_argument("--triton-python", help="also real Triton (this Python runs its stub); then the identity model "
                                            "is the same model.py on both servers (Python backend)")
    args = ap.parse_args()
    if args.pin:
        server_cpus, client_cpus = args.pin.split("/")
        SERVER_PREFIX[:] = ["taskset", "-c", server_cpus]
        http_infer.CLIENT_PREFIX[:] = ["taskset", "-c", client_cpus]
    for tool, package in (("h2load", "nghttp2-client"), ("wrk", "wrk")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {package})")
    workdir = tempfile.mkdtemp(prefix="tritium-grpc-bench-")
    http_port, grpc_port = 18700, 18701
    http_url, grpc_url = f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    repo = os.path.join(workdir, "repo")
    models = args.models.split(",")
    triton: subprocess.Popen | None = None
    if args.triton_python:
        build_triton_repo(repo)  # identity_fp32: the same model.py for both
        models = ["identity"]
        triton = start_triton(os.path.join(workdir), args.triton_python, 28750, prefix=SERVER_PREFIX)
        wait_live("127.0.0.1:28750", triton, timeout=180)
    else:
        build_repo(repo)
    transports = args.grpc_transport.split(",")
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}

    def measure(label: str, http: str, grpc: str, pid: int, with_http: bool) -> None:
        for key in models:
            model, shape = MODELS[key]
            check_grpc(grpc, model, shape)
            body = os.path.join(workdir, f"{model}.grpc")
            grpc_body(body, model, shape)
            path, ctype, extra = bodies(workdir, model, shape)["binary"]
            lua = os.path.join(workdir, f"{model}-binary.lua")
            with open(lua, "w") as f:
                f.write(LUA.format(body=path, content_type=ctype, extra=extra))
            run_wrk(http, model, lua, 8, 2, 1)  # warm up
            for n in (int(s) for s in args.streams.split(",")):
                h2log = os.path.join(workdir, f"h2load-{model}-{n}.log")
                results.setdefault((f"{label}/grpc", key, n), []).append(
                    run_h2load(grpc, body, n, args.duration, h2log, pid, threads=args.client_threads))
                if with_http:
                    results.setdefault((f"{label}/http", key, n), []).append(
                        run_wrk(http, model, lua, n, args.duration, args.client_threads, pid))

    try:
        for _ in range(args.rounds):
            for transport in transports:
                proc = start_server(repo, workdir, http_port, grpc_port, transport)
                try:
                    wait_live(http_url, proc)
                    # HTTP once per round, on the first server
                    measure(f"tritium-{transport}", http_url, grpc_url, proc.pid, transport == transports[0])
                finally:
                    proc.terminate()
                    proc.wait(10)
            if args.baseline_python:
                proc = start_server(repo, workdir, http_port, grpc_port, transports[0], args.baseline_python)
                try:
                    wait_live(http_url, proc)
                    measure(f"baseline-{transports[0]}", http_url, grpc_url, proc.pid, True)
                finally:
                    proc.terminate()
                    proc.wait(10)
            if triton is not None:
                measure("triton", "127.0.0.1:28750", "127.0.0.1:28751", triton.pid, True)
        print(f"{'server/protocol':<24} {'model':<9} {'streams':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu us':>7} "
              f"{'errors':>6}  (median of {args.rounds} rounds; req/s and cpu ranges)")
        for (protocol, key, n), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
            med = {k: statistics.median(r.get(k, 0) for r in runs) for k in ("rps", "p50", "p99", "cpu_us", "errors")}
            rps = [r["rps"] for r in runs]
            cpu = [r.get("cpu_us", 0) for r in runs]
            print(f"{protocol:<24} {key:<9} {n:>7} {med['rps']:>9.0f} {med['p50']:>8.3f} {med['p99']:>8.3f} "
                  f"{med['cpu_us']:>7.0f} {med['errors']:>6.0f}  ({min(rps):.0f}-{max(rps):.0f}, "
                  f"{min(cpu):.0f}-{max(cpu):.0f} us)")
        print_ratios(results, args.rounds)
    finally:
        if triton is not None:
            triton.terminate()
            triton.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
