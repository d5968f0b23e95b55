"""The gRPC transports tritium could use, side by side: requests/s and server CPU per request of an echo
method (no model), by h2load at 1 and 8 concurrent streams, rounds alternating between candidates.

    python benchmarks/grpc_transports/bench.py [--rounds 3] [--duration 3] [--streams 1,8]

The echo is the floor under a served ModelInfer on that transport: compare it with
``benchmarks/grpc_infer.py``'s whole-request figures and with HTTP's (wrk) on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from echo_servers import MODES  # noqa: E402
from grpc_infer import grpc_body, run_h2load  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--streams", default="1,8")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="tritium-grpc-transports-")
    body = os.path.join(workdir, "body")
    grpc_body(body, "identity_fp32", (1, 16))
    modes = args.modes.split(",")
    streams = [int(s) for s in args.streams.split(",")]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    port = 18750
    for rnd in range(args.rounds):
        for mode in modes:
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "echo_servers.py"), mode, str(port)])
            try:
                time.sleep(3)
                for n in streams:
                    log = os.path.join(workdir, f"h2load-{rnd}-{modes.index(mode)}-{n}.log")
                    results.setdefault((mode, n), []).append(
                        run_h2load(f"127.0.0.1:{port}", body, n, args.duration, log, proc.pid))
            finally:
                proc.terminate()
                proc.wait(10)
    print(f"{'transport':<22}{'streams':>8}{'req/s':>9}{'cpu us/req':>11}  (median of {args.rounds} rounds; range)")
    for (mode, n), runs in results.items():
        rps = [r["rps"] for r in runs]
        cpu = [r["cpu_us"] for r in runs]
        print(f"{mode:<22}{n:>8}{statistics.median(rps):>9,.0f}{statistics.median(cpu):>11,.0f}"
              f"  ({min(rps):,.0f}-{max(rps):,.0f} req/s, {min(cpu):,.0f}-{max(cpu):,.0f} us)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
