"""What ``--rate-limit=execution_count`` costs a request, next to ``off`` (the plain schedulers).

First the schedulers alone, in this process: a request through ``DirectScheduler`` and through
``LimitedDirectScheduler`` over two instances that answer at once on the event loop (µs per request, best of
five rounds).  Then two servers on one ONNX identity model (two instances, each needing one copy of resource R of two, so the
limiter never makes a request wait: what is measured is its bookkeeping), one client sending requests one
after another over HTTP, rounds alternating between the servers.  Prints median and p90 latency in µs and
requests/s for each.

    python benchmarks/rate_limiter.py [--requests 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tritonclient.http as httpclient

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from tritium._proto import model_config_pb2 as mc  # noqa: E402
from tritium.backends.base import InstanceSpec, ModelInstanceState  # noqa: E402
from tritium.core.inference import InferenceRequest, InferenceResponse  # noqa: E402
from tritium.scheduler.direct import DirectScheduler  # noqa: E402
from tritium.scheduler.limited import LimitedDirectScheduler  # noqa: E402
from tritium.scheduler.rate_limiter import RateLimiter  # noqa: E402
from tritium.scheduler.workers import InstanceWorker  # noqa: E402

from models import identity_graph, save_model  # noqa: E402
from scheduler_harness import req  # noqa: E402
from server import RunningServer  # noqa: E402

CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 2 kind: KIND_CPU rate_limiter { resources [ { name: "R" count: 1 } ] } } ]
"""


class Answer(ModelInstanceState):
    """Answers at once (an empty response per request)."""

    def __init__(self, name: str) -> None:
        group = mc.ModelInstanceGroup()
        group.rate_limiter.resources.add(name="R", count=1)
        super().__init__(InstanceSpec(name, "KIND_CPU", 0, group))

    def execute(self, requests: list[InferenceRequest]) -> list[InferenceResponse]:  # type: ignore[override]
        return [InferenceResponse("m", 1, r.id, []) for r in requests]


async def scheduler_us(limited: bool, count: int) -> float:
    loop = asyncio.get_running_loop()
    instances = [Answer("m_0"), Answer("m_1")]
    workers = [InstanceWorker(instance, loop, 1.0) for instance in instances]
    for worker in workers:
        worker._average_s = 0.0  # inline from the first request
    scheduler = LimitedDirectScheduler(workers, loop, RateLimiter([("R", 2, -1)]).register(
        [i.spec for i in instances])) if limited else DirectScheduler(workers, loop)
    request = req("x")
    start = time.perf_counter()
    for _ in range(count):
        await scheduler.infer(request)
    took = (time.perf_counter() - start) / count * 1e6
    scheduler.close()
    return took


def one_round(url: str, count: int) -> list[float]:
    client = httpclient.InferenceServerClient(url)
    x = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    x.set_data_from_numpy(np.ones((1, 16), np.float32))
    for _ in range(50):  # warm up
        client.infer("ident", [x])
    took = []
    for _ in range(count):
        start = time.perf_counter()
        client.infer("ident", [x])
        took.append(time.perf_counter() - start)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for mode, limited in (("off", False), ("execution_count", True)):
        best = min(asyncio.run(scheduler_us(limited, 20000)) for _ in range(5))
        print(f"scheduler alone, --rate-limit={mode}: {best:.1f} µs per request")
    repo = tempfile.mkdtemp(prefix="rate-limit-bench-")
    save_model(identity_graph(), os.path.join(repo, "ident", "1", "model.onnx"))
    with open(os.path.join(repo, "ident", "config.pbtxt"), "w") as f:
        f.write(CONFIG)
    samples: dict[str, list[float]] = {"off": [], "execution_count": []}
    with RunningServer([repo]) as off, RunningServer([repo], ["--rate-limit=execution_count",
                                                              "--rate-limit-resource=R:2"]) as limited:
        for _ in range(args.rounds):
            for mode, server in (("off", off), ("execution_count", limited)):
                samples[mode] += one_round(server.url, args.requests)
    print(f"{'--rate-limit':>16} {'p50 µs':>8} {'p90 µs':>8} {'req/s':>8}")
    for mode, took in samples.items():
        took.sort()
        print(f"{mode:>16} {statistics.median(took) * 1e6:8.0f} {took[int(len(took) * 0.9)] * 1e6:8.0f} "
              f"{len(took) / sum(took):8.0f}")


if __name__ == "__main__":
    main()
