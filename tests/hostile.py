"""Hostile HTTP clients on raw sockets (what tritonclient cannot express), and /proc readings of a server.

Used by ``tests/e2e/test_hostile_clients.py`` and ``benchmarks/hostile_clients.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import selectors
import socket
import threading
import time


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        head.append(f"{name}: {value}")
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framing); raises ConnectionError when the server closes first."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed the connection (had {data[:200]!r})")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(max(65536, length - len(rest)))
        if not chunk:
            raise ConnectionError("server closed the connection in a response body")
        rest += chunk
    return status, headers, rest[:length]


def closed_by_server(sock: socket.socket, timeout: float) -> tuple[float, bytes] | None:
    """Wait up to ``timeout`` s for the server to close; returns (seconds, bytes it sent first) or None."""
    start = time.monotonic()
    got = b""
    sock.settimeout(0.2)
    while time.monotonic() - start < timeout:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return time.monotonic() - start, got
        if not chunk:
            return time.monotonic() - start, got
        got += chunk
    return None


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """A fresh connection, one GET."""
    with connect(port, timeout) as s:
        s.sendall(request_bytes("GET", path))
        status, _, body = read_response(s)
        return status, body


def inflating_infer_request(model: str, nbytes: int) -> bytes:
    """An ``/infer`` request whose gzip body is small but inflates to a ``nbytes`` UINT8 tensor (binary
    extension), asking for the output in binary: the response is ``nbytes`` of zeros and some JSON."""
    header = json.dumps({
        "inputs": [{"name": "INPUT0", "datatype": "UINT8", "shape": [nbytes],
                    "parameters": {"binary_data_size": nbytes}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}],
    }).encode()
    body = gzip.compress(header + bytes(nbytes), compresslevel=9)
    return request_bytes("POST", f"/v2/models/{model}/infer", body, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Encoding": "gzip",
    })


class IdleFlood:
    """``count`` connections that send nothing and reconnect whenever the server closes one: clients that
    try to hold every slot of a port.  Runs in a thread until :meth:`stop`."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.reconnects = 0
        self.refused = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        except OSError:
            self.refused += 1
            s.close()
            return
        self._sel.register(s, selectors.EVENT_READ)

    def start(self) -> IdleFlood:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._sel.unregister(s)
                    s.close()  # type: ignore[union-attr]
                    self.reconnects += 1
                    if not self._stop.is_set():
                        self._open()

    def held(self) -> int:
        return len(self._sel.get_map())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self._sel.get_map().values()):
            self._sel.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()
