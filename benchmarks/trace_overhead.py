"""What the trace extension costs: HTTP inference with tracing never configured, configured but OFF,
and ON for every request (level TIMESTAMPS, rate 1, trace file written every 1000 traces).

    python benchmarks/trace_overhead.py [--duration 5] [--connections 8] [--rounds 2]

Starts tritium once per setting on an identity model (FP32 [1,16], binary bodies), drives it with wrk
and prints one table (rounds interleave the settings so a noisy machine affects all alike).  Needs
``wrk`` and the ``onnx`` package.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from http_infer import LUA, bodies, build_repo, run_wrk, wait_live  # noqa: E402
from server import free_port  # noqa: E402


def settings(workdir: str) -> dict[str, list[str]]:
    trace = os.path.join(workdir, "trace.json")
    return {
        "not configured": [],
        "configured, OFF": [f"--trace-config=triton,file={trace}", "--trace-config=level=OFF"],
        "ON, every request": [f"--trace-config=triton,file={trace}", "--trace-config=level=TIMESTAMPS",
                              "--trace-config=rate=1", "--trace-config=triton,log-frequency=1000"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        repo = os.path.join(workdir, "repo")
        build_repo(repo)
        body, content_type, extra = bodies(workdir, "identity_fp32", (1, 16))["binary"]
        lua = os.path.join(workdir, "binary.lua")
        with open(lua, "w") as f:
            f.write(LUA.format(body=body, content_type=content_type, extra=extra))
        results: dict[str, list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for label, flags in settings(workdir).items():
                port = free_port()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tritium", f"--model-repository={repo}", f"--http-port={port}",
                     "--allow-grpc=false", "--allow-metrics=false", *flags],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    url = f"127.0.0.1:{port}"
                    wait_live(url, proc)
                    run_wrk(url, "identity_fp32", lua, args.connections, 1, 2)  # warm up
                    results.setdefault(label, []).append(
                        run_wrk(url, "identity_fp32", lua, args.connections, args.duration, 2))
                finally:
                    proc.terminate()
                    proc.wait(30)
    print(f"| tracing ({args.connections} connections, {args.duration}s, best of {args.rounds}) | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for label, runs in results.items():
        best = max(runs, key=lambda r: r["rps"])
        print(f"| {label} | {best['rps']:.0f} | {best['p50']:.3f} | {best['p99']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
