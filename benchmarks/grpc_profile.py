"""Where a unary ModelInfer spends the event loop's time: tritium under cProfile while h2load sends
identity requests over gRPC, then the profile's own time grouped by layer (transport, codec, core,
scheduler/backend, asyncio) and the top functions.

    python benchmarks/grpc_profile.py [--grpc-transport native] [--duration 5] [--streams 8] [--top 25]

cProfile sees the event loop's thread (where the transport, the codec and the core run); instance
threads (the ONNX Runtime call) are not in it.  cProfile's own overhead inflates every call about
alike, so read the shares, not the absolute microseconds.
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from grpc_infer import grpc_body, run_h2load  # noqa: E402

from http_infer import build_repo, wait_live  # noqa: E402

#: (layer, substrings of a function's file path), first match wins
LAYERS = [
    ("transport: native HTTP/2", ("frontends/grpc/native", "hpack")),
    ("transport: grpcio", ("grpc/aio", "grpc/_", "cygrpc", "grpc/__init__")),
    ("gRPC codec and handlers", ("frontends/grpc/",)),
    ("core (api, inference, validation)", ("tritium/api", "tritium/core", "tritium/server")),
    ("scheduler and backend", ("tritium/scheduler", "tritium/backends", "onnxruntime")),
    ("protobuf", ("google/protobuf", "_pb2")),
    ("asyncio / uvloop", ("asyncio", "uvloop")),
]


#: functions whose own time is the event loop waiting (epoll), not work
IDLE = ("run_until_complete", "run_forever", "select", "poll", "epoll", "acquire", "sleep")


def layer_of(path: str) -> str:
    for name, parts in LAYERS:
        if any(part in path for part in parts):
            return name
    if path.startswith("<built-in") or path == "~":
        return "builtins (socket, struct, bytes...)"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grpc-transport", default="native")
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tritium-grpc-profile-")
    repo = os.path.join(workdir, "repo")
    build_repo(repo)
    out = os.path.join(workdir, "profile")
    http, grpc = 18900, 18901
    log = open(os.path.join(workdir, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", out, "-m", "tritium",
                             f"--model-repository={repo}", f"--http-port={http}", "--http-address=127.0.0.1",
                             f"--grpc-port={grpc}", "--grpc-address=127.0.0.1",
                             f"--grpc-transport={args.grpc_transport}"], stdout=log, stderr=log)
    try:
        wait_live(f"127.0.0.1:{http}", proc)
        body = os.path.join(workdir, "body")
        grpc_body(body, "identity_fp32", (1, 16))
        result = run_h2load(f"127.0.0.1:{grpc}", body, args.streams, args.duration,
                            os.path.join(workdir, "h2load.log"), proc.pid)
        proc.terminate()
        proc.wait(60)
        deadline = time.monotonic() + 30
        while not os.path.exists(out) and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = pstats.Stats(out)
        raw = stats.stats  # type: ignore[attr-defined]
        calls = result["rps"] * (args.duration + 1)  # requests, the warm-up second included
        by_layer: dict[str, float] = {}
        total = 0.0
        for (path, _, name), (_, _, tottime, _, _) in raw.items():
            if any(word in name for word in IDLE):
                continue  # the loop waiting for work
            by_layer[layer_of(path)] = by_layer.get(layer_of(path), 0.0) + tottime
            total += tottime
        print(f"{args.grpc_transport}: {result['rps']:.0f} req/s, {result['cpu_us']:.0f} us CPU per request "
              f"(unprofiled figures: benchmarks/grpc_infer.py)")
        print(f"{'layer':<38}{'share':>7}{'us/req (profiled)':>19}")
        for name, seconds in sorted(by_layer.items(), key=lambda kv: -kv[1]):
            print(f"{name:<38}{seconds / total:>7.1%}{seconds * 1e6 / calls:>19.1f}")
        print()
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
