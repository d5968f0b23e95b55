"""HTTP inference throughput and latency of tritium, measured with wrk.

Starts tritium on a repository it builds (an identity model, FP32 [1,16], and a
256→1024→1024→256 ReLU MLP), drives ``/v2/models/{m}/infer`` with wrk at 1, 8 and
32 connections with JSON and with binary bodies, and prints one table: req/s, p50, p99, and the CPU time
the server's processes spent per request (``cpu us``: all threads of the server and of its model
processes, from /proc; steadier than req/s on a noisy machine, and what bounds req/s when the cores are
busy; blank for a server given by ``--url``).

    python benchmarks/http_infer.py [--duration 10] [--connections 1,8,32] [--models identity,mlp]

Needs ``wrk`` (Debian package ``wrk``) and the ``onnx`` package.  With
``--url host:port`` it drives an already running server instead.  With
``--triton-python PYTHON`` (an interpreter whose environment has
``nvidia-pytriton``) it also starts real Triton through
``../shared/tools/real_triton.sh`` on an identity model with the same inputs
and outputs (Triton's Python backend: the only backend that build carries) and
measures it in the same run, for a side-by-side table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from models import identity_graph, mlp_graph, write_model  # noqa: E402

#: A command prefix for the load generators (``taskset -c 1``: the clients on their own cores), empty by default.
CLIENT_PREFIX: list[str] = []

LUA = """
local f = io.open("{body}", "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "{content_type}"
{extra}
"""

MODELS = {
    "identity": ("identity_fp32", (1, 16)),
    "mlp": ("mlp", (1, 256)),
    # python_backend.py's: a 1 MiB tensor through the identity model.py (its repository adds identity_any)
    "identity_1mib": ("identity_any", (262144,)),
}


def build_repo(root: str) -> None:
    write_model(root, "identity_fp32", identity_graph("FP32", ("batch", 16)), config="""
        backend: "onnxruntime"
        max_batch_size: 32
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
        dynamic_batching { }
        instance_group [ { kind: KIND_CPU count: 1 } ]
    """)
    graph, _ = mlp_graph((256, 1024, 1024, 256))
    write_model(root, "mlp", graph, config="""
        backend: "onnxruntime"
        max_batch_size: 32
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
        dynamic_batching { }
        instance_group [ { kind: KIND_CPU count: 1 } ]
        parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
    """)


TRITON_IDENTITY = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy())])
            for r in requests
        ]
"""


def build_triton_repo(root: str) -> None:
    """identity_fp32 as a Python-backend model, for real Triton."""
    os.makedirs(os.path.join(root, "identity_fp32", "1"))
    with open(os.path.join(root, "identity_fp32", "config.pbtxt"), "w") as f:
        f.write("""
            backend: "python"
            max_batch_size: 32
            input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
            output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
            dynamic_batching { }
            instance_group [ { kind: KIND_CPU count: 1 } ]
        """)
    with open(os.path.join(root, "identity_fp32", "1", "model.py"), "w") as f:
        f.write(TRITON_IDENTITY)


def real_triton_script() -> str:
    """``shared/tools/real_triton.sh`` beside the checkout (a worktree may sit deeper than the main one)."""
    here = HERE
    while True:
        script = os.path.join(here, "shared", "tools", "real_triton.sh")
        if os.path.exists(script) or os.path.dirname(here) == here:
            return script
        here = os.path.dirname(here)


def start_triton(workdir: str, python: str, port: int, extra: Callable[[str], None] | None = None,
                 prefix: Sequence[str] = ()) -> subprocess.Popen:
    """Real Triton on identity_fp32 (and whatever ``extra(repo)`` adds to its repository)."""
    script = real_triton_script()
    repo = os.path.join(workdir, "triton-repo")
    build_triton_repo(repo)
    if extra is not None:
        extra(repo)
    log = open(os.path.join(workdir, "triton.log"), "wb")
    return subprocess.Popen(
        [*prefix, "bash", script, f"--model-repository={repo}", f"--http-port={port}", f"--grpc-port={port + 1}",
         f"--metrics-port={port + 2}"],
        stdout=log, stderr=log, env=dict(os.environ, PYTRITON_PYTHON=python),
    )


def bodies(workdir: str, model: str, shape: tuple[int, ...]) -> dict[str, tuple[str, str, str]]:
    """mode -> (body file, content type, extra lua) for JSON and binary requests."""
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = {}
    doc = {"inputs": [{"name": "INPUT0", "shape": list(shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    path = os.path.join(workdir, f"{model}.json")
    with open(path, "wb") as f:
        f.write(json.dumps(doc).encode())
    out["json"] = (path, "application/json", "")
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "shape": list(shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    path = os.path.join(workdir, f"{model}.bin")
    with open(path, "wb") as f:
        f.write(header + x.tobytes())
    out["binary"] = (path, "application/octet-stream",
                     f'wrk.headers["Inference-Header-Content-Length"] = "{len(header)}"')
    return out


def wait_live(url: str, proc: subprocess.Popen | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not become ready")


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if match is None:
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def _proc_stats() -> dict[int, list[str]]:
    """The fields of ``/proc/<pid>/stat`` after the command name, for every process now."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
    return stats


def _tree(root: int, stats: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid (stat field 4)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def descendants(root: int) -> list[int]:
    """The processes below ``root`` (a server's model processes: tritium's stubs, Triton's)."""
    return _tree(root, _proc_stats())[1:]


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds used so far by process ``root`` and all its descendants (every thread of
    each): a server's front end and its model processes (tritium's stubs, Triton's)."""
    stats = _proc_stats()
    ticks = sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in _tree(root, stats) if pid in stats)  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, model: str, lua: str, connections: int, duration: int, threads: int,
            pid: int | None = None) -> dict[str, float]:
    """One wrk run: req/s, p50 and p99 ms, non-2xx responses; with the server's ``pid``, also ``cpu_us``: the
    CPU time its processes spent per request (steadier than req/s on a noisy machine, and what bounds
    req/s when the cores are busy)."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: the HTTP benchmarks drive load with it (apt-get install wrk)")
    cmd = [*CLIENT_PREFIX, "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s", "--latency", "-s", lua,
           f"http://{url}/v2/models/{model}/infer"]
    cpu_before = tree_cpu_s(pid) if pid is not None else 0.0
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = tree_cpu_s(pid) - cpu_before if pid is not None else 0.0
    if "Requests/sec" not in text or "50%" not in text:
        raise SystemExit(f"unexpected wrk output:\n{text}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    result = {"rps": rps, "p50": p50, "p99": p99, "errors": int(errors.group(1)) if errors else 0}
    if pid is not None:
        requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
        result["cpu_us"] = cpu * 1e6 / requests if requests else float("nan")
    return result


def median_runs(results: dict[Any, list[dict[str, float]]]) -> dict[Any, dict[str, float]]:
    """The median run (by req/s) of each key's repeated wrk runs (``--rounds`` in the side-by-side benchmarks)."""
    return {key: sorted(runs, key=lambda r: r["rps"])[len(runs) // 2] for key, runs in results.items()}


def paired_ratio(ours: list[dict[str, float]], theirs: list[dict[str, float]], key: str = "rps") -> str:
    """The median of round-by-round ratios of ``key`` (req/s, or ``cpu_us``), each of two runs made back to
    back, with their range.

    This machine's speed drifts by tens of percent within minutes; a ratio of two runs made seconds apart
    is much steadier than the ratio of two medians taken over the whole benchmark."""
    ratios = sorted(a[key] / b[key] for a, b in zip(ours, theirs, strict=True))
    middle = statistics.median(ratios)
    spread = f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else ""
    return f"{middle:.2f}x{spread}"


def alternating(servers: list[Any], round_index: int) -> list[Any]:
    """The servers in turn order for one round: reversed every other round, so neither always goes first."""
    return servers if round_index % 2 == 0 else servers[::-1]


def wrk_columns(median: dict[str, float], runs: list[dict[str, float]], rounds: int) -> str:
    """req/s, p50, p99, errors and server CPU µs per request (median over the rounds; blank when not
    measured) of the median run; with several rounds, every round's req/s after them."""
    cpu = sorted(run["cpu_us"] for run in runs if "cpu_us" in run)
    cpu_text = f"{cpu[len(cpu) // 2]:.0f}" if cpu else "-"
    line = f"{median['rps']:>9.0f} {median['p50']:>8.3f} {median['p99']:>8.3f} {median['errors']:>6} {cpu_text:>8}"
    if rounds > 1:
        line += "  " + " ".join(f"{run['rps']:.0f}" for run in runs)
    return line


def wrk_header(rounds: int) -> str:
    return (f"{'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'cpu us':>8}"
            + ("  rounds (req/s)" if rounds > 1 else ""))


def measure(args: argparse.Namespace, workdir: str, url: str, label: str, models: list[str],
            pid: int | None = None, hook: Any = None, warm: bool = True) -> list:
    """wrk runs; ``hook(model)``, when given, is called just before each measured run (after the warm-up) and
    returns what is called with that run's result dict after it (to add to it)."""
    rows = []
    for key in models:
        model, shape = MODELS[key]
        for mode, (body, ctype, extra) in bodies(workdir, model, shape).items():
            if mode not in args.modes.split(","):
                continue
            lua = os.path.join(workdir, f"{model}-{mode}.lua")
            with open(lua, "w") as f:
                f.write(LUA.format(body=body, content_type=ctype, extra=extra))
            if warm:
                run_wrk(url, model, lua, 8, 2, args.threads)  # warm up
            for c in (int(x) for x in args.connections.split(",")):
                after = hook(model) if hook is not None else None
                result = run_wrk(url, model, lua, c, args.duration, args.threads, pid)
                if after is not None:
                    after(result)
                rows.append((label, key, mode, c, result))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--models", default="identity,mlp")
    ap.add_argument("--modes", default="json,binary")
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--url", help="drive this running server instead of starting tritium")
    ap.add_argument("--label", default="tritium")
    ap.add_argument("--triton-python", help="also measure real Triton (identity only), started with this interpreter")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = tempfile.mkdtemp(prefix="tritium-bench-")
    proc = None
    url = args.url
    try:
        if url is None:
            repo = os.path.join(workdir, "repo")
            build_repo(repo)
            port = 18600
            url = f"127.0.0.1:{port}"
            log = open(os.path.join(workdir, "server.log"), "wb")
            proc = subprocess.Popen([sys.executable, "-m", "tritium", f"--model-repository={repo}",
                                     f"--http-port={port}", "--http-address=127.0.0.1", "--allow-grpc=false"],
                                    stdout=log, stderr=log)
        wait_live(url, proc)
        rows = measure(args, workdir, url, args.label, args.models.split(","), proc.pid if proc else None)
        if args.triton_python:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            proc = start_triton(workdir, args.triton_python, 18650)
            triton_url = "127.0.0.1:18650"
            wait_live(triton_url, proc, timeout=120)
            rows += measure(args, workdir, triton_url, "triton", ["identity"], proc.pid)
        print(f"{'server':<10} {'model':<9} {'body':<7} {'conns':>5} {wrk_header(1)}")
        for label, key, mode, c, r in rows:
            print(f"{label:<10} {key:<9} {mode:<7} {c:>5} {wrk_columns(r, [r], 1)}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
