"""Starting a real tritium server as a subprocess on free ports, as users run it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Ports handed out by :func:`free_port` in this process: the kernel may give a just-released port again, and a
#: server given the same port for two endpoints fails to start.
_HANDED: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before by this process."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED:
            _HANDED.add(port)
            return port
    raise RuntimeError("no free port that was not handed out already")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL when the process has not ended within 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """A server process on free ports, its output in a log file; ``url`` is host:port for tritonclient.http,
    ``grpc_url`` for tritonclient.grpc, ``metrics_url`` the metrics page."""

    def __init__(self, command: Sequence[str], log_path: str, env: dict[str, str], http_port: int, grpc_port: int,
                 metrics_port: int, preexec_fn: Callable[[], None] | None = None) -> None:
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.url = f"127.0.0.1:{http_port}"
        self.grpc_url = f"127.0.0.1:{grpc_port}"
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log_path = log_path
        self.log = open(log_path, "w+b")
        self.proc = subprocess.Popen(list(command), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=preexec_fn)

    def wait_live(self, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
        """Wait for /v2/health/live to answer 200 (``headers``: what a restricted health API requires)."""
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"http://{self.url}/v2/health/live", headers=headers or {})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(request, timeout=1) as r:
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
        stop_process(self.proc)
        self.log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RunningServer(ServerProcess):
    """A tritium process, started as users run it (``python -m tritium`` with ``tritonserver``'s flags)."""

    def __init__(self, repos: Sequence[str], args: Sequence[str] = (), wait_ready: bool = True,
                 timeout: float = 60.0, preexec_fn: Callable[[], None] | None = None) -> None:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        cmd = [sys.executable, "-m", "tritium", f"--http-port={http_port}", "--http-address=127.0.0.1",
               f"--grpc-port={grpc_port}", "--grpc-address=127.0.0.1",
               f"--metrics-port={metrics_port}", "--metrics-address=127.0.0.1"]
        cmd += [f"--model-repository={r}" for r in repos]
        transport = os.environ.get("TRITIUM_TEST_GRPC_TRANSPORT")  # run the suite on either gRPC transport
        if transport and not any(str(a).startswith("--grpc-transport") for a in args):
            cmd.append(f"--grpc-transport={transport}")
        cmd += list(args)
        log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"tritium-{http_port}.log")
        super().__init__(cmd, log_path, dict(os.environ, PYTHONUNBUFFERED="1"), http_port, grpc_port, metrics_port,
                         preexec_fn)
        if wait_ready:
            self.wait_live(timeout)
            flags = [str(a) for a in args]
            if not any(f.replace(" ", "=") in ("--allow-grpc=false", "--allow-grpc=0") for f in flags):
                port = self.grpc_port
                for i, flag in enumerate(flags):  # a test may give the port itself (the last one counts)
                    if flag.startswith("--grpc-port="):
                        port = int(flag.split("=", 1)[1])
                    elif flag == "--grpc-port" and i + 1 < len(flags):
                        port = int(flags[i + 1])
                self.wait_port(port, timeout)  # live (HTTP) comes before the gRPC listener binds

    def wait_port(self, port: int, timeout: float = 60.0) -> None:
        """Wait until ``port`` accepts connections (the server keeps the port it was given, or exits)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.02)

    def __enter__(self) -> RunningServer:
        return self
