"""Object-storage repository URLs and credentials read as Triton reads them, and object keys that can never
become files outside a model's local copy (the S3 server itself is exercised in tests/e2e/test_object_storage.py)."""

from __future__ import annotations

import json
import sys

import pytest

from tritium.cli import parse_args
from tritium.core.errors import InvalidArgumentError
from tritium.repository.object_storage import _credential_entry, _key_problem, parse_s3
from tritium.repository.storage import CacheSettings, LocalStorage, open_storages, scheme_of


@pytest.mark.parametrize(("url", "endpoint", "root"), [
    ("s3://bucket/path/to/repo", None, "bucket/path/to/repo"),
    ("s3://bucket", None, "bucket"),
    ("s3://minio.local:9000/bucket/models/", "http://minio.local:9000", "bucket/models"),
    ("s3://127.0.0.1:9000/bucket", "http://127.0.0.1:9000", "bucket"),
    ("s3://https://s3.example.com:443/bucket/models", "https://s3.example.com:443", "bucket/models"),
    ("s3://http://host:80/b/p", "http://host:80", "b/p"),
])
def test_s3_urls_in_triton_forms(url: str, endpoint: str | None, root: str) -> None:
    assert parse_s3(url) == (endpoint, root)


@pytest.mark.parametrize("url", ["s3://", "s3:///", "s3://https://host/bucket", "s3://host:9000/", "s3://../x"])
def test_malformed_s3_urls_are_refused_naming_the_url(url: str) -> None:
    with pytest.raises(InvalidArgumentError, match="model repository"):
        parse_s3(url)


def test_schemes() -> None:
    assert [scheme_of(u) for u in ("s3://b", "gs://b", "as://a/c", "/models", "file://x", "models")] == \
        ["s3", "gs", "as", "", "", ""]
    (storage,) = open_storages(["/models"], CacheSettings())
    assert isinstance(storage, LocalStorage)


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(InvalidArgumentError, match=r"gs://bucket/models.*pip install 'tritium\[gcs\]'"):
        open_storages(["gs://bucket/models"], CacheSettings())


def test_the_credential_file_entry_is_the_longest_matching_prefix(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cred.json"
    path.write_text(json.dumps({"s3": {"": {"key_id": "any"}, "s3://bucket-2": {"key_id": "two"},
                                       "s3://bucket-2/deep": {"key_id": "deep"}},
                                "gs": {"": "/creds/default.json"}}))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(path))
    assert _credential_entry("s3", "s3://bucket-2/deep/models") == {"key_id": "deep"}
    assert _credential_entry("s3", "s3://bucket-2/models") == {"key_id": "two"}
    assert _credential_entry("s3", "s3://other/models") == {"key_id": "any"}
    assert _credential_entry("gs", "gs://b/m") == "/creds/default.json"
    assert _credential_entry("as", "as://a/c/m") is None
    monkeypatch.delenv("TRITON_CLOUD_CREDENTIAL_PATH")
    assert _credential_entry("s3", "s3://bucket-2/models") is None  # the environment variables then


def test_an_unreadable_credential_file_is_a_clear_error(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "cred.json"
    path.write_text("{not json")
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(path))
    with pytest.raises(InvalidArgumentError, match="TRITON_CLOUD_CREDENTIAL_PATH .* cannot be read"):
        _credential_entry("s3", "s3://b/m")
    path.write_text(json.dumps({"s3": ["not", "an", "object"]}))
    with pytest.raises(InvalidArgumentError, match="'s3' must be an object"):
        _credential_entry("s3", "s3://b/m")


@pytest.mark.parametrize("key", ["../x", "1/../../x", "1//model.onnx", "/etc/passwd", "1/./m", "1/", "a\0b",
                                 "x" * 256])
def test_hostile_object_keys_are_refused(key: str) -> None:
    assert _key_problem(key) is not None


@pytest.mark.parametrize("key", ["config.pbtxt", "1/model.onnx", "1/model.onnx/part.bin", "..hidden", "a b/c"])
def test_plain_object_keys_are_files(key: str) -> None:
    assert _key_problem(key) is None


def test_cache_flags() -> None:
    options = parse_args(["--model-repository=s3://b/m", "--repository-cache-dir=/var/cache/t",
                          "--repository-cache-size=512"])
    assert options.repository_cache_dir == "/var/cache/t" and options.repository_cache_size == 512 << 20
    assert parse_args(["--model-repository=/m"]).repository_cache_size == 10 << 30
    with pytest.raises(SystemExit):
        parse_args(["--model-repository=/m", "--repository-cache-size=0"])


class _Recorder:
    """Stands in for a filesystem class: records the arguments the credentials were mapped to."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = kwargs


def test_credentials_map_to_the_libraries_arguments(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import types

    from tritium.repository.object_storage import _azure, _gcs, _s3

    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    s3fs = types.SimpleNamespace(S3FileSystem=_Recorder)
    fs, root = _s3(s3fs, "s3://https://minio:9000/b/models", {"key_id": "K", "secret_key": "S", "region": "eu-1",
                                                               "session_token": "", "profile": ""})
    assert root == "b/models"
    assert fs.kwargs["key"] == "K" and fs.kwargs["secret"] == "S" and fs.kwargs["token"] is None
    assert fs.kwargs["client_kwargs"] == {"endpoint_url": "https://minio:9000", "region_name": "eu-1"}
    fs, _ = _s3(s3fs, "s3://b/models", None)  # botocore's own chain: nothing given
    assert fs.kwargs["key"] is None and fs.kwargs["client_kwargs"] == {}

    gcsfs = types.SimpleNamespace(GCSFileSystem=_Recorder)
    fs, root = _gcs(gcsfs, "gs://bucket/repo/", "/creds/sa.json")
    assert root == "bucket/repo" and fs.kwargs["token"] == "/creds/sa.json"
    assert _gcs(gcsfs, "gs://bucket/repo", None)[0].kwargs["token"] is None

    adlfs = types.SimpleNamespace(AzureBlobFileSystem=_Recorder)
    monkeypatch.setenv("AZURE_STORAGE_KEY", "secret-key")
    monkeypatch.delenv("AZURE_STORAGE_AUTH_TYPE", raising=False)
    fs, root = _azure(adlfs, "as://acct/container/path/repo", None)
    assert root == "container/path/repo"
    assert fs.kwargs["account_name"] == "acct" and fs.kwargs["account_key"] == "secret-key"
    fs, _ = _azure(adlfs, "as://acct/container/repo", {"account_str": "other", "account_key": "k2"})
    assert fs.kwargs["account_name"] == "other" and fs.kwargs["account_key"] == "k2"
    with pytest.raises(InvalidArgumentError, match="as://account/container/path"):
        _azure(adlfs, "as://acct", None)
