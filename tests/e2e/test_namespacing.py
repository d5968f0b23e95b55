"""``--model-namespacing=true``: the same model names in two repositories, addressed as Triton 2.51 addresses
them (the differential file compares the same story with Triton where it is installed)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import write_python_model
from server import RunningServer

TAGGED = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([b"TAG"], np.object_))]) for _ in requests]
'''
CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
ENSEMBLE = """
    platform: "ensemble"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    ensemble_scheduling { step [ { model_name: "composing" model_version: -1
      input_map { key: "INPUT0" value: "INPUT0" } output_map { key: "OUT" value: "OUT" } } ] }
"""


def build_namespaced(first: str, second: str) -> None:
    """Each repository: ``composing`` answering its tag, an ensemble of it named after the repository, and one
    named ``ensemble`` in both; ``only_first`` is in the first alone."""
    for repo, tag in ((first, "A"), (second, "B")):
        write_python_model(repo, "composing", TAGGED.replace("TAG", tag), CONFIG)
        for name in (f"ensemble_{tag.lower()}", "ensemble"):
            os.makedirs(os.path.join(repo, name, "1"))
            with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
                f.write(ENSEMBLE)
    write_python_model(first, "only_first", TAGGED.replace("TAG", "first"), CONFIG)


def namespace_story(url: str, grpc_url: str) -> list[Any]:
    """What a client sees of each name, over HTTP and gRPC."""
    http = httpclient.InferenceServerClient(url)
    grpc = grpcclient.InferenceServerClient(grpc_url)
    story: list[Any] = []
    for name in ("ensemble_a", "ensemble_b", "only_first", "composing", "ensemble"):
        x = httpclient.InferInput("INPUT0", [1], "INT32")
        x.set_data_from_numpy(np.array([1], np.int32))
        try:
            story.append((name, "http", http.infer(name, [x]).as_numpy("OUT").tolist()))
        except InferenceServerException as e:
            story.append((name, "http", e.status(), e.message()))
        try:
            story.append((name, "metadata", grpc.get_model_metadata(name).name))
        except InferenceServerException as e:
            story.append((name, "metadata", e.status(), e.message()))
        story.append((name, "ready", http.is_model_ready(name)))
    story.append(sorted((m["name"], m.get("version"), m.get("state")) for m in http.get_model_repository_index()))
    return story


@pytest.fixture(scope="module")
def namespaced(tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("namespaces")
    first, second = str(root / "first"), str(root / "second")
    build_namespaced(first, second)
    with RunningServer([first, second], ["--model-namespacing=true"], timeout=120) as server:
        yield server


def test_each_repository_serves_its_copy_and_ambiguous_names_are_refused(namespaced):
    story = namespace_story(namespaced.url, namespaced.grpc_url)
    ambiguity = "There are 2 identifiers of model '{}' in global map, model namespace must be provided to resolve " \
                "ambiguity."
    assert ("ensemble_a", "http", [b"A"]) in story  # its step found its own repository's composing model
    assert ("ensemble_b", "http", [b"B"]) in story
    assert ("only_first", "http", [b"first"]) in story
    assert ("composing", "http", "400", ambiguity.format("composing")) in story
    assert ("ensemble", "metadata", "StatusCode.INVALID_ARGUMENT", ambiguity.format("ensemble")) in story
    assert ("composing", "ready", False) in story
    index = story[-1]
    assert index.count(("composing", "1", "READY")) == 2 and index.count(("ensemble", "1", "READY")) == 2


def test_the_index_lists_each_repository_in_turn(namespaced):
    names = [m["name"] for m in httpclient.InferenceServerClient(namespaced.url).get_model_repository_index()]
    assert names == ["composing", "ensemble", "ensemble_a", "only_first", "composing", "ensemble", "ensemble_b"]


def test_without_namespacing_a_shared_name_is_a_conflict(tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    build_namespaced(first, second)
    with RunningServer([first, second], ["--exit-on-error=false"], timeout=120) as server:
        index = httpclient.InferenceServerClient(server.url).get_model_repository_index()
        rows = {m["name"]: m for m in index if m["name"] in ("composing", "ensemble")}
        for row in rows.values():
            assert row["state"] == "UNAVAILABLE" and row["reason"] == "model appears in two or more repositories"
        assert any(m["name"] == "only_first" and m.get("state") == "READY" for m in index)


def test_explicit_loads_resolve_steps_in_the_ensembles_repository(tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    build_namespaced(first, second)
    with RunningServer([first, second], ["--model-namespacing=true", "--model-control-mode=explicit",
                                         "--load-model=ensemble_b"], timeout=120) as server:
        client = httpclient.InferenceServerClient(server.url)
        x = httpclient.InferInput("INPUT0", [1], "INT32")
        x.set_data_from_numpy(np.array([1], np.int32))
        assert client.infer("ensemble_b", [x]).as_numpy("OUT").tolist() == [b"B"]  # the second's step came along
        def ready() -> list[str]:
            return [m["name"] for m in client.get_model_repository_index() if m.get("state") == "READY"]

        assert sorted(ready()) == ["composing", "ensemble_b"]
        client.load_model("composing")  # a name in both: each repository's copy loads
        assert ready().count("composing") == 2
        client.unload_model("composing")  # and each copy goes, and the ensemble that ran one of them
        assert ready() == []
        rows = {m["name"]: m for m in client.get_model_repository_index()}
        assert rows["ensemble_b"]["state"] in ("UNLOADING", "UNAVAILABLE")  # drained in the background
