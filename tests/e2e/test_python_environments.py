"""``EXECUTION_ENV_PATH``: a Python model runs in the environment it names, packed (conda-pack's .tar.gz, as
Triton users ship them) or unpacked.

The environment here is a real virtual environment with its own copy of the interpreter (``venv
--copies``) and a module only it has; a ``.pth`` file lends it this environment's numpy (a conda-pack
archive would carry its own).  The model reports which interpreter, prefix and module it ran with.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import write_python_model
from server import RunningServer

WHERE = '''
import os
import sys
import numpy as np
import triton_python_backend_utils as pb_utils
import only_in_the_env

class TritonPythonModel:
    def execute(self, requests):
        facts = [only_in_the_env.VALUE, sys.executable, sys.prefix, os.environ["PATH"].split(os.pathsep)[0]]
        out = np.array([f.encode() for f in facts], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("FACTS", out)]) for _ in requests]
'''


def config(env_path: str) -> str:
    return ('backend: "python"\nmax_batch_size: 0\n'
            'input [ { name: "X", data_type: TYPE_INT32, dims: [ 1 ] } ]\n'
            'output [ { name: "FACTS", data_type: TYPE_STRING, dims: [ 4 ] } ]\n'
            f'parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env_path}" }} }}\n')


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A virtual environment directory (its own interpreter copy, a module of its own, numpy lent by .pth)."""
    env = str(tmp_path_factory.mktemp("env") / "myenv")
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", env], check=True, timeout=120)
    site = subprocess.run([os.path.join(env, "bin", "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    with open(os.path.join(site, "only_in_the_env.py"), "w") as f:
        f.write('VALUE = "from the packed environment"\n')
    with open(os.path.join(site, "lend_numpy.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(np.__file__)) + "\n")
    return env


def _pack(env: str, archive: str) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env, arcname=".")


def _facts(client: httpclient.InferenceServerClient, model: str) -> list[str]:
    x = httpclient.InferInput("X", [1], "INT32")
    x.set_data_from_numpy(np.array([1], dtype=np.int32))
    return [f.decode() for f in client.infer(model, [x]).as_numpy("FACTS")]


def _reason(client: httpclient.InferenceServerClient, model: str) -> str:
    index = {m["name"]: m for m in client.get_model_repository_index()}
    return index[model].get("reason", "")


def test_a_model_runs_in_its_packed_environment_which_is_removed_at_shutdown(packed_env: str, tmp_path,  # type: ignore[no-untyped-def]
                                                                           monkeypatch) -> None:
    # what a killed server left unpacked is removed; a cache of a live process is not
    temp = tmp_path / "tmp"
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = temp / f"tritium-python-envs-{gone.pid}-abc"
    live = temp / f"tritium-python-envs-{os.getpid()}-abc"
    for folder in (orphan, live):
        (folder / "key").mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(temp))
    repo = str(tmp_path / "repo")
    packed = write_python_model(repo, "packed", WHERE, config("$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    _pack(packed_env, os.path.join(packed, "env.tar.gz"))
    # a second model naming the same archive shares its unpacking
    write_python_model(repo, "shared", WHERE, config(os.path.join(packed, "env.tar.gz")))
    write_python_model(repo, "unpacked", WHERE, config(packed_env))
    write_python_model(repo, "plain", WHERE.replace("import only_in_the_env\n", ""), config("").replace(
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "" } }\n', ""))
    with RunningServer([repo], ["--allow-metrics=false", "--allow-grpc=false", "--exit-on-error=false"]) as s:
        client = httpclient.InferenceServerClient(s.url)
        value, executable, prefix, first_path = _facts(client, "packed")
        assert value == "from the packed environment"
        assert prefix != sys.prefix and prefix != packed_env and os.path.isdir(prefix)
        assert executable == os.path.join(prefix, "bin", "python") and first_path == os.path.join(prefix, "bin")
        assert prefix.startswith(str(temp) + os.sep)
        assert not orphan.exists() and live.exists()
        assert _facts(client, "shared")[2] == prefix
        value, executable, prefix_unpacked, _ = _facts(client, "unpacked")
        assert value == "from the packed environment" and prefix_unpacked == packed_env
        assert executable == os.path.join(packed_env, "bin", "python")
        assert client.is_model_ready("plain")
    assert not os.path.exists(prefix)  # the unpacked copy goes with the server


def test_a_broken_or_escaping_environment_fails_that_model_only_with_its_reason(packed_env: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = str(tmp_path / "repo")
    garbage = write_python_model(repo, "garbage", WHERE, config("$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    with open(os.path.join(garbage, "env.tar.gz"), "wb") as f:
        f.write(b"not an archive at all" * 10)
    write_python_model(repo, "escaping", WHERE, config("$$TRITON_MODEL_DIRECTORY/../garbage/env.tar.gz"))
    write_python_model(repo, "missing", WHERE, config("/nonexistent/env.tar.gz"))
    nopython = write_python_model(repo, "nopython", WHERE, config("$$TRITON_MODEL_DIRECTORY/empty.tar.gz"))
    os.makedirs(os.path.join(nopython, "emptyenv", "lib"))
    with tarfile.open(os.path.join(nopython, "empty.tar.gz"), "w:gz") as tar:
        tar.add(os.path.join(nopython, "emptyenv"), arcname=".")
    outside = write_python_model(repo, "outside", WHERE, config("$$TRITON_MODEL_DIRECTORY/evil.tar.gz"))
    with tarfile.open(os.path.join(outside, "evil.tar.gz"), "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    ok = write_python_model(repo, "ok", WHERE, config("$$TRITON_MODEL_DIRECTORY/env.tar.gz"))
    _pack(packed_env, os.path.join(ok, "env.tar.gz"))
    with RunningServer([repo], ["--allow-metrics=false", "--allow-grpc=false", "--exit-on-error=false"]) as s:
        client = httpclient.InferenceServerClient(s.url)
        deadline = time.monotonic() + 30
        while not client.is_model_ready("ok") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _facts(client, "ok")[0] == "from the packed environment"
        reasons = {m: _reason(client, m) for m in ("garbage", "escaping", "missing", "nopython", "outside")}
        assert "is neither a directory nor a tar archive" in reasons["garbage"], reasons
        assert "leaves the model directory" in reasons["escaping"], reasons
        assert "/nonexistent/env.tar.gz' does not exist" in reasons["missing"], reasons
        assert "holds no executable bin/python" in reasons["nopython"], reasons
        assert "failed to unpack" in reasons["outside"], reasons
        for model in reasons:
            with pytest.raises(InferenceServerException, match="has no available versions"):
                _facts(client, model)
    assert not os.path.exists(os.path.join(str(tmp_path), "escaped.txt"))
