"""The response cache: what a hit costs against a miss and against no cache, on tritium and real Triton.

One Python-backend model (2 ms per execution, its output twice its input) served twice:
``cached`` (``response_cache { enable: true }``) and ``uncached``, by both servers started with
``--cache-config=local,size=128 MiB``.  wrk sends binary requests (FP32 [1,256]):

* ``hit``: the same body every time: after the first, every request is answered from the cache;
* ``miss``: every body different (a counter in the input's first bytes, a fresh seed per run), so every
  request is looked up, executed and stored: the cost of a cache that never helps;
* ``uncached``: the different bodies to the model without a cache: the baseline a miss is compared with.

With ``--redis``, tritium also runs with the Redis cache (a redis-server started here, ``pool_size=8``): label
``redis``.

Rounds alternate which server goes first; ratios are the median of per-round ratios of runs made back to back
(this machine's speed drifts).  Needs ``wrk``; Triton's side with ``--triton-python PYTHON`` (an interpreter
with nvidia-pytriton, whose build ships the local cache).

    python benchmarks/response_cache.py [--duration 5] [--rounds 3] [--connections 1,8]
        [--triton-python /work/triton-ref/.venv-triton/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import http_infer  # noqa: E402
from models import write_python_model  # noqa: E402
from server import free_port  # noqa: E402

#: Stands for a model whose execution takes 2 ms (on an accelerator, say), so that what differs is the server's
#: own work; a numpy model would measure each environment's BLAS instead (tritium's venv and Triton's carry
#: different numpy and OpenBLAS builds).
MODEL = '''
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.002)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0")
                                                            .as_numpy() * 2)]) for r in requests]
'''
CONFIG = """
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 1, 256 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1, 256 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
{extra}
"""
CACHE_BYTES = 128 * 1024 * 1024

#: Each request's body different: the input's first four bytes count requests, the next four hold the run's seed.
MISS_LUA = """
local f = io.open("{body}", "rb")
local body = f:read("*all")
f:close()
local head = body:sub(1, {header})
local tail = body:sub({header} + 9)
local seed = string.char({seed} % 256, math.floor({seed} / 256) % 256, 0x20, 0x3f)
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header}"
request = function()
  counter = counter + 1
  local c = counter
  local n = string.char(c % 256, math.floor(c / 256) % 256, math.floor(c / 65536) % 256, 0x3f)
  return wrk.format(nil, nil, nil, head .. n .. seed .. tail)
end
"""
HIT_LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
wrk.headers["Inference-Header-Content-Length"] = "{header}"
"""


def build_repo(repo: str) -> None:
    write_python_model(repo, "cached", MODEL, CONFIG.replace("{extra}", "response_cache { enable: true }"))
    write_python_model(repo, "uncached", MODEL, CONFIG.replace("{extra}", ""))


def write_body(workdir: str) -> tuple[str, int]:
    x = np.random.default_rng(1).standard_normal((1, 256)).astype(np.float32)
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 256], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    path = os.path.join(workdir, "body.bin")
    with open(path, "wb") as f:
        f.write(header + x.tobytes())
    return path, len(header)


def start(label: str, workdir: str, repo: str, triton_python: str | None,
          redis_port: int = 0) -> tuple[str, subprocess.Popen]:
    port = free_port()
    flags = [f"--model-repository={repo}", f"--http-port={port}", f"--grpc-port={free_port()}",
             f"--metrics-port={free_port()}"]
    if label == "redis":
        flags += ["--cache-config=redis,host=127.0.0.1", f"--cache-config=redis,port={redis_port}",
                  "--cache-config=redis,pool_size=8"]
    else:
        flags.append(f"--cache-config=local,size={CACHE_BYTES}")
    log = open(os.path.join(workdir, f"{label}.log"), "wb")
    if label == "triton":
        script = os.path.join(HERE, "..", "scripts", "real_triton.sh")
        proc = subprocess.Popen(["bash", script, *flags], stdout=log, stderr=log,
                                env=dict(os.environ, PYTRITON_PYTHON=triton_python or ""))
    else:
        proc = subprocess.Popen([sys.executable, "-m", "tritium", *flags], stdout=log, stderr=log)
    url = f"127.0.0.1:{port}"
    http_infer.wait_live(url, proc, timeout=180)
    return url, proc


def run(url: str, pid: int, workdir: str, mode: str, connections: int, duration: int, seed: int,
        body: tuple[str, int]) -> dict[str, float]:
    path, header = body
    lua = os.path.join(workdir, f"{mode}-{seed}.lua")
    text = (HIT_LUA if mode == "hit" else MISS_LUA).format(body=path, header=header, seed=seed)
    with open(lua, "w") as f:
        f.write(text)
    model = "uncached" if mode == "uncached" else "cached"
    return http_infer.run_wrk(url, model, lua, connections, duration, 1, pid)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", default="1,8")
    ap.add_argument("--triton-python", default=None, help="interpreter with nvidia-pytriton: Triton side by side")
    ap.add_argument("--redis", action="store_true",
                    help="also tritium with the Redis cache (pool_size=8), on a redis-server started here")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="tritium-bench-cache-")
    repo = os.path.join(workdir, "repo")
    build_repo(repo)
    body = write_body(workdir)
    labels = ["tritium"] + (["triton"] if args.triton_python else []) + (["redis"] if args.redis else [])
    servers: dict[str, tuple[str, subprocess.Popen]] = {}
    redis_port = free_port()
    if args.redis:
        if shutil.which("redis-server") is None:
            raise SystemExit("redis-server is not installed (apt-get install redis-server)")
        servers["redis-server"] = ("", subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir], stdout=subprocess.DEVNULL))
    modes = ("hit", "miss", "uncached")
    connections = [int(c) for c in args.connections.split(",")]
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    seed = 0
    try:
        for label in labels:
            servers[label] = start(label, workdir, repo, args.triton_python, redis_port)
            url, proc = servers[label]
            for mode in modes:  # warm up: stubs started, the hit body stored
                seed += 1
                run(url, proc.pid, workdir, mode, 8, 1, seed, body)
        for r in range(args.rounds):
            for label in http_infer.alternating(labels, r):
                url, proc = servers[label]
                for c in connections:
                    for mode in modes:
                        seed += 1
                        results.setdefault((label, mode, c), []).append(
                            run(url, proc.pid, workdir, mode, c, args.duration, seed, body))
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(workdir, ignore_errors=True)
    medians = http_infer.median_runs(results)
    print(f"{'server':<8} {'mode':<9} {'conns':>5} {http_infer.wrk_header(args.rounds)}")
    for (label, mode, c), runs in results.items():
        print(f"{label:<8} {mode:<9} {c:>5} {http_infer.wrk_columns(medians[(label, mode, c)], runs, args.rounds)}")
    print("\npaired req/s ratios (median of rounds)")
    for label in labels:
        for c in connections:
            hit, miss, plain = (results[(label, m, c)] for m in modes)
            print(f"{label:<8} c={c:<3} hit/miss {http_infer.paired_ratio(hit, miss)}   "
                  f"miss/uncached {http_infer.paired_ratio(miss, plain)}")
    if "triton" in labels:
        for c in connections:
            for mode in modes:
                ratio = http_infer.paired_ratio(results[("tritium", mode, c)], results[("triton", mode, c)])
                print(f"tritium/triton {mode:<9} c={c:<3} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
