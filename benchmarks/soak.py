"""Soak: does a long-running server keep what it holds flat?

Runs the same mixed load round after round against one tritium process: binary HTTP and gRPC requests of
1 MiB to a Python-backend model, BLS calls of 256 KiB from a Python model to an ONNX model, decoupled gRPC
streams, refused requests (wrong dtype, wrong shape, unknown model), HTTP clients that leave before their
answer, JSON requests to an ONNX model, connection churn (64 connections at once, 20 health checks each,
then closed), and unloads and loads of the Python models (explicit model control). After each round it
prints what the server and its model processes hold: resident memory (MiB), open file descriptors,
threads, and files in /dev/shm.

A leak shows as a column that keeps growing after the first rounds (which fill caches and pools).

    python benchmarks/soak.py --rounds 6 --requests 400
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.models import identity_graph, write_model, write_python_model  # noqa: E402
from tests.server import RunningServer  # noqa: E402

from http_infer import descendants  # noqa: E402

IDENTITY = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0",
                pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())]) for r in requests]
'''

BLS = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0")
            call = pb_utils.InferenceRequest(model_name="onnx_identity", inputs=[pb_utils.Tensor("INPUT0",
                                             x.as_numpy().reshape(1, -1))], requested_output_names=["OUTPUT0"])
            reply = call.exec()
            if reply.has_error():
                raise pb_utils.TritonModelException(reply.error().message())
            y = pb_utils.get_output_tensor_by_name(reply, "OUTPUT0").as_numpy().reshape(-1)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return out
'''

STREAM = '''
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            sender = r.get_response_sender()
            for _ in range(5):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''


def python_config(extra: str = "") -> str:
    return f"""
        backend: "python"
        max_batch_size: 0
        input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
        instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        {extra}"""


def build_repo(repo: str) -> None:
    write_python_model(repo, "py_identity", IDENTITY, python_config())
    write_python_model(repo, "py_bls", BLS, python_config())
    write_python_model(repo, "py_stream", STREAM, python_config("model_transaction_policy { decoupled: true }"))
    write_model(repo, "onnx_identity", identity_graph("FP32", ("batch", -1)), config="""
        backend: "onnxruntime"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        dynamic_batching { }""")


def status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def holdings(pid: int) -> dict[str, float]:
    """What a server process and its model processes hold now."""
    stubs = descendants(pid)
    return {
        "server_mib": status_field(pid, "VmRSS") / 1024,
        "stubs_mib": sum(status_field(p, "VmRSS") for p in stubs) / 1024,
        "server_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "stub_fds": sum(len(os.listdir(f"/proc/{p}/fd")) for p in stubs),
        "threads": status_field(pid, "Threads"),
        "dev_shm": len(os.listdir("/dev/shm")),
        "stubs": len(stubs),
    }


def leave_early(host: str, port: int, body: bytes, header_length: int) -> None:
    """An HTTP client that sends a whole request and closes its socket before the answer."""
    head = (f"POST /v2/models/py_identity/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"Inference-Header-Content-Length: {header_length}\r\nContent-Type: application/octet-stream\r\n\r\n")
    with socket.create_connection((host, port)) as s:
        s.sendall(head.encode() + body)


async def churn(port: int, connections: int, requests: int) -> None:
    """Connections that come and go: ``connections`` at once, each making ``requests`` keep-alive health
    checks, then closing (the server's per-connection state must not pile up)."""
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(requests):
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: soak\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(one() for _ in range(connections)))


def one_round(server: RunningServer, requests: int, reloads: int) -> None:
    http = httpclient.InferenceServerClient(server.url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    big = np.random.default_rng(0).random(1 << 18, dtype=np.float32)  # 1 MiB
    mid = big[: 1 << 16]  # 256 KiB
    small = big[:16].reshape(1, 16)

    def http_input(x: np.ndarray, datatype: str = "FP32", binary: bool = True) -> httpclient.InferInput:
        i = httpclient.InferInput("INPUT0", list(x.shape), datatype)
        i.set_data_from_numpy(x, binary_data=binary)
        return i

    grpc_big = grpcclient.InferInput("INPUT0", list(big.shape), "FP32")
    grpc_big.set_data_from_numpy(big)
    early_body, early_length = httpclient.InferenceServerClient.generate_request_body([http_input(big)])
    streamed: list[object] = []
    grpc.start_stream(callback=lambda result, error: streamed.append(error or result))
    grpc_mid = grpcclient.InferInput("INPUT0", list(mid.shape), "FP32")
    grpc_mid.set_data_from_numpy(mid)
    for i in range(requests):
        assert np.array_equal(http.infer("py_identity", [http_input(big)]).as_numpy("OUTPUT0"), big)
        assert np.array_equal(grpc.infer("py_identity", [grpc_big]).as_numpy("OUTPUT0"), big)
        assert np.array_equal(http.infer("py_bls", [http_input(mid)]).as_numpy("OUTPUT0"), mid)
        assert np.array_equal(http.infer("onnx_identity", [http_input(small, binary=False)]).as_numpy("OUTPUT0"),
                              small)
        grpc.async_stream_infer("py_stream", [grpc_mid])
        for model, x, datatype in (("py_identity", small.astype(np.int32), "INT32"),
                                   ("onnx_identity", small[0], "FP32"), ("missing", small, "FP32")):
            try:
                http.infer(model, [http_input(x, datatype)])
                raise AssertionError(f"{model} accepted a bad request")
            except InferenceServerException:
                pass
        if i % 10 == 0:
            leave_early("127.0.0.1", server.http_port, early_body, early_length or 0)
    deadline = time.monotonic() + 60
    while len(streamed) < 5 * requests and time.monotonic() < deadline:
        time.sleep(0.01)
    grpc.stop_stream()
    assert len(streamed) == 5 * requests and all(not isinstance(r, Exception) for r in streamed), streamed[:3]
    for _ in range(max(1, requests // 50)):
        asyncio.run(churn(server.http_port, 64, 20))
    for _ in range(reloads):
        for model in ("py_identity", "py_stream"):
            http.unload_model(model)
            http.load_model(model)
    assert np.array_equal(http.infer("py_identity", [http_input(big)]).as_numpy("OUTPUT0"), big)
    http.close()
    grpc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300, help="iterations of the mixed load per round")
    parser.add_argument("--reloads", type=int, default=5, help="unloads and loads of each Python model per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as repo:
        build_repo(repo)
        with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=*"]) as server:
            client = httpclient.InferenceServerClient(server.url)
            while not all(client.is_model_ready(m) for m in ("py_identity", "py_bls", "py_stream", "onnx_identity")):
                time.sleep(0.1)
            columns = ["server_mib", "stubs_mib", "server_fds", "stub_fds", "threads", "dev_shm", "stubs"]
            print(f"{'round':>5} {'seconds':>8} " + " ".join(f"{c:>10}" for c in columns))
            before = holdings(server.proc.pid)
            print(f"{'start':>5} {'':>8} " + " ".join(f"{before[c]:>10.1f}" for c in columns))
            for r in range(1, args.rounds + 1):
                start = time.monotonic()
                one_round(server, args.requests, args.reloads)
                time.sleep(0.5)  # let early leavers' requests finish
                now = holdings(server.proc.pid)
                print(f"{r:>5} {time.monotonic() - start:>8.1f} " + " ".join(f"{now[c]:>10.1f}" for c in columns),
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
