#!/usr/bin/env python
"""Compare candidate HTTP server stacks for tritium by per-request overhead.

Each candidate (see apps.py) is started as a single-process server on a free
loopback port serving the same KServe-v2 identity app, then driven with wrk
(one wrk thread for every setting, so the client cost is the same for all
candidates) at 1, 8 and 32 connections. Prints requests/s, p50/p99 latency
(wrk --latency) and server CPU time per request (all threads/processes of the
server, from /proc), which is the least noise-sensitive number on a small box.

Usage:
    python benchmarks/http_stacks/run.py [--duration 10] [--rounds 2]
           [--conns 1,8,32] [--only protocol,uvicorn] [--list]

Needs: wrk on PATH; uvloop, httptools, uvicorn, granian, orjson, numpy,
aiohttp in the running interpreter. socketify (and rloop for the granian
rloop variant) are optional: they are looked up in the interpreter and in
benchmarks/http_stacks/.deps (``pip install --target benchmarks/http_stacks/.deps
socketify rloop``); candidates whose imports fail are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
DEPS = os.path.join(HERE, ".deps")
HOST = "127.0.0.1"
INFER = "/v2/models/identity/infer"
LIVE = "/v2/health/live"
DATA = [float(i) * 0.5 for i in range(16)]
BODY = json.dumps(
    {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": DATA}]},
    separators=(",", ":"),
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------
def _apps(stack):
    return lambda port: [sys.executable, os.path.join(HERE, "apps.py"), stack, "--host", HOST, "--port", str(port)]


def _granian(interface, target, *extra):
    def argv(port):
        return [
            sys.executable, "-m", "granian",
            "--interface", interface,
            "--workers", "1",
            "--runtime-threads", "1",
            "--http", "1",
            "--no-ws",
            "--log-level", "warning",
            "--no-access-log",
            "--host", HOST,
            "--port", str(port),
            "--working-dir", HERE,
            *extra,
            target,
        ]  # fmt: skip

    return argv


# name -> (argv builder, modules that must import, description)
CANDIDATES = {
    "uvicorn": (_apps("uvicorn"), ["uvicorn", "uvloop", "httptools"],
                "uvicorn http=httptools loop=uvloop, raw ASGI callable, no access log"),
    "granian-rsgi": (_granian("rsgi", "apps:rsgi_app", "--runtime-mode", "st", "--loop", "uvloop"), ["granian"],
                     "granian RSGI, 1 worker, 1 runtime thread, st runtime, uvloop"),
    "granian-rsgi-rusttask": (_granian("rsgi", "apps:rsgi_app", "--runtime-mode", "st", "--loop", "uvloop",
                                       "--task-impl", "rust"), ["granian"],
                              "granian RSGI as above + --task-impl rust (py<3.12)"),
    "granian-rsgi-rloop": (_granian("rsgi", "apps:rsgi_app", "--runtime-mode", "st", "--loop", "rloop"),
                           ["granian", "rloop"], "granian RSGI, st runtime, rloop event loop"),
    "granian-asgi": (_granian("asginl", "apps:asgi_app", "--loop", "uvloop"), ["granian"],
                     "granian ASGI (no lifespan), 1 worker, 1 runtime thread, uvloop"),
    "granian-embed-rsgi": (_apps("granian-embed-rsgi"), ["granian", "uvloop"],
                           "granian embedded Server (in our own uvloop loop, no child process), RSGI"),
    "protocol": (_apps("protocol"), ["uvloop", "httptools"],
                 "hand-written asyncio.Protocol + httptools parser on uvloop"),
    "protocol-executor": (_apps("protocol-executor"), ["uvloop", "httptools"],
                          "  + model() via loop.run_in_executor(ThreadPoolExecutor(1))"),
    "protocol-queue": (_apps("protocol-queue"), ["uvloop", "httptools"],
                       "  + model() on a worker thread: SimpleQueue in, call_soon_threadsafe out"),
    "protocol-queue-coalesced": (_apps("protocol-queue-coalesced"), ["uvloop", "httptools"],
                                 "  + same, but at most one pending call_soon_threadsafe (batched wake-ups)"),
    "aiohttp": (_apps("aiohttp"), ["aiohttp", "uvloop"], "aiohttp low-level web.Server on uvloop"),
    "socketify": (_apps("socketify"), ["socketify"], "socketify (uWebSockets/cffi), sync handlers"),
}
DEFAULT_ORDER = list(CANDIDATES)


def _env():
    env = dict(os.environ)
    extra = [HERE] + ([DEPS] if os.path.isdir(DEPS) else [])
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def available(mods) -> str | None:
    code = "import " + ", ".join(mods)
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    if r.returncode:
        return (r.stderr.strip().splitlines() or ["import failed"])[-1]
    return None


# --------------------------------------------------------------------------
# server process management
# --------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _request(port, method, path, body=None, timeout=2.0):
    c = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def start_server(name, port, logf):
    argv = CANDIDATES[name][0](port)
    proc = subprocess.Popen(argv, env=_env(), stdout=logf, stderr=subprocess.STDOUT, cwd=HERE, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            if _request(port, "GET", LIVE, timeout=0.5)[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    else:
        stop_server(proc)
        raise RuntimeError(f"{name} did not become live")
    # correctness check of the infer endpoint
    st, ctype, raw = _request(port, "POST", INFER, BODY)
    resp = json.loads(raw)
    out = resp["outputs"][0]
    ok = (
        st == 200
        and (ctype or "").startswith("application/json")
        and resp["model_name"] == "identity"
        and out["name"] == "OUTPUT0"
        and out["shape"] == [1, 16]
        and out["datatype"] == "FP32"
        and out["data"] == DATA
    )
    if not ok:
        stop_server(proc)
        raise RuntimeError(f"{name}: bad infer response {st} {ctype} {raw[:200]!r}")
    if _request(port, "GET", "/nope")[0] != 404:
        stop_server(proc)
        raise RuntimeError(f"{name}: unknown path did not 404")
    return proc


def stop_server(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def _tree(pid):
    pids, stack = [], [pid]
    while stack:
        p = stack.pop()
        pids.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    stack.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return pids


def cpu_seconds(pid) -> float:
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime (this process, all threads)
        except OSError:
            pass
    return total / CLK_TCK


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(tok: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", tok)
    if not m:
        return float("nan")
    v, u = float(m.group(1)), m.group(2)
    return v * (60000.0 if u == "m" else _UNITS[u])


def run_wrk(port, conns, duration, threads, script):
    argv = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", script,
            f"http://{HOST}:{port}{INFER}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30).stdout
    res = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "requests": 0, "errors": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res["rps"] = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res["requests"] = int(m.group(1))
    for pct, key in (("50", "p50"), ("99", "p99")):
        if m := re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M):
            res[key] = _ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        res["errors"] += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res["errors"] += sum(int(x) for x in m.groups())
    res["raw"] = out
    return res


def write_lua(path):
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = '{BODY}'\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')


# --------------------------------------------------------------------------
# in-process thread-hop micro-benchmark (no HTTP)
# --------------------------------------------------------------------------
def hop_microbench(n=20000):
    """Sequential round trips loop -> worker thread -> loop, uvloop. Returns us/round trip."""
    import queue
    import threading

    import uvloop

    results = {}

    def ident(x):
        return x

    async def baseline():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        i = 0

        def step(_=None):
            nonlocal i
            i += 1
            if i >= n:
                done.set_result(None)
            else:
                loop.call_soon(step)

        t = time.perf_counter()
        step()
        await done
        return time.perf_counter() - t

    async def executor():
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1)
        done = loop.create_future()
        i = 0

        def step(_=None):
            nonlocal i
            i += 1
            if i >= n:
                done.set_result(None)
            else:
                loop.run_in_executor(pool, ident, i).add_done_callback(step)

        t = time.perf_counter()
        step()
        await done
        dt = time.perf_counter() - t
        pool.shutdown()
        return dt

    async def simplequeue():
        loop = asyncio.get_running_loop()
        q = queue.SimpleQueue()
        done = loop.create_future()
        i = 0

        def worker():
            call = loop.call_soon_threadsafe
            while True:
                item = q.get()
                if item is None:
                    return
                fn, arg, cb = item
                call(cb, fn(arg))

        th = threading.Thread(target=worker, daemon=True)
        th.start()

        def step(_=None):
            nonlocal i
            i += 1
            if i >= n:
                done.set_result(None)
            else:
                q.put((ident, i, step))

        t = time.perf_counter()
        step()
        await done
        dt = time.perf_counter() - t
        q.put(None)
        th.join()
        return dt

    for name, fn in (("loop.call_soon (no thread)", baseline), ("run_in_executor(TPE(1))", executor),
                     ("SimpleQueue + call_soon_threadsafe", simplequeue)):
        best = min(uvloop.run(fn()) for _ in range(3))
        results[name] = best / n * 1e6
    return results


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------
def fmt_table(rows, title):
    lines = [title]
    hdr = f"{'stack':26} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10} {'errors':>6}"
    lines += [hdr, "-" * len(hdr)]
    last = None
    for r in rows:
        if last is not None and r["stack"] != last:
            lines.append("")
        last = r["stack"]
        if "skip" in r:
            lines.append(f"{r['stack']:26} {'':>5} skipped: {r['skip']}")
            continue
        lines.append(
            f"{r['stack']:26} {r['conns']:>5} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} "
            f"{r['cpu_us']:>10.1f} {r['errors']:>6}"
        )
    return "\n".join(lines)


def hop_summary(rows):
    """Thread-hop cost from the HTTP runs: protocol-<hop> vs protocol (same round)."""
    by = {(r["stack"], r["conns"]): r for r in rows if "skip" not in r}
    out = []
    for hop in ("protocol-executor", "protocol-queue", "protocol-queue-coalesced"):
        parts = []
        for c in sorted({k[1] for k in by}):
            a, b = by.get(("protocol", c)), by.get((hop, c))
            if not a or not b:
                continue
            d_wall = (1e6 / b["rps"] - 1e6 / a["rps"]) if a["rps"] and b["rps"] else float("nan")
            parts.append(
                f"c={c}: +{(b['p50'] - a['p50']) * 1000:.0f}us p50, +{d_wall:.1f}us/req wall, "
                f"+{b['cpu_us'] - a['cpu_us']:.1f}us/req CPU"
            )
        if parts:
            out.append(f"  {hop:26} " + " | ".join(parts))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    ap.add_argument("--rounds", type=int, default=2, help="run the whole table this many times (default 2)")
    ap.add_argument("--conns", default="1,8,32", help="comma-separated connection counts")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (fixed for all candidates; default 1)")
    ap.add_argument("--warmup", type=float, default=2, help="warm-up seconds per candidate (default 2)")
    ap.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated candidate names to leave out")
    ap.add_argument("--no-microbench", action="store_true", help="skip the in-process thread-hop micro-benchmark")
    ap.add_argument("--json", help="also write all results to this JSON file")
    ap.add_argument("--list", action="store_true", help="list candidates and exit")
    a = ap.parse_args()

    if a.list:
        for k, v in CANDIDATES.items():
            print(f"{k:26} {v[2]}")
        return
    if not shutil.which("wrk"):
        sys.exit("wrk not found on PATH (apt-get install wrk)")
    names = [n for n in (a.only.split(",") if a.only else DEFAULT_ORDER) if n]
    skip = set(filter(None, a.skip.split(",")))
    names = [n for n in names if n not in skip]
    for n in names:
        if n not in CANDIDATES:
            sys.exit(f"unknown candidate {n!r}; see --list")
    conns = [int(c) for c in a.conns.split(",")]

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, wrk -t{a.wrk_threads}, "
          f"{a.duration}s per run, connections {conns}", flush=True)
    for n in names:
        print(f"  {n:26} {CANDIDATES[n][2]}")
    missing = {n: err for n in names if (err := available(CANDIDATES[n][1]))}
    for n, err in missing.items():
        print(f"  (skipping {n}: {err})")
    print(flush=True)

    tmp = tempfile.mkdtemp(prefix="http_stacks_")
    script = os.path.join(tmp, "post.lua")
    write_lua(script)
    all_rounds = []
    try:
        for rnd in range(1, a.rounds + 1):
            rows = []
            for n in names:
                if n in missing:
                    rows.append({"stack": n, "skip": missing[n]})
                    continue
                port = free_port()
                logpath = os.path.join(tmp, f"{n}.log")
                with open(logpath, "w") as logf:
                    try:
                        proc = start_server(n, port, logf)
                    except Exception as e:  # noqa: BLE001
                        rows.append({"stack": n, "skip": f"{e} (log: {logpath})"})
                        print(f"[round {rnd}] {n}: FAILED {e}", flush=True)
                        continue
                    try:
                        if a.warmup > 0:
                            run_wrk(port, max(conns), max(1, int(a.warmup)), a.wrk_threads, script)
                        for c in conns:
                            c0 = cpu_seconds(proc.pid)
                            r = run_wrk(port, c, a.duration, a.wrk_threads, script)
                            c1 = cpu_seconds(proc.pid)
                            r["cpu_us"] = (c1 - c0) / r["requests"] * 1e6 if r["requests"] else float("nan")
                            r.update(stack=n, conns=c, round=rnd)
                            rows.append(r)
                            print(f"[round {rnd}] {n:26} c={c:<3} {r['rps']:9.0f} req/s  p50 {r['p50']:.3f} ms  "
                                  f"p99 {r['p99']:.3f} ms  cpu {r['cpu_us']:.1f} us/req  err {r['errors']}",
                                  flush=True)
                        if proc.poll() is not None:
                            rows.append({"stack": n, "skip": f"server died during run (log: {logpath})"})
                    finally:
                        stop_server(proc)
            all_rounds.append(rows)

        print()
        for i, rows in enumerate(all_rounds, 1):
            print(fmt_table(rows, f"=== round {i} of {len(all_rounds)} ==="))
            hs = hop_summary(rows)
            if hs:
                print("thread-hop cost vs inline protocol (same round):")
                print(hs)
            print()
        if not a.no_microbench:
            print("in-process thread-hop micro-benchmark (uvloop, sequential round trips, best of 3):")
            for k, v in hop_microbench().items():
                print(f"  {k:38} {v:7.2f} us/round trip")
        if a.json:
            with open(a.json, "w") as f:
                json.dump([[{k: v for k, v in r.items() if k != "raw"} for r in rows] for rows in all_rounds], f,
                          indent=1)
    finally:
        if any("skip" in r for rows in all_rounds for r in rows):
            print(f"(server logs kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
