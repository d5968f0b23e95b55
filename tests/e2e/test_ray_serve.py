"""tritium on a real Ray cluster: two nodes (two raylets on this machine, every address on loopback), Ray Serve
with two replicas of tritium (one CPU each, so one per node), a few hundred requests through the handle API,
Serve's HTTP proxy (KServe v2 JSON) and tritonclient; then one node is killed and the application recovers.

Runs where ``ray[serve]`` is installed (``scripts/test_ray.sh`` makes that environment); skipped elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("ray") is not None:
    # Before Ray is imported (its constants are read then) and inherited by every Ray process started here:
    # resolve "this node" to loopback, never to the machine's outward address ...
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # ... and let the head node's HTTP proxy route to replicas on every node, not only its own.
    os.environ["RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'tritium[ray]')")
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
import requests  # noqa: E402
from PIL import Image  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import tritium.ray as tritium_ray  # noqa: E402
from tritium.core.errors import TritiumError  # noqa: E402

import ray_triton_example as example  # noqa: E402
from models import ADD_SUB_CONFIG, add_sub_graph, write_model  # noqa: E402
from server import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(600)

LOOPBACK = "127.0.0.1"
#: Every node: loopback, one CPU (one replica), the smallest object store Ray accepts.
NODE = {"node_ip_address": LOOPBACK, "num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}
APP = "tritium"
BATCHED = ADD_SUB_CONFIG.replace("max_batch_size: 8", "max_batch_size: 8\n    dynamic_batching { }")


class RayCluster:
    def __init__(self, cluster: Any, http_port: int) -> None:
        self.cluster = cluster
        self.url = f"http://{LOOPBACK}:{http_port}"
        self.host_port = f"{LOOPBACK}:{http_port}"
        self.handle: Any = None
        self.repo = ""


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    repo = str(tmp_path_factory.mktemp("repo"))
    write_model(repo, "add_sub", add_sub_graph("INT32", ("batch", 16)), config=BATCHED)
    cluster = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **NODE})
    try:
        cluster.add_node(**NODE)
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": LOOPBACK, "port": port})
        state = RayCluster(cluster, port)
        state.repo = repo
        app = tritium_ray.build_app(
            repo, name=APP, autoscaling_config={"min_replicas": 2, "max_replicas": 2},
            logging_config={"enable_access_log": False}, health_check_period_s=2)
        state.handle = serve.run(app, name=APP, route_prefix="/")
        yield state
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


def _inputs(i: int) -> dict[str, np.ndarray]:
    return {"INPUT0": (np.arange(16, dtype=np.int32) + i).reshape(1, 16), "INPUT1": np.full((1, 16), i, np.int32)}


def _check(result: Any, i: int) -> None:
    x = _inputs(i)
    np.testing.assert_array_equal(result.outputs["OUTPUT0"], x["INPUT0"] + x["INPUT1"])
    np.testing.assert_array_equal(result.outputs["OUTPUT1"], x["INPUT0"] - x["INPUT1"])


def _through_handle(handle: Any, count: int, wave: int = 16, timeout: float = 60) -> list[Any]:
    results = []
    for start in range(0, count, wave):
        pending = [(i, handle.infer.remote("add_sub", _inputs(i))) for i in range(start, min(count, start + wave))]
        for i, response in pending:
            result = response.result(timeout_s=timeout)
            _check(result, i)
            results.append(result)
    return results


def _http_infer(url: str, i: int) -> tuple[int, str | None, dict[str, Any]]:
    x = _inputs(i)
    body = json.dumps({"inputs": [
        {"name": name, "datatype": "INT32", "shape": [1, 16], "data": x[name].ravel().tolist()} for name in x]})
    request = urllib.request.Request(f"{url}/v2/models/add_sub/infer", data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get(tritium_ray.REPLICA_HEADER), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get(tritium_ray.REPLICA_HEADER, ""), json.loads(e.read())


def test_two_replicas_on_two_nodes_serve_hundreds_of_requests(ray_cluster: RayCluster) -> None:
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {LOOPBACK}
    # the Python handle API: 240 requests, 16 in flight at a time
    results = _through_handle(ray_cluster.handle, 240)
    by_replica = Counter(r.replica for r in results)
    assert len(by_replica) == 2, by_replica
    assert len({r.node_id for r in results}) == 2, "the two replicas should run on the two nodes"
    # Serve's HTTP proxy, KServe v2 JSON: 80 requests from 8 clients
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _http_infer(ray_cluster.url, i), range(80)))
    for i, (status, _, doc) in enumerate(answers):
        assert status == 200, doc
        outputs = {o["name"]: o["data"] for o in doc["outputs"]}
        x = _inputs(i)
        assert outputs["OUTPUT0"] == (x["INPUT0"] + x["INPUT1"]).ravel().tolist()
    assert {replica for _, replica, _ in answers} == set(by_replica)
    # a replica's own statistics (tritium's statistics extension) count what it served
    stats = ray_cluster.handle.statistics.remote("add_sub").result(timeout_s=60)
    assert stats["replica"] in by_replica
    assert stats["model_stats"][0]["inference_count"] >= by_replica[stats["replica"]]


def test_tritonclient_speaks_kserve_through_serve(ray_cluster: RayCluster) -> None:
    http = pytest.importorskip("tritonclient.http")
    client = http.InferenceServerClient(ray_cluster.host_port)
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("add_sub")
        assert [i["name"] for i in client.get_model_metadata("add_sub")["inputs"]] == ["INPUT0", "INPUT1"]
        config = client.get_model_config("add_sub")
        assert "dynamic_batching" in config  # tritium batches inside each replica
        for i in range(20):
            x = _inputs(i)
            inputs = [http.InferInput(name, [1, 16], "INT32") for name in x]
            for tensor, name in zip(inputs, x):
                tensor.set_data_from_numpy(x[name], binary_data=True)
            result = client.infer("add_sub", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), x["INPUT0"] - x["INPUT1"])
    finally:
        client.close()


def test_errors_through_serve_name_the_problem(ray_cluster: RayCluster) -> None:
    request = urllib.request.Request(f"{ray_cluster.url}/v2/models/no_such_model/infer", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code == 404 and "no_such_model" in caught.value.read().decode()
    bad = urllib.request.Request(f"{ray_cluster.url}/v2/models/add_sub/infer", data=b"{not json", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(bad, timeout=60)
    assert caught.value.code == 400
    with pytest.raises(TritiumError, match="INPUT1"):  # Ray re-raises the replica's error as its own class
        ray_cluster.handle.infer.remote("add_sub", {"INPUT0": _inputs(0)["INPUT0"]}).result(timeout_s=60)
    _check(ray_cluster.handle.infer.remote("add_sub", _inputs(7)).result(timeout_s=60), 7)


def test_replicas_may_open_tritiums_own_ports(ray_cluster: RayCluster) -> None:
    """``frontends=True``: Ray places and restarts the replica, clients reach tritium's own HTTP frontend (no
    Serve proxy on the path); deleting the application stops tritium, and its port closes."""
    port = free_port()
    app = tritium_ray.build_app(
        ray_cluster.repo, name="direct", frontends=True, num_replicas=1, ray_actor_options={"num_cpus": 0},
        server_args=[f"--http-port={port}", f"--http-address={LOOPBACK}", "--allow-grpc=false",
                     "--allow-metrics=false"])
    serve.run(app, name="direct", route_prefix="/direct")
    status, replica, doc = _http_infer(f"http://{LOOPBACK}:{port}", 3)
    assert status == 200 and replica is None  # tritium's own frontend answered, not Serve's ingress
    assert {o["name"]: o["data"] for o in doc["outputs"]}["OUTPUT1"] == list(range(16))
    # the same application through Serve's proxy: its route prefix is taken off the path
    with urllib.request.urlopen(f"{ray_cluster.url}/direct/v2/models/add_sub", timeout=60) as response:
        assert response.headers.get(tritium_ray.REPLICA_HEADER)
        assert json.loads(response.read())["name"] == "add_sub"
    serve.delete("direct")
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://{LOOPBACK}:{port}/v2/health/live", timeout=5).close()
        except OSError:
            break  # refused: the replica stopped tritium (or its process ended)
        assert time.monotonic() < deadline, "tritium's port stays open after the application was deleted"
        time.sleep(0.5)


def test_rays_own_triton_example_with_only_its_import_changed(
        ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Ray's "Serving models with Triton Server in Ray Serve" (its deployment, as the page shows it, is in
    ray_triton_example.py with ``import tritium.tritonserver as tritonserver``): a FastAPI ingress whose replica
    starts an in-process server in EXPLICIT mode, finds ``model("stable_diffusion").ready()`` False, loads the
    three models, and answers ``GET /generate`` in Serve's thread pool with ``model.infer`` on a ``[[prompt]]``
    input, ``numpy.from_dlpack`` of the output and an image saved with Pillow."""
    repo = example.write_repository(str(tmp_path_factory.mktemp("triton_example")))
    images = tmp_path_factory.mktemp("images")
    ray.cloudpickle.register_pickle_by_value(example)  # shipped by value: replicas need not find a test module
    deployment = example.TritonDeployment.options(  # pickled again, by value now
        ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": {"MODEL_REPOSITORY": repo}}})
    serve.run(deployment.bind(), name="triton_example", route_prefix="/triton")
    try:
        def generate(prompt: str, name: str) -> np.ndarray:
            path = str(images / name)
            response = requests.get(f"{ray_cluster.url}/triton/generate",
                                    params={"prompt": prompt, "filename": path}, timeout=120)
            assert response.status_code == 200 and response.json() is None, response.text
            assert os.path.exists(path), "the example did not save an image (its replica printed why)"
            with Image.open(path) as image:
                return np.asarray(image)

        # the first request loads the models (the example's not-ready branch)
        first = "dogs in new york, realistic, 4k, photograph"
        np.testing.assert_array_equal(generate(first, "first.png"), example.expected_image(first))
        # then concurrent requests, each in one of Serve's threads, sharing the loaded model
        prompts = [f"pigeon {i} in new york" for i in range(6)] + ["café ☕", "a" * 100]
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(generate, prompts, [f"{i}.png" for i in range(len(prompts))]))
        for prompt, image in zip(prompts, got):
            assert image.shape == (example.TOKENS, example.TOKENS, 3) and image.dtype == np.uint8
            np.testing.assert_array_equal(image, example.expected_image(prompt))
    finally:
        serve.delete("triton_example")


def _replica_states() -> dict[str, int]:
    status = serve.status().applications[APP]
    return dict(status.deployments[APP].replica_states)


def _alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def test_killing_a_node_the_application_recovers(ray_cluster: RayCluster) -> None:
    (head_id,) = (n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
    # Both replicas serving first (an earlier test's replica may still be coming back): bounded wait until a
    # replica on the worker node has answered.
    before: Counter[tuple[str, str]] = Counter()
    deadline = time.monotonic() + 120
    while not any(node != head_id for _, node in before):
        assert time.monotonic() < deadline, ("no replica on the worker node answered", before, _replica_states())
        before.update((r.replica, r.node_id) for r in _through_handle(ray_cluster.handle, 32))
    (worker,) = ray_cluster.cluster.worker_nodes
    lost = {replica for replica, node in before if node != head_id}
    known = _alive_nodes()
    killed_at = time.monotonic()
    ray_cluster.cluster.remove_node(worker, allow_graceful=False)

    # The surviving replica takes every request: within 90 s, 20 in a row succeed there.
    streak, failures, i = 0, 0, 0
    while streak < 20:
        assert time.monotonic() - killed_at < 90, f"no recovery after the node died ({failures} failures)"
        i += 1
        try:
            result = ray_cluster.handle.infer.remote("add_sub", _inputs(i)).result(timeout_s=15)
        except Exception:
            streak, failures = 0, failures + 1
            time.sleep(0.2)
            continue
        _check(result, i)
        # the dying node's replica may still answer for a moment after the kill
        streak = 0 if result.replica in lost else streak + 1
    serving_again = time.monotonic() - killed_at

    # A node joins (as an autoscaler would add one): Serve brings the deployment back to two replicas.
    ray_cluster.cluster.add_node(**NODE)
    (new_node,) = _alive_nodes() - known
    deadline = time.monotonic() + 120
    while _replica_states() != {"RUNNING": 2}:
        assert time.monotonic() < deadline, f"not back to two replicas: {_replica_states()}"
        time.sleep(0.5)
    # the handles learn of the new replica shortly after Serve does: both nodes serve again
    nodes: set[str] = set()
    while nodes != {head_id, new_node}:
        assert time.monotonic() < deadline, f"the new replica does not serve: {nodes}"
        nodes |= {r.node_id for r in _through_handle(ray_cluster.handle, 32)}
    assert serve.status().applications[APP].status == "RUNNING"
    print(f"\nnode killed: serving again after {serving_again:.1f} s ({failures} failed requests); "
          f"two replicas again {time.monotonic() - killed_at:.1f} s after the kill")


# -- building the application (no cluster needed) ----------------------------------------------------------------


def test_build_app_passes_serve_options_through(tmp_path: Any) -> None:
    app = tritium_ray.build_app(
        str(tmp_path), server_args=["--log-verbose=1"], name="models", max_replicas_per_node=1,
        autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8})
    deployment = app._bound_deployment  # Serve's public API shows no more of a built application
    assert deployment.name == "models"
    assert deployment.ray_actor_options == {"num_cpus": 1}
    config = deployment._deployment_config
    assert (config.autoscaling_config.min_replicas, config.autoscaling_config.max_replicas) == (1, 4)
    assert config.autoscaling_config.target_ongoing_requests == 8
    assert deployment._replica_config.max_replicas_per_node == 1
    (options,) = deployment._replica_config.init_args
    assert options.model_repositories == [str(tmp_path)] and options.log_verbose == 1
    assert not (options.allow_http or options.allow_grpc or options.allow_metrics)


def test_app_builder_reads_serve_run_arguments(tmp_path: Any) -> None:
    app = tritium_ray.app_builder({"model_repository": f"{tmp_path},{tmp_path}/b", "num_replicas": "3",
                                   "server_args": "--model-control-mode=explicit --load-model=add_sub",
                                   "ray_actor_options": '{"num_cpus": 0.5}'})
    deployment = app._bound_deployment
    assert deployment.num_replicas == 3 and deployment.ray_actor_options == {"num_cpus": 0.5}
    (options,) = deployment._replica_config.init_args
    assert options.model_repositories == [str(tmp_path), f"{tmp_path}/b"]
    assert options.model_control_mode == "explicit" and options.load_models == ["add_sub"]


@pytest.mark.parametrize(("args", "message"), [
    ({}, "'model_repository' is required"),
    ({"model_repository": "/m", "num_replicas": "two"}, "'num_replicas' must be an integer"),
    ({"model_repository": "/m", "autoscaling_config": "{"}, "'autoscaling_config' is not valid JSON"),
    ({"model_repository": "/m", "ray_actor_options": "[1]"}, "'ray_actor_options' must be a mapping"),
    ({"model_repository": "/m", "replicas": 2}, "unknown argument"),
    ({"model_repository": "/m", "server_args": "--no-such-flag"}, "unrecognized arguments: --no-such-flag"),
    ({"model_repository": "/m", "server_args": "--cache-config=local,size=1"}, "Failed to initialize LocalCache"),
])
def test_app_builder_refuses_bad_arguments_by_name(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tritium_ray.app_builder(args)
