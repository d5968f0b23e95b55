"""Model repositories in S3 (``--model-repository=s3://host:port/bucket/path``), against a real S3-compatible
server the tests start (moto's ``moto_server``), with real tritium processes and tritonclient.

Every model-management mode reads the bucket: start-up load, explicit load/unload of a newly uploaded version,
config and file overrides, poll mode seeing models added, changed and removed, Python models with a packed
``EXECUTION_ENV_PATH``.  Models load from a local copy that is complete before it is used, stays under the
cache bound, and goes at unload and shutdown; hostile object keys never write outside it.  Bad credentials
(moto with IAM auth on), a missing bucket, a connection cut mid-download and the S3 server stopping each
fail with the repository and model named, while the other repositories keep serving.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from s3server import ENV, CuttingProxy, MotoServer, keys, sync  # noqa: E402

from models import echo_config, identity_graph, write_model, write_python_model  # noqa: E402
from server import RunningServer  # noqa: E402

IDENT = """
backend: "onnxruntime"
max_batch_size: {batch}
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] }} ]
{extra}
"""

WARMUP = """
model_warmup [ { name: "file" batch_size: 1 inputs { key: "INPUT0" value: { data_type: TYPE_FP32 dims: [ 16 ]
                 input_data_file: "ones" } } } ]
"""

ENV_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils
import only_in_the_env


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * only_in_the_env.FACTOR)]))
        return out
'''


def ident(repo: str, name: str, version: int = 1, batch: int = 8, extra: str = "") -> str:
    return write_model(repo, name, identity_graph(), IDENT.format(batch=batch, extra=extra), version=version)


def infer(url: str, name: str, version: str = "") -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    try:
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer(name, [inp], model_version=version).as_numpy("OUTPUT0")
        assert result is not None
        return result
    finally:
        client.close()


def index(url: str) -> dict[str, list[dict[str, str]]]:
    request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        rows = json.loads(r.read())
    found: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        found.setdefault(row["name"], []).append(row)
    return found


def load(url: str, name: str, body: dict[str, object] | None = None) -> tuple[int, str]:
    data = json.dumps(body or {}).encode()
    request = urllib.request.Request(f"http://{url}/v2/repository/models/{name}/load", data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def cache_files(cache: str) -> list[str]:
    """The files of the models' copies (not the lock file marking a cache folder in use)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if f != ".in-use"]


@pytest.fixture(scope="module")
def s3():  # type: ignore[no-untyped-def]
    with MotoServer() as server:
        yield server


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TRITON_CLOUD_CREDENTIAL_PATH", raising=False)


@pytest.fixture(scope="module")
def packed_env(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A packed environment (``env.tar.gz``) with a module of its own and numpy lent by a .pth file."""
    env = str(tmp_path_factory.mktemp("env") / "myenv")
    subprocess.run([sys.executable, "-m", "venv", "--copies", "--without-pip", env], check=True, timeout=120)
    site = subprocess.run([os.path.join(env, "bin", "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    with open(os.path.join(site, "only_in_the_env.py"), "w") as f:
        f.write("FACTOR = 3\n")
    with open(os.path.join(site, "lend_numpy.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(np.__file__)) + "\n")
    archive = str(tmp_path_factory.mktemp("archive") / "env.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(env, arcname=".")
    return archive


def test_startup_load_serves_onnx_and_python_models_from_s3_and_cleans_the_cache(  # type: ignore[no-untyped-def]
        s3, aws_env, packed_env, tmp_path) -> None:
    folder = str(tmp_path / "upload")
    model = ident(folder, "ident", extra=WARMUP)
    os.makedirs(os.path.join(model, "warmup"))
    np.ones(16, dtype=np.float32).tofile(os.path.join(model, "warmup", "ones"))
    py = write_python_model(folder, "envpy", ENV_MODEL, echo_config(0, extra=(
        'parameters { key: "EXECUTION_ENV_PATH" value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }')))
    with open(packed_env, "rb") as src, open(os.path.join(py, "env.tar.gz"), "wb") as dst:
        dst.write(src.read())
    client = s3.client()
    client.create_bucket(Bucket="startup")
    sync(client, folder, "startup", "models")
    local = str(tmp_path / "local")
    ident(local, "local_ident")
    cache = tmp_path / "cache"
    orphan = cache / "tritium-models-s3-killed"  # what a killed server left: its lock file held by no one
    (orphan / ".copies" / "old.1").mkdir(parents=True)
    (orphan / ".in-use").write_bytes(b"")
    repository = s3.repository("startup")
    with RunningServer([repository, local], [f"--repository-cache-dir={cache}"], timeout=180) as server:
        wait_for(lambda: httpclient.InferenceServerClient(server.url).is_server_ready(), 120)
        x = np.arange(16, dtype=np.float32).reshape(1, 16)
        np.testing.assert_array_equal(infer(server.url, "ident"), x)
        np.testing.assert_array_equal(infer(server.url, "local_ident"), x)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("INPUT0", [4], "FP32")
        inp.set_data_from_numpy(np.arange(4, dtype=np.float32))
        result = grpc.infer("envpy", [inp]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(result, np.arange(4, dtype=np.float32) * 3)  # ran in the packed env
        grpc.close()
        assert {"ident", "envpy", "local_ident"} <= set(index(server.url))
        assert not orphan.exists()
        (root,) = os.listdir(cache)  # one folder for the repository; each model a link to a complete copy
        assert os.path.islink(cache / root / "ident") and (cache / root / "ident" / "1" / "model.onnx").is_file()
        assert (cache / root / "envpy" / "env.tar.gz").is_file()
        assert "fetched model 'ident' from" in server.output()
    assert os.listdir(cache) == [], cache_files(str(cache))  # the copies go with the server


def test_explicit_mode_loads_a_new_version_overrides_and_unload_removes_the_copy(  # type: ignore[no-untyped-def]
        s3, aws_env, tmp_path) -> None:
    folder = str(tmp_path / "upload")
    ident(folder, "ident", version=1)
    client = s3.client()
    client.create_bucket(Bucket="explicit")
    sync(client, folder, "explicit", "models")
    cache = tmp_path / "cache"
    cache.mkdir()
    args = ["--model-control-mode=explicit", "--load-model=ident", f"--repository-cache-dir={cache}"]
    with RunningServer([s3.repository("explicit")], args) as server:
        http = httpclient.InferenceServerClient(server.url)
        assert wait_for(lambda: http.is_model_ready("ident", "1"))
        # a new version uploaded, then loaded: the default policy serves only the latest
        ident(folder, "ident", version=2)
        sync(client, folder, "explicit", "models")
        assert load(server.url, "ident") == (200, "")
        assert http.is_model_ready("ident", "2") and not http.is_model_ready("ident", "1")
        infer(server.url, "ident", "2")
        # a config override read against the S3 copy: both versions
        override = {"parameters": {"config": json.dumps({
            "backend": "onnxruntime", "max_batch_size": 8, "version_policy": {"all": {}},
            "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}],
            "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [16]}]})}}
        assert load(server.url, "ident", override) == (200, "")
        assert http.is_model_ready("ident", "1") and http.is_model_ready("ident", "2")
        # file overrides of a model that is in S3: the files the client sent serve
        with open(os.path.join(folder, "ident", "1", "model.onnx"), "rb") as f:
            onnx = f.read()
        files = {"parameters": {"config": override["parameters"]["config"],  # type: ignore[index]
                                "file:7/model.onnx": base64.b64encode(onnx).decode()}}
        assert load(server.url, "ident", files) == (200, "")
        assert http.is_model_ready("ident", "7")
        # unloading removes the local copy (once the versions are drained)
        http.unload_model("ident")
        assert wait_for(lambda: not cache_files(str(cache))), cache_files(str(cache))
        # reloading fetches it again
        assert load(server.url, "ident") == (200, "")
        assert http.is_model_ready("ident", "2")
        assert cache_files(str(cache))
        # a model no longer in the bucket: Triton's answer
        status, body = load(server.url, "missing")
        assert status != 200 and "failed to poll from model repository" in body, body
        http.close()


def test_poll_mode_sees_models_added_changed_and_removed_in_the_bucket(  # type: ignore[no-untyped-def]
        s3, aws_env, tmp_path) -> None:
    folder = str(tmp_path / "upload")
    ident(folder, "first", extra="version_policy: { all: {} }")
    client = s3.client()
    client.create_bucket(Bucket="poll")
    sync(client, folder, "poll", "models")
    cache = tmp_path / "cache"
    cache.mkdir()
    args = ["--model-control-mode=poll", "--repository-poll-secs=0.5", f"--repository-cache-dir={cache}"]
    with RunningServer([s3.repository("poll")], args) as server:
        http = httpclient.InferenceServerClient(server.url)
        assert wait_for(lambda: http.is_model_ready("first"))
        ident(folder, "second", batch=8)
        sync(client, folder, "poll", "models")
        assert wait_for(lambda: http.is_model_ready("second")), server.output()
        assert http.get_model_config("second")["max_batch_size"] == 8
        ident(folder, "second", batch=4)  # the config changes: reloaded
        sync(client, folder, "poll", "models")
        assert wait_for(lambda: http.get_model_config("second")["max_batch_size"] == 4), server.output()
        for key in keys(client, "poll", "models/second/"):
            client.delete_object(Bucket="poll", Key=key)
        assert wait_for(lambda: not http.is_model_ready("second")), server.output()
        assert wait_for(lambda: not any(os.sep + "second" in p for p in cache_files(str(cache))))
        assert http.is_model_ready("first")
        infer(server.url, "first")
        # a version added: only it is built; version 1's files are reused from the previous copy, unchanged
        ident(folder, "first", version=2, extra="version_policy: { all: {} }")
        sync(client, folder, "poll", "models")
        assert wait_for(lambda: http.is_model_ready("first", "2")), server.output()
        built = [line.split("loading model 'first' ")[1].split(" from")[0] for line in server.output().splitlines()
                 if "loading model 'first' " in line]
        assert built == ["version 1", "version 2"], built
        assert http.is_model_ready("first", "1")
        http.close()


def test_hostile_keys_and_the_cache_bound_fail_only_their_model(  # type: ignore[no-untyped-def]
        s3, aws_env, tmp_path) -> None:
    folder = str(tmp_path / "upload")
    for name in ("ok", "dotdot", "slashes", "big", "conflict"):
        ident(folder, name)
    with open(os.path.join(folder, "big", "1", "weights.bin"), "wb") as f:
        f.write(os.urandom(2 << 20))
    client = s3.client()
    client.create_bucket(Bucket="hostile")
    sync(client, folder, "hostile", "models")
    client.put_object(Bucket="hostile", Key="models/dotdot/1/../../../../../escaped.txt", Body=b"bad")
    client.put_object(Bucket="hostile", Key="models/slashes/1//abs.txt", Body=b"bad")
    client.put_object(Bucket="hostile", Key="models/conflict/1/model.onnx/inside", Body=b"a file and a folder")
    cache = tmp_path / "cache"
    cache.mkdir()
    args = ["--exit-on-error=false", f"--repository-cache-dir={cache}", "--repository-cache-size=1"]
    with RunningServer([s3.repository("hostile")], args) as server:
        http = httpclient.InferenceServerClient(server.url)
        assert wait_for(lambda: "state" in index(server.url).get("big", [{}])[0])
        rows = index(server.url)
        assert http.is_model_ready("ok")
        for name in ("dotdot", "slashes"):
            reason = rows[name][0]["reason"]
            assert f"from model repository '{s3.repository('hostile')}'" in reason, reason
            assert "is not a plain relative path" in reason and name in reason, reason
        assert "model repository cache is full" in rows["big"][0]["reason"], rows["big"]
        reason = rows["conflict"][0]["reason"]
        assert "failed to load 'conflict'" in reason and "'conflict/1/model.onnx' is both a file and a folder" \
            in reason, reason
        assert str(cache) not in reason and "/tmp" not in reason, reason  # no server path reaches a client
        assert not [p for p in cache_files(str(cache)) if os.sep + "conflict" in p]
        http.close()
    escaped = [p for p in cache_files(str(tmp_path)) if p.endswith("escaped.txt") or p.endswith("abs.txt")]
    assert escaped == []


def test_bad_credentials_and_a_missing_bucket_name_the_repository_while_others_serve(  # type: ignore[no-untyped-def]
        aws_env, tmp_path, monkeypatch) -> None:
    local = str(tmp_path / "local")
    ident(local, "local_ident")
    folders = {"secure": str(tmp_path / "secure"), "doomed": str(tmp_path / "doomed")}
    ident(folders["secure"], "secure")
    ident(folders["doomed"], "later")
    # moto with IAM auth: only the first requests (making the user and its key) go unchecked
    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as s3:
        import boto3
        iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="y")
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        good = s3.client(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        for bucket, folder in folders.items():
            good.create_bucket(Bucket=bucket)
            sync(good, folder, bucket, "models")
        repository, doomed, missing = s3.repository("secure"), s3.repository("doomed"), s3.repository("nosuchbucket")

        # at start, a repository that cannot be read stops the server naming it (as Triton), whatever
        # --exit-on-error says: here the environment's key is unknown to the S3 server, there the bucket
        for repositories, words in (([repository, local], "InvalidAccessKeyId"), ([missing, local], "NoSuchBucket")):
            if words == "NoSuchBucket":
                monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
                monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
            with RunningServer(repositories, ["--exit-on-error=false"], wait_ready=False) as server:
                assert server.wait_exit(120) != 0
                assert f"model repository '{repositories[0]}' cannot be read" in server.output()
                assert words in server.output() or "PermissionError" in server.output() \
                    or "FileNotFoundError" in server.output(), server.output()
        for name, value in ENV.items():
            monkeypatch.setenv(name, value)  # the wrong key again

        # the credential file: the longest matching key wins over the catch-all "" entry and the environment
        credentials = tmp_path / "credentials.json"
        credentials.write_text(json.dumps({"s3": {
            "": {"key_id": "wrong", "secret_key": "wrong", "region": "us-east-1", "session_token": "",
                 "profile": ""},
            f"s3://127.0.0.1:{s3.port}/": {"key_id": key["AccessKeyId"], "secret_key": key["SecretAccessKey"],
                                           "region": "us-east-1", "session_token": "", "profile": ""}}}))
        monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(credentials))
        args = ["--model-control-mode=explicit", "--load-model=secure", "--load-model=local_ident"]
        with RunningServer([repository, doomed, local], args) as server:
            http = httpclient.InferenceServerClient(server.url)
            assert wait_for(lambda: http.is_model_ready("secure") and http.is_model_ready("local_ident"))
            infer(server.url, "secure")
            # a bucket deleted under a running server: its loads fail naming it, the others load
            for key_name in keys(good, "doomed", ""):
                good.delete_object(Bucket="doomed", Key=key_name)
            good.delete_bucket(Bucket="doomed")
            status, body = load(server.url, "later")
            assert status == 503 and f"model repository '{doomed}' cannot be read" in body, body
            assert load(server.url, "local_ident") == (200, "")
            # the key revoked under a running server: what is loaded keeps serving, a load names the repository
            good_iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                                    aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
            good_iam.delete_access_key(UserName="reader", AccessKeyId=key["AccessKeyId"])
            status, body = load(server.url, "secure")
            assert status == 503 and "failed to load 'secure'" in body, body
            assert f"model repository '{repository}' cannot be read" in body, body
            assert "InvalidAccessKeyId" in body or "PermissionError" in body, body
            infer(server.url, "secure")
            assert load(server.url, "local_ident") == (200, "")
            infer(server.url, "local_ident")
            http.close()


def test_a_cut_download_fails_the_load_and_a_stopped_s3_server_unloads_nothing(  # type: ignore[no-untyped-def]
        aws_env, tmp_path) -> None:
    local = str(tmp_path / "local")
    ident(local, "local_ident")
    folder = str(tmp_path / "upload")
    ident(folder, "small")
    ident(folder, "large")
    with open(os.path.join(folder, "large", "1", "weights.bin"), "wb") as f:
        f.write(os.urandom(4 << 20))
    cache = tmp_path / "cache"
    cache.mkdir()
    with MotoServer() as s3:
        client = s3.client()
        client.create_bucket(Bucket="flaky")
        sync(client, folder, "flaky", "models")
        proxy = CuttingProxy(s3.port, 1 << 20)  # listings pass, a 4 MiB download does not
        cut = f"s3://127.0.0.1:{proxy.port}/flaky/models"
        direct = s3.repository("flaky")
        try:
            args = ["--model-control-mode=explicit", f"--repository-cache-dir={cache}"]
            with RunningServer([cut, local], args) as server:
                status, body = load(server.url, "large")
                assert status == 503, body
                assert f"failed to load 'large' from model repository '{cut}': download failed" in body, body
                assert load(server.url, "local_ident") == (200, "")
                assert load(server.url, "small") == (200, "")  # small enough to pass
                assert not [p for p in cache_files(str(cache)) if "weights.bin" in p]  # nothing half-done kept
                infer(server.url, "small")
        finally:
            proxy.stop()

        # poll mode: the S3 server goes away; its models are not taken for removed, everything keeps serving
        args = ["--model-control-mode=poll", "--repository-poll-secs=0.3", f"--repository-cache-dir={cache}"]
        with RunningServer([direct, local], args) as server:
            http = httpclient.InferenceServerClient(server.url)
            assert wait_for(lambda: http.is_model_ready("small") and http.is_model_ready("large"))
            s3.stop()
            assert wait_for(lambda: server.output().count(f"model repository '{direct}' cannot be read") >= 2, 90)
            infer(server.url, "small")
            assert http.is_model_ready("large") and http.is_model_ready("local_ident")
            assert {"small", "large", "local_ident"} <= set(index(server.url))
            assert "unloading it" not in server.output()
            http.close()
