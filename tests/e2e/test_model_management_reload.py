"""Model lifecycle under load: hot reload losing no request, poll mode, parallel loads, graceful shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from test_model_management import add_ident, ident_config, infer, post, rows, wait_for

from models import echo_config, identity_graph, mlp_graph, sleep_then_echo, write_model, write_python_model
from server import RunningServer

MLP_SIZES = (256, 2048, 2048, 256)
MLP_CONFIG = """
backend: "onnxruntime"
max_batch_size: 256
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 256 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def add_mlp(repo: str, name: str, extra: str = "") -> None:
    write_model(repo, name, mlp_graph(MLP_SIZES)[0], MLP_CONFIG + extra)


def test_reload_under_steady_load_fails_no_request(tmp_path):
    repo = str(tmp_path)
    add_ident(repo, "ident")
    with RunningServer([repo], ["--model-control-mode=explicit", "--load-model=ident", "--allow-grpc=false"]) as server:
        stop = threading.Event()
        ok = [0]
        failures: list[str] = []
        versions: set[str] = set()
        lock = threading.Lock()

        def client_loop(seed: int) -> None:
            client = httpclient.InferenceServerClient(server.url)
            while not stop.is_set():
                try:
                    version = infer(client, "ident", float(seed))
                except Exception as e:  # counted, never hidden
                    with lock:
                        failures.append(repr(e))
                else:
                    with lock:
                        ok[0] += 1
                        versions.add(version)

        threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        try:
            client = httpclient.InferenceServerClient(server.url)
            time.sleep(0.3)
            base = json.loads(json.dumps(client.get_model_config("ident")))
            for count in (2, 1, 3):  # changed config: every version rebuilt and swapped in
                base["instance_group"] = [{"kind": "KIND_CPU", "count": count}]
                client.load_model("ident", config=json.dumps(base))
                time.sleep(0.2)
            write_model(repo, "ident", identity_graph(), version=2)  # a new version replaces version 1
            client.load_model("ident")
            assert wait_for(lambda: "2" in versions)
            time.sleep(0.2)
            shutil.rmtree(os.path.join(repo, "ident", "2"))  # and back to version 1
            client.load_model("ident")
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert failures == []
        assert ok[0] > 50
        assert versions == {"1", "2"}
        assert rows(server.url, "ident") == [
            {"name": "ident", "version": "1", "state": "READY"},
            {"name": "ident", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
        ]
        assert server.output().count("successfully unloaded 'ident' version") >= 4  # old ones were finalized


def test_poll_mode_picks_up_new_versions_changed_configs_and_removed_models(tmp_path):
    repo = str(tmp_path)
    add_ident(repo, "pm")
    with RunningServer([repo], ["--model-control-mode=poll", "--repository-poll-secs=0.3",
                                "--allow-grpc=false"]) as server:
        client = httpclient.InferenceServerClient(server.url)
        assert infer(client, "pm") == "1"
        assert post(server.url, "/v2/repository/models/pm/unload")[0] == 503
        # A new version: loaded, and version 1 (policy latest 1) unloaded.
        staging = str(tmp_path.parent / f"{tmp_path.name}-staging")
        write_model(staging, "pm", identity_graph(), version=2)
        os.rename(os.path.join(staging, "pm", "2"), os.path.join(repo, "pm", "2"))
        assert wait_for(lambda: rows(server.url, "pm") == [
            {"name": "pm", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "pm", "version": "2", "state": "READY"},
        ]), rows(server.url, "pm")
        assert infer(client, "pm") == "2"
        # A changed config: the new version policy takes effect.
        with open(os.path.join(repo, "pm", "config.pbtxt"), "w") as f:
            f.write(ident_config("pm", "version_policy: { all: {} }"))
        assert wait_for(lambda: [r["state"] for r in rows(server.url, "pm")] == ["READY", "READY"]), rows(server.url, "pm")
        assert infer(client, "pm", version="1") == "1"
        # A new model appears; a broken config leaves the loaded model serving.
        add_ident(repo, "added")
        assert wait_for(lambda: client.is_model_ready("added"))
        with open(os.path.join(repo, "pm", "config.pbtxt"), "w") as f:
            f.write("not a config {")
        time.sleep(1.0)
        assert infer(client, "pm") == "2"
        # A removed model is unloaded.
        shutil.rmtree(os.path.join(repo, "added"))
        assert wait_for(lambda: not client.is_model_ready("added"))
        assert wait_for(lambda: rows(server.url, "added") == [])  # gone from the index too, as in Triton


def test_parallel_loads_a_slow_model_delays_no_other(tmp_path):
    repo = str(tmp_path)
    warmup = ('model_warmup [ { name: "heavy" batch_size: 256 count: 12 inputs { key: "INPUT0" '
              'value: { data_type: TYPE_FP32 dims: [ 256 ] random_data: true } } } ]')
    add_mlp(repo, "slow", warmup)
    add_ident(repo, "fast")
    write_model(repo, "bad", identity_graph(), ident_config("bad").replace("INPUT0", "NOPE"))
    with RunningServer([repo], ["--model-control-mode=explicit", "--model-load-thread-count=2",
                                "--allow-grpc=false"]) as server:
        results: dict[str, int] = {}
        slow = threading.Thread(target=lambda: results.update(slow=post(server.url, "/v2/repository/models/slow/load")[0]))
        slow.start()
        assert wait_for(lambda: rows(server.url, "slow")[0].get("state") == "LOADING")
        assert post(server.url, "/v2/repository/models/bad/load")[0] == 400
        assert post(server.url, "/v2/repository/models/fast/load")[0] == 200
        assert rows(server.url, "slow") == [{"name": "slow", "version": "1", "state": "LOADING"}]
        assert httpclient.InferenceServerClient(server.url).is_model_ready("fast")
        slow.join()
        assert results == {"slow": 200}




def test_sigterm_finishes_requests_in_flight_then_unloads_and_exits_0(tmp_path):
    # A model whose executions take 0.5 s on 2 instances: 8 requests need about 2 s, so they are surely in
    # flight when the signal comes 0.3 s after they were sent, however busy the machine is.
    repo = str(tmp_path / "repo")
    write_python_model(repo, "slow", sleep_then_echo(0.5), echo_config(0, count=2))
    server = RunningServer([repo], ["--allow-grpc=false"])
    try:
        x = np.arange(4, dtype=np.float32)
        finished: list[float] = []
        failures: list[str] = []

        def one() -> None:
            client = httpclient.InferenceServerClient(server.url, connection_timeout=120, network_timeout=120)
            inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                np.testing.assert_array_equal(client.infer("slow", [inp]).as_numpy("OUTPUT0"), x)
                finished.append(time.monotonic())
            except Exception as e:
                failures.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        sent = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert server.wait_exit(60) == 0
        assert failures == []
        assert len(finished) == 8 and max(finished) > sent + 0.5  # most were still running when the signal came
        log = server.output()
        assert "successfully unloaded 'slow' version 1" in log
    finally:
        server.stop()
        if server.proc.poll() is None:
            pytest.fail("server did not exit")
