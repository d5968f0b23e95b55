"""ModelStreamInfer throughput: a decoupled ``model.py`` sending 100 responses per request, through
tritonclient.grpc streams, on each gRPC transport (and real Triton with ``--triton-python``); responses/s
and server CPU per response, rounds alternating between servers.

    python benchmarks/grpc_stream.py [--rounds 3] [--requests 20] [--streams 1,8] [--grpc-transport grpcio,native]
        [--client python,h2load] [--duration 4] [--triton-python /work/triton-ref/.venv-triton/bin/python]

``--client python``: each of ``--streams`` client streams (one tritonclient each, in threads) sends
``--requests`` requests and waits for all their responses.  The client's Python is part of what is
measured (it reads every response, and it shares the machine's cores), so the CPU per response of the
server is the figure to compare.  ``--client h2load``: the C load generator keeps ``--streams``
``ModelStreamInfer`` calls open at a time for ``--duration`` seconds, each sending one request and reading
its 100 responses and trailers (a new call then starts); the client costs little, so responses/s is the
servers' own.  Both check every response's bytes arrived (h2load's data per call).
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from grpc_infer import run_h2load  # noqa: E402

from http_infer import paired_ratio, real_triton_script, tree_cpu_s, wait_live  # noqa: E402

RESPONSES = 100

COUNTER = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()[0])
            sender = r.get_response_sender()
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
model_transaction_policy { decoupled: true }
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def build_repo(root: str) -> None:
    os.makedirs(os.path.join(root, "counter", "1"))
    with open(os.path.join(root, "counter", "config.pbtxt"), "w") as f:
        f.write(CONFIG)
    with open(os.path.join(root, "counter", "1", "model.py"), "w") as f:
        f.write(COUNTER)


def one_stream(url: str, requests: int, errors: list[str]) -> None:
    import tritonclient.grpc as grpcclient

    done: queue.Queue[object] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: done.put(error or result))
    tensor = grpcclient.InferInput("INPUT0", [1], "INT32")
    tensor.set_data_from_numpy(np.array([RESPONSES], np.int32))
    try:
        for i in range(requests):
            client.async_stream_infer("counter", [tensor], request_id=str(i))
        for _ in range(requests * RESPONSES):
            item = done.get(timeout=120)
            if isinstance(item, Exception):
                errors.append(str(item))
                return
    finally:
        client.stop_stream()
        client.close()


def run(url: str, pid: int, streams: int, requests: int) -> dict[str, float]:
    errors: list[str] = []
    threads = [threading.Thread(target=one_stream, args=(url, requests, errors)) for _ in range(streams)]
    cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds, cpu = time.perf_counter() - t0, tree_cpu_s(pid) - cpu0
    if errors:
        raise SystemExit(f"stream failed: {errors[0]}")
    responses = streams * requests * RESPONSES
    return {"rps": responses / seconds, "cpu_us": cpu * 1e6 / responses}


def stream_body(path: str) -> None:
    """One framed ``ModelInferRequest`` asking the counter model for RESPONSES responses."""
    from tritonclient.grpc import service_pb2 as pb

    request = pb.ModelInferRequest(model_name="counter")
    request.inputs.add(name="INPUT0", datatype="INT32", shape=[1])
    request.raw_input_contents.append(np.array([RESPONSES], np.int32).tobytes())
    message = request.SerializeToString()
    with open(path, "wb") as f:
        f.write(struct.pack(">BI", 0, len(message)) + message)


def run_h2load_streams(url: str, pid: int, streams: int, duration: int, workdir: str) -> dict[str, float]:
    body = os.path.join(workdir, "stream-body")
    if not os.path.exists(body):
        stream_body(body)
    result = run_h2load(url, body, streams, duration, os.path.join(workdir, "h2load.log"), pid, "ModelStreamInfer")
    # (a call cut at the end of the run may count as an error: at most one per stream)
    if result["errors"] > streams or result.get("data_bytes", 0) < RESPONSES * 20:  # each response is over 20 bytes
        raise SystemExit(f"ModelStreamInfer calls from h2load did not get their responses: {result}")
    return {"rps": result["rps"] * RESPONSES, "cpu_us": result["cpu_us"] / RESPONSES, "p99": result["p99"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--grpc-transport", default="grpcio,native")
    ap.add_argument("--triton-python")
    ap.add_argument("--client", default="python", help="python, h2load or both (python,h2load)")
    ap.add_argument("--duration", type=int, default=4, help="seconds of each h2load run")
    args = ap.parse_args()
    clients = args.client.split(",")
    workdir = tempfile.mkdtemp(prefix="tritium-grpc-stream-")
    repo = os.path.join(workdir, "repo")
    build_repo(repo)
    streams = [int(s) for s in args.streams.split(",")]
    servers: list[tuple[str, str, subprocess.Popen]] = []
    results: dict[tuple[int, str, str], list[dict[str, float]]] = {}  # (streams, client, server) -> rounds
    try:
        for i, transport in enumerate(args.grpc_transport.split(",")):
            http, grpc = 18800 + 10 * i, 18801 + 10 * i
            log = open(os.path.join(workdir, f"{transport}.log"), "wb")
            proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}",
                                     f"--http-port={http}", "--http-address=127.0.0.1", f"--grpc-port={grpc}",
                                     "--grpc-address=127.0.0.1", f"--grpc-transport={transport}",
                                     "--allow-metrics=false"], stdout=log, stderr=log)
            servers.append((f"tritium-{transport}", f"127.0.0.1:{grpc}", proc))
            wait_live(f"127.0.0.1:{http}", proc)
        if args.triton_python:
            script = real_triton_script()
            log = open(os.path.join(workdir, "triton.log"), "wb")
            proc = subprocess.Popen(["bash", script, f"--model-repository={repo}", "--http-port=28850",
                                     "--grpc-port=28851", "--metrics-port=28852"], stdout=log, stderr=log,
                                    env=dict(os.environ, PYTRITON_PYTHON=args.triton_python))
            servers.append(("triton", "127.0.0.1:28851", proc))
            wait_live("127.0.0.1:28850", proc, timeout=180)
        for _, url, proc in servers:  # warm up
            run(url, proc.pid, 1, 2)
        for _ in range(args.rounds):
            for client in clients:
                for name, url, proc in servers:
                    for n in streams:
                        result = (run(url, proc.pid, n, args.requests) if client == "python"
                                  else run_h2load_streams(url, proc.pid, n, args.duration, workdir))
                        results.setdefault((n, client, name), []).append(result)
        print(f"{'server (client)':<28}{'streams':>8}{'responses/s':>13}{'cpu us/resp':>12}"
              f"  (median of {args.rounds}; ranges)")
        for (n, client, name), runs in sorted(results.items()):
            rps, cpu = [r["rps"] for r in runs], [r["cpu_us"] for r in runs]
            print(f"{f'{name} ({client})':<28}{n:>8}{statistics.median(rps):>13,.0f}{statistics.median(cpu):>12,.1f}"
                  f"  ({min(rps):,.0f}-{max(rps):,.0f}; {min(cpu):.1f}-{max(cpu):.1f} us)")
        if args.triton_python:
            print("\nresponses/s over triton's, paired round by round (median, range)")
            for (n, client, name), runs in sorted(results.items()):
                if name != "triton":
                    print(f"  {f'{name} ({client})':<28}{n:>4} streams: "
                          f"{paired_ratio(runs, results[(n, client, 'triton')])}")
    finally:
        for _, _, proc in servers:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
