"""A real S3-compatible server for tests and benchmarks: moto's ``moto_server`` (from ``moto[server]``) on a
free port, and uploading a repository folder into it with boto3, as users upload with ``aws s3 sync``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Any

from server import free_port

#: Credentials the tests' server accepts (moto checks none unless IAM auth is on).
ENV = {"AWS_ACCESS_KEY_ID": "tritium-test", "AWS_SECRET_ACCESS_KEY": "tritium-test-secret",
       "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    """``moto_server`` as a child process; ``endpoint`` is its URL, ``repository(bucket, path)`` the
    ``--model-repository`` naming a folder in it (Triton's custom-endpoint form)."""

    def __init__(self, env: dict[str, str] | None = None, log_path: str | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.log_path = log_path or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moto-{self.port}.log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start: {self.output()}") from None
                time.sleep(0.1)

    def output(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def repository(self, bucket: str, path: str = "models") -> str:
        return f"s3://127.0.0.1:{self.port}/{bucket}/{path}"

    def client(self, **credentials: str) -> Any:
        import boto3

        keys = {"aws_access_key_id": ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": ENV["AWS_SECRET_ACCESS_KEY"]}
        keys.update(credentials)
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", **keys)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def sync(s3: Any, folder: str, bucket: str, prefix: str) -> None:
    """Make ``bucket/prefix`` hold exactly the files of ``folder`` (uploads all, deletes keys not there)."""
    wanted = set()
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            key = f"{prefix}/{os.path.relpath(path, folder)}"
            wanted.add(key)
            s3.upload_file(path, bucket, key)
    for key in keys(s3, bucket, prefix + "/"):
        if key not in wanted:
            s3.delete_object(Bucket=bucket, Key=key)


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [o["Key"] for o in page.get("Contents", [])]
    return found


class CuttingProxy:
    """A TCP proxy to ``port`` that cuts every connection once it has passed ``limit`` bytes towards the
    client: a network failure in the middle of a download, deterministic."""

    def __init__(self, port: int, limit: int) -> None:
        self._target = port
        self._limit = limit
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self._limit), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        passed = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if limit is not None and passed + len(data) > limit:
                    sink.sendall(data[: max(0, limit - passed)])
                    break
                sink.sendall(data)
                passed += len(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
