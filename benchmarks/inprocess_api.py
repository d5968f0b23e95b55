"""In-process calls (``tritium.tritonserver``) against HTTP to the same server, one caller, one small model.

    python benchmarks/inprocess_api.py [--requests 3000]

Prints requests/s and median latency of: ``Model.infer`` (sync), ``Model.async_infer`` (one at a time and
16 in flight), and tritonclient over ``tritium.tritonfrontend.KServeHttp`` on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import tritium.tritonserver as tritonserver  # noqa: E402
from tritium.tritonfrontend import KServeHttp  # noqa: E402

from models import identity_graph, write_model  # noqa: E402

CONFIG = """
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _report(name: str, latencies: list[float], wall: float) -> None:
    print(f"{name:<34} {len(latencies) / wall:>9.0f} req/s   p50 {statistics.median(latencies) * 1e6:>7.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    n = parser.parse_args().requests
    data = np.ones((1, 16), np.float32)
    with tempfile.TemporaryDirectory() as repo:
        write_model(repo, "identity", identity_graph("FP32", ("batch", 16)), CONFIG)
        server = tritonserver.Server(model_repository=repo).start(wait_until_ready=True)
        model = server.model("identity")
        for _ in range(200):
            list(model.infer(inputs={"INPUT0": data}))

        latencies = []
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            for response in model.infer(inputs={"INPUT0": data}):
                np.from_dlpack(response.outputs["OUTPUT0"])
            latencies.append(time.perf_counter() - t)
        _report("in-process infer (sync)", latencies, time.perf_counter() - start)

        async def sequential() -> tuple[list[float], float]:
            lat = []
            begin = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                async for response in model.async_infer(inputs={"INPUT0": data}):
                    np.from_dlpack(response.outputs["OUTPUT0"])
                lat.append(time.perf_counter() - t)
            return lat, time.perf_counter() - begin

        async def concurrent(width: int) -> tuple[list[float], float]:
            lat: list[float] = []

            async def worker(count: int) -> None:
                for _ in range(count):
                    t = time.perf_counter()
                    async for _response in model.async_infer(inputs={"INPUT0": data}):
                        pass
                    lat.append(time.perf_counter() - t)

            begin = time.perf_counter()
            await asyncio.gather(*(worker(n // width) for _ in range(width)))
            return lat, time.perf_counter() - begin

        _report("in-process async_infer (1)", *asyncio.run(sequential()))
        _report("in-process async_infer (16)", *asyncio.run(concurrent(16)))

        import tritonclient.http as httpclient

        port = _port()
        with KServeHttp(server, KServeHttp.Options(address="127.0.0.1", port=port)):
            client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
            infer_input = httpclient.InferInput("INPUT0", [1, 16], "FP32")
            infer_input.set_data_from_numpy(data)
            for _ in range(200):
                client.infer("identity", [infer_input])
            latencies = []
            start = time.perf_counter()
            for _ in range(n):
                t = time.perf_counter()
                client.infer("identity", [infer_input]).as_numpy("OUTPUT0")
                latencies.append(time.perf_counter() - t)
            _report("tritonclient HTTP, same server", latencies, time.perf_counter() - start)
            client.close()
        server.stop()


if __name__ == "__main__":
    main()
