"""Starting a real tritium server as a subprocess on free ports, as users run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningServer:
    """A tritium process; ``url`` is host:port for tritonclient.http."""

    def __init__(self, repos: Sequence[str], args: Sequence[str] = (), wait_ready: bool = True,
                 timeout: float = 60.0) -> None:
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        #: ``http://host:port/metrics`` (``--metrics-port``; pass ``--allow-metrics=false`` to turn it off).
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.url = f"127.0.0.1:{self.http_port}"
        #: host:port for tritonclient.grpc (``--grpc-port``; pass ``--allow-grpc=false`` to turn it off).
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tritium-{self.http_port}.log")
        cmd = [sys.executable, "-m", "tritium", f"--http-port={self.http_port}", "--http-address=127.0.0.1",
               f"--grpc-port={self.grpc_port}", "--grpc-address=127.0.0.1",
               f"--metrics-port={self.metrics_port}", "--metrics-address=127.0.0.1"]
        cmd += [f"--model-repository={r}" for r in repos]
        cmd += list(args)
        self.log = open(self.log_path, "w+b")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if wait_ready:
            self.wait_live(timeout)

    def wait_live(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/live", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not come up in {timeout}s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
