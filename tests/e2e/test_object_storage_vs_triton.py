"""The same S3 repository (moto's ``moto_server``, custom-endpoint URL) served by real Triton and by tritium:
the same index, the same answers, the same versions after a new one is uploaded and loaded, the same refusal
of a model the bucket does not hold.  Runs where real Triton is installed (as tests/e2e/test_against_real_triton.py).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from s3server import ENV, MotoServer, sync  # noqa: E402

from models import echo_config, sleep_then_echo, write_python_model  # noqa: E402
from server import ROOT, RunningServer, ServerProcess, free_port  # noqa: E402

SCRIPT = os.environ.get("TRITIUM_REAL_TRITON_SCRIPT", os.path.join(ROOT, "scripts", "real_triton.sh"))
_own = os.path.join(ROOT, ".venv-triton", "bin", "python")
TRITON_PYTHON = os.environ.get("TRITIUM_TRITON_PYTHON") or (
    _own if os.path.exists(_own) else "/work/triton-ref/.venv-triton/bin/python")

pytestmark = pytest.mark.skipif(
    not (os.path.exists(SCRIPT) and os.path.exists(TRITON_PYTHON)),
    reason="real Triton is not installed: run ./scripts/test.sh --differential",
)


def _post(url: str, path: str) -> tuple[int, object]:
    request = urllib.request.Request(f"http://{url}{path}", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    return status, json.loads(body) if body else None


def _settled_index(url: str) -> object:
    """The index once no version is loading or unloading (retiring a version takes each server its time)."""
    deadline = time.monotonic() + 60
    while True:
        status, rows = _post(url, "/v2/repository/index")
        assert status == 200 and isinstance(rows, list)
        if time.monotonic() > deadline or not any(r.get("state") in ("LOADING", "UNLOADING") for r in rows):
            return rows
        time.sleep(0.1)


def _echo(url: str, name: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        inp = httpclient.InferInput("INPUT0", [3], "FP32")
        inp.set_data_from_numpy(np.array([1.5, -2.0, 3.25], dtype=np.float32))
        out = client.infer(name, [inp]).as_numpy("OUTPUT0")
        assert out is not None
        return out
    finally:
        client.close()


def test_an_s3_repository_is_served_as_triton_serves_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRITON_CLOUD_CREDENTIAL_PATH", raising=False)
    folder = str(tmp_path / "upload")
    write_python_model(folder, "echo", sleep_then_echo(0.0), echo_config(0))
    write_python_model(folder, "other", sleep_then_echo(0.0), echo_config(0))
    with MotoServer() as s3:
        client = s3.client()
        client.create_bucket(Bucket="differential")
        sync(client, folder, "differential", "models")
        repository = s3.repository("differential")
        flags = ["--model-control-mode=explicit", "--load-model=echo", "--exit-on-error=false"]
        ports = [free_port() for _ in range(3)]
        triton = ServerProcess(
            ["bash", SCRIPT, f"--model-repository={repository}", f"--http-port={ports[0]}",
             f"--grpc-port={ports[1]}", f"--metrics-port={ports[2]}", *flags],
            str(tmp_path / "triton.log"), dict(os.environ, PYTRITON_PYTHON=TRITON_PYTHON), *ports)
        try:
            try:
                triton.wait_live(180)
            except RuntimeError as e:
                pytest.skip(f"real Triton did not start: {str(e)[-500:]}")
            with RunningServer([repository], [*flags, f"--repository-cache-dir={tmp_path}"]) as tritium:
                urls = (tritium.url, triton.url)
                for url in urls:
                    assert httpclient.InferenceServerClient(url).is_model_ready("echo")
                assert _settled_index(urls[0]) == _settled_index(urls[1])
                np.testing.assert_array_equal(_echo(urls[0], "echo"), _echo(urls[1], "echo"))
                # version 2 uploaded, then loaded: both serve only version 2 (the default policy)
                write_python_model(folder, "echo", sleep_then_echo(0.0), echo_config(0), version=2)
                sync(client, folder, "differential", "models")
                assert [_post(u, "/v2/repository/models/echo/load")[0] for u in urls] == [200, 200]
                assert _settled_index(urls[0]) == _settled_index(urls[1])
                for url in urls:
                    http = httpclient.InferenceServerClient(url)
                    assert http.is_model_ready("echo", "2") and not http.is_model_ready("echo", "1")
                    http.close()
                # a model the bucket does not hold: the same refusal
                mine, theirs = (_post(u, "/v2/repository/models/nothere/load") for u in urls)
                assert mine[0] == theirs[0] and mine[1] == theirs[1], (mine, theirs)
                # unloaded, then loaded again from the bucket
                assert [_post(u, "/v2/repository/models/echo/unload")[0] for u in urls] == [200, 200]
                assert [_post(u, "/v2/repository/models/other/load")[0] for u in urls] == [200, 200]
                np.testing.assert_array_equal(_echo(urls[0], "other"), _echo(urls[1], "other"))
        finally:
            triton.stop()
