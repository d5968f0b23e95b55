"""The response cache on a real server: hits answered without executing the model (counted by the model itself
and by the statistics), byte-identical answers on every protocol, LRU eviction within the size, Triton's load
errors, and Triton's Redis cache shared by two servers through a real ``redis-server``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tritium.core.cache_redis import encode_entry
from tritium.core.inference import InferenceResponse
from tritium.core.types import DataType, Tensor

from models import write_python_model
from server import RunningServer, free_port

#: Writes a line to ``executions`` in its folder per execute: what ran, seen from outside the server.
COUNTED = '''
import os
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.path = os.path.join(args["model_repository"], "executions")

    def execute(self, requests):
        with open(self.path, "a") as f:
            f.write("%d\\n" % len(requests))
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            n = int(x.flat[0]) if x.size else 0
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT_F", (x / 3).astype(np.float32)),
                pb_utils.Tensor("OUT_S", np.array([str(v).encode() * 2 for v in x.flat], dtype=np.object_)),
                pb_utils.Tensor("OUT_BIG", np.full([max(n, 0)], 7, np.int32))]))
        return out
'''
COUNTED_CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
output [ { name: "OUT_F" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "OUT_S" data_type: TYPE_STRING dims: [ -1 ] },
         { name: "OUT_BIG" data_type: TYPE_INT32 dims: [ -1 ] } ]
{extra}
"""
CACHED = COUNTED_CONFIG.replace("{extra}", "response_cache { enable: true }")
#: 64 KiB: a few 20 KB answers fit, an 80 KB one does not.
CACHE_SIZE = 65536


def executions(repo: str, model: str = "counted") -> int:
    path = os.path.join(repo, model, "executions")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(int(line) for line in f if line.strip())


def stats(client: httpclient.InferenceServerClient, model: str = "counted") -> dict[str, int]:
    s = client.get_inference_statistics(model)["model_stats"][0]
    i = s["inference_stats"]
    return {"inference": s["inference_count"], "execution": s["execution_count"], "success": i["success"]["count"],
            "queue": i["queue"]["count"], "fail": i["fail"]["count"], "hit": i["cache_hit"]["count"],
            "miss": i["cache_miss"]["count"], "compute": i["compute_infer"]["count"]}


def infer(client: httpclient.InferenceServerClient, values: list[int], model: str = "counted",
          outputs: list[str] | None = None) -> dict[str, Any]:
    t = httpclient.InferInput("INPUT0", [len(values)], "INT32")
    t.set_data_from_numpy(np.array(values, np.int32))
    wanted = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    result = client.infer(model, [t], outputs=wanted)
    return {o["name"]: result.as_numpy(o["name"]).tolist() for o in result.get_response()["outputs"]}


def metric(server: RunningServer, line_start: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {line_start}")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    repo = str(tmp_path_factory.mktemp("cache_repo"))
    write_python_model(repo, "counted", COUNTED, CACHED)
    write_python_model(repo, "uncached", COUNTED, COUNTED_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "decoupled", COUNTED, CACHED + "model_transaction_policy { decoupled: true }")
    write_python_model(repo, "sequence", COUNTED, CACHED + "sequence_batching { }")
    with RunningServer([repo], ["--exit-on-error=false", f"--cache-config=local,size={CACHE_SIZE}",
                                "--metrics-config=summary_latencies=true"]) as server:
        yield server, repo


def test_a_hit_is_answered_without_executing_the_model(local: tuple[RunningServer, str]) -> None:
    server, repo = local
    client = httpclient.InferenceServerClient(server.url)
    before, ran = stats(client), executions(repo)
    answers = [infer(client, [11, 12]) for _ in range(4)]
    assert all(a == answers[0] for a in answers) and answers[0]["OUT_S"] == [b"1111", b"1212"]
    assert executions(repo) - ran == 1
    after = stats(client)
    moved = {k: after[k] - before[k] for k in after}
    # as Triton 2.51: a hit is a success (and a queue entry), never an inference, execution or compute time
    assert moved == {"inference": 1, "execution": 1, "success": 4, "queue": 4, "fail": 0, "hit": 3, "miss": 1,
                     "compute": 1}
    uncached = [infer(client, [11, 12], "uncached") for _ in range(2)]
    assert uncached[0] == answers[0] and executions(repo, "uncached") >= 2
    assert stats(client, "uncached")["hit"] == stats(client, "uncached")["miss"] == 0
    labels = '{model="counted",version="1"}'
    assert metric(server, "nv_cache_num_hits_per_model" + labels) == after["hit"]
    assert metric(server, "nv_cache_num_misses_per_model" + labels) == after["miss"]
    assert metric(server, "nv_cache_hit_duration_per_model" + labels) >= 0
    assert metric(server, "nv_inference_exec_count" + labels) == after["execution"]
    assert metric(server, "nv_cache_num_lookups ") >= after["hit"] + after["miss"]
    assert metric(server, "nv_cache_hit_summary_per_model_count" + labels) == after["hit"]
    assert metric(server, "nv_cache_miss_summary_per_model_count" + labels) == after["miss"]
    assert 0 < metric(server, "nv_cache_util ") <= 1
    with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
        assert 'nv_cache_num_hits_per_model{model="uncached"' not in r.read().decode()


def test_requested_outputs_and_inputs_decide_the_entry(local: tuple[RunningServer, str]) -> None:
    """Unlike Triton 2.51 (whose key has only the inputs), asking for other outputs is another entry."""
    server, repo = local
    client = httpclient.InferenceServerClient(server.url)
    ran = executions(repo)
    assert set(infer(client, [21], outputs=["OUT_F"])) == {"OUT_F"}
    assert set(infer(client, [21])) == {"OUT_F", "OUT_S", "OUT_BIG"}
    assert set(infer(client, [21], outputs=["OUT_F"])) == {"OUT_F"}
    assert infer(client, [22])["OUT_S"] == [b"2222"]
    assert executions(repo) - ran == 3


def raw_http(server: RunningServer, body: bytes, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(f"http://{server.url}/v2/models/counted/infer", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as r:
        return bytes(r.read()) + repr(sorted(r.headers.items())).encode()


def test_cached_answers_are_byte_identical_on_every_protocol(local: tuple[RunningServer, str]) -> None:
    server, repo = local
    client = httpclient.InferenceServerClient(server.url)
    ran, hits = executions(repo), stats(client)["hit"]
    body, length = httpclient.InferenceServerClient.generate_request_body(
        [_http_input([31, 32], binary=True)], outputs=[httpclient.InferRequestedOutput(n, binary_data=True)
                                                      for n in ("OUT_F", "OUT_S")], request_id="same")
    headers = {"Inference-Header-Content-Length": str(length)} if length is not None else {}
    binary = [raw_http(server, body, headers) for _ in range(2)]
    json_body, _ = httpclient.InferenceServerClient.generate_request_body(
        [_http_input([33, 34], binary=False)], outputs=[httpclient.InferRequestedOutput(n, binary_data=False)
                                                       for n in ("OUT_F", "OUT_S")])
    as_json = [raw_http(server, json_body, {}) for _ in range(2)]
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        message = pb.ModelInferRequest(model_name="counted", id="g")
        tensor = message.inputs.add(name="INPUT0", datatype="INT32", shape=[2])
        message.raw_input_contents.append(np.array([35, 36], np.int32).tobytes())
        del tensor
        over_grpc = [stub.ModelInfer(message, timeout=30).SerializeToString() for _ in range(2)]
    assert binary[0] == binary[1] and as_json[0] == as_json[1] and over_grpc[0] == over_grpc[1]
    assert b'"id":"same"' in binary[0] and b'"data":[11.0,11.333333015441895]' in as_json[0]
    assert executions(repo) - ran == 3 and stats(client)["hit"] - hits == 3
    # an answer stored by one protocol is the same tensors on another
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)
    t = grpcclient.InferInput("INPUT0", [2], "INT32")
    t.set_data_from_numpy(np.array([31, 32], np.int32))
    result = grpc_client.infer("counted", [t], outputs=[grpcclient.InferRequestedOutput(n) for n in ("OUT_F", "OUT_S")])
    assert result.as_numpy("OUT_S").tolist() == [b"3131", b"3232"] and executions(repo) - ran == 3


def _http_input(values: list[int], binary: bool) -> httpclient.InferInput:
    t = httpclient.InferInput("INPUT0", [len(values)], "INT32")
    t.set_data_from_numpy(np.array(values, np.int32), binary_data=binary)
    return t


def test_least_recently_used_answers_are_evicted_and_big_ones_never_stored(local: tuple[RunningServer, str]) -> None:
    """Answers of 20 KB in a 64 KiB cache: the fourth evicts the least recently used; an 80 KB one is not kept,
    nor does an 8 MB request body make the cache hold more than its size."""
    server, repo = local
    client = httpclient.InferenceServerClient(server.url)
    big = 5000  # OUT_BIG: 20,000 bytes
    for n in (big, big + 1, big + 2):
        infer(client, [n], outputs=["OUT_BIG"])
    infer(client, [big], outputs=["OUT_BIG"])  # a hit: now big + 1 is the least recently used
    ran = executions(repo)
    infer(client, [big + 3], outputs=["OUT_BIG"])  # evicts big + 1
    infer(client, [big], outputs=["OUT_BIG"])
    assert executions(repo) == ran + 1
    infer(client, [big + 1], outputs=["OUT_BIG"])
    assert executions(repo) == ran + 2
    assert metric(server, "nv_cache_num_evictions ") >= 1
    for _ in range(2):
        infer(client, [20_000], outputs=["OUT_BIG"])  # 80,000 bytes > 65,536: executed both times
    assert executions(repo) == ran + 4
    assert "is greater than total cache size: 65536" in server.output()
    huge = [3] + [0] * (2 * 1024 * 1024 - 1)  # 8 MB of input (128 times the cache), a small answer
    for _ in range(2):
        assert infer(client, huge, outputs=["OUT_BIG"])["OUT_BIG"] == [7, 7, 7]
    assert executions(repo) == ran + 5
    assert metric(server, "nv_cache_util ") <= 1.0


def test_models_the_cache_cannot_serve_are_refused_in_tritons_words(local: tuple[RunningServer, str]) -> None:
    server, _ = local
    index = {m["name"]: m for m in httpclient.InferenceServerClient(server.url).get_model_repository_index()}
    assert index["decoupled"]["state"] == "UNAVAILABLE"
    assert ("Response Cache does not currently support model decoupled with 'decoupled' transaction policy. Please "
            "disable the response cache.") in index["decoupled"]["reason"]
    assert index["sequence"]["state"] == "UNAVAILABLE"
    assert ("Response Cache does not currently support model sequence with sequence batching scheduler. Please "
            "disable the response cache.") in index["sequence"]["reason"]


def test_without_a_cache_config_the_model_is_served_uncached(tmp_path: Any) -> None:
    repo = str(tmp_path)
    write_python_model(repo, "counted", COUNTED, CACHED)
    with RunningServer([repo]) as server:
        client = httpclient.InferenceServerClient(server.url)
        for _ in range(3):
            infer(client, [1])
        assert executions(repo) == 3 and stats(client)["hit"] == stats(client)["miss"] == 0
        assert "enables the response cache, but the server has no cache" in server.output()
        with urllib.request.urlopen(server.metrics_url, timeout=30) as r:
            assert "nv_cache_" not in r.read().decode()


@pytest.mark.parametrize("flags, words", [
    (["--cache-config=local,size=abc"], "creating server: Internal - Failed to initialize LocalCache: stoull"),
    (["--cache-config=local,size=64"], "Could not initialize buffer in basic_managed_external_buffer constructor"),
    (["--cache-config=local"], "No cache specified. --cache-config option format is"),
    (["--cache-config=local,size=4096", "--cache-config=redis,host=r"], "only a single cache is currently supported"),
    (["--cache-config=redis,host=r"], "Must at a minimum specify 'host' and 'port'"),
    (["--cache-config=redis,host=127.0.0.1", "--cache-config=redis,port=abc"], "'port' must be an integer"),
], ids=["size", "small", "format", "two", "address", "port"])
def test_a_cache_config_that_cannot_work_is_refused_at_start(tmp_path: Any, flags: list[str], words: str) -> None:
    done = subprocess.run([sys.executable, "-m", "tritium", f"--model-repository={tmp_path}", *flags],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and words in done.stderr


# -- Redis ----------------------------------------------------------------------------------------------------

REDIS = shutil.which("redis-server")
PASSWORD = "s3cret-for-tests"


class RedisServer:
    """A real redis-server on a free port, password protected, nothing saved to disk."""

    def __init__(self, workdir: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.start()

    def start(self) -> None:
        """Start (again, on the same port, empty)."""
        self.proc = subprocess.Popen([REDIS or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--requirepass", PASSWORD,
                                      "--dir", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def flags(self, db: int = 3, password: str = PASSWORD) -> list[str]:
        return ["--cache-config=redis,host=127.0.0.1", f"--cache-config=redis,port={self.port}",
                f"--cache-config=redis,password={password}", f"--cache-config=redis,db={db}"]

    def keys(self, db: int = 3) -> list[bytes]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, db=db)
        try:
            return list(client.keys("*"))
        finally:
            client.close()

    def set(self, key: bytes, value: bytes, db: int = 3) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, db=db)
        try:
            client.set(key, value)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (Debian package redis-server; "
                                                       "scripts/test.sh installs it)")


@needs_redis
def test_two_servers_share_one_redis_cache_and_survive_its_loss(tmp_path: Any) -> None:
    pytest.importorskip("redis")
    redis_server = RedisServer(str(tmp_path))
    repos = [str(tmp_path / name) for name in ("a", "b")]
    for repo in repos:
        write_python_model(repo, "counted", COUNTED, CACHED)
    try:
        with RunningServer([repos[0]], redis_server.flags()) as a, RunningServer([repos[1]], redis_server.flags()) as b:
            client_a, client_b = httpclient.InferenceServerClient(a.url), httpclient.InferenceServerClient(b.url)
            first = infer(client_a, [41, 42])
            assert executions(repos[0]) == 1 and len(redis_server.keys()) == 1 and redis_server.keys(0) == []
            # server B answers from what server A stored: its model never runs
            assert [infer(client_b, [41, 42]) for _ in range(2)] == [first, first]
            assert executions(repos[1]) == 0
            assert stats(client_b) == {"inference": 0, "execution": 0, "success": 2, "queue": 2, "fail": 0, "hit": 2,
                                       "miss": 0, "compute": 0}
            g = grpcclient.InferenceServerClient(b.grpc_url)
            t = grpcclient.InferInput("INPUT0", [2], "INT32")
            t.set_data_from_numpy(np.array([41, 42], np.int32))
            assert g.infer("counted", [t]).as_numpy("OUT_S").tolist() == first["OUT_S"]
            assert executions(repos[1]) == 0
            # what Redis holds is not trusted: an entry that does not fit the model, or does not decode, is a miss
            [stored] = redis_server.keys()
            foreign = InferenceResponse("counted", 1, outputs=[Tensor("EVIL", DataType.INT32, np.array([1], np.int32))])
            for value in (encode_entry(foreign), b"\x80\x04not an entry"):
                redis_server.set(stored, value)
                assert infer(client_b, [41, 42]) == first
            assert executions(repos[1]) == 2
            assert "does not fit the model" in b.output() and "Failed to decode the entry of key" in b.output()
            redis_server.stop()
            # Redis went away: requests are still answered (by the model), the failure is logged, servers stay up
            for _ in range(3):
                assert infer(client_b, [41, 42]) == first
            assert executions(repos[1]) == 5 and client_b.is_server_live() and client_a.is_server_live()
            assert "Failed to retrieve key" in b.output()
            assert metric(b, "nv_cache_num_hits ") == 3
            # and back: the next answer is stored again, the one after is a hit
            redis_server.start()
            assert [infer(client_b, [41, 42]) for _ in range(2)] == [first, first]
            assert executions(repos[1]) == 6 and metric(b, "nv_cache_num_hits ") == 4
    finally:
        redis_server.stop()


@needs_redis
def test_a_redis_cache_that_cannot_be_reached_stops_the_start(tmp_path: Any) -> None:
    pytest.importorskip("redis")
    redis_server = RedisServer(str(tmp_path))
    try:
        for flags, words in ((redis_server.flags(password="wrong"), "Failed to initialize RedisCache: "),
                             (["--cache-config=redis,host=127.0.0.1", f"--cache-config=redis,port={free_port()}"],
                              "Failed to initialize RedisCache: ")):
            done = subprocess.run([sys.executable, "-m", "tritium", f"--model-repository={tmp_path}",
                                   f"--http-port={free_port()}", f"--grpc-port={free_port()}",
                                   f"--metrics-port={free_port()}", *flags],
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode != 0 and words in done.stderr and "creating server" in done.stderr
    finally:
        redis_server.stop()


def test_a_reloaded_model_is_not_answered_with_what_the_old_one_computed(tmp_path: Any) -> None:
    """Deliberate difference: Triton's keys name only the model and version, so a model reloaded with new files
    under the same version would answer from the old one's entries; a local cache here keys each load apart."""
    repo = str(tmp_path / "repo")
    write_python_model(repo, "counted", COUNTED, CACHED)
    trace_file = tmp_path / "trace.json"
    args = ["--model-control-mode=explicit", "--load-model=counted", f"--cache-config=local,size={CACHE_SIZE}",
            "--trace-config", f"triton,file={trace_file}", "--trace-config", "level=TIMESTAMPS",
            "--trace-config", "rate=1", "--trace-config", "triton,log-frequency=1"]
    with RunningServer([repo], args) as server:
        client = httpclient.InferenceServerClient(server.url)
        assert infer(client, [6])["OUT_S"] == [b"66"] and infer(client, [6])["OUT_S"] == [b"66"]
        assert executions(repo) == 1
        with open(os.path.join(repo, "counted", "1", "model.py"), "w") as f:
            f.write(COUNTED.replace("str(v).encode() * 2", "str(v).encode() * 3"))
        client.load_model("counted")
        assert infer(client, [6])["OUT_S"] == [b"666"] and infer(client, [6])["OUT_S"] == [b"666"]
        assert executions(repo) == 2
        # a traced hit is written with its request's start, lookup and end
        deadline = time.monotonic() + 30
        names: list[list[str]] = []
        while time.monotonic() < deadline and len(names) < 4:
            names = []
            for path in sorted(tmp_path.glob("trace.json*")):
                try:
                    entries = json.loads(path.read_text() or "[]")
                except ValueError:
                    continue
                by_id: dict[int, list[str]] = {}
                for entry in entries:
                    for stamp in entry.get("timestamps", []):
                        by_id.setdefault(entry["id"], []).append(stamp["name"])
                names.extend(by_id.values())
            time.sleep(0.2)
        core = [[n for n in stamps if not n.startswith("HTTP_")] for stamps in names]
        hits = [n for n in core if "COMPUTE_START" not in n]
        assert len(hits) == 2 and all(n == ["REQUEST_START", "QUEUE_START", "REQUEST_END"] for n in hits), names


@needs_redis
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test certificates")
def test_a_redis_cache_over_tls(tmp_path: Any) -> None:
    """Triton's TLS settings: ``cacert`` (any of cert, key, cacert, cacert_dir) turns TLS on."""
    pytest.importorskip("redis")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=tmp_path)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr")
    (tmp_path / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.pem")
    port = free_port()
    redis_proc = subprocess.Popen([REDIS or "redis-server", "--port", "0", "--tls-port", str(port), "--bind",
                                   "127.0.0.1", "--tls-cert-file", str(tmp_path / "server.pem"), "--tls-key-file",
                                   str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                                   "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
                                   "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    repo = str(tmp_path / "repo")
    write_python_model(repo, "counted", COUNTED, CACHED)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        flags = ["--cache-config=redis,host=127.0.0.1", f"--cache-config=redis,port={port}",
                 f"--cache-config=redis,cacert={tmp_path / 'ca.pem'}"]
        with RunningServer([repo], flags) as server:
            client = httpclient.InferenceServerClient(server.url)
            assert infer(client, [8]) == infer(client, [8])
            assert executions(repo) == 1 and stats(client)["hit"] == 1
    finally:
        redis_proc.terminate()
        redis_proc.wait(30)
