"""``--rate-limit=execution_count`` on a real server: Python models that sleep and answer when they started
and ended, so the overlap of executions (and what resources they held) is measured, not assumed."""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient

from models import timed_model, write_python_model
from server import RunningServer


def config(resources: str = "", count: int = 2, priority: int = 0, extra: str = "", batch: int = 0) -> str:
    limiter = f"rate_limiter {{ resources [ {resources} ] priority: {priority} }}" if resources else ""
    return f"""
        backend: "python"
        max_batch_size: {batch}
        input [ {{ name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        output [ {{ name: "OUT" data_type: TYPE_STRING dims: [ 1 ] }} ]
        instance_group [ {{ count: {count} kind: KIND_CPU {limiter} }} ]
        {extra}"""


#: model -> copies of R1 each of its executions holds (for the accounting check).
R1 = {"whole": 2, "half": 1, "batched": 1, "sequences": 2}


def build(repo: str, sleep: float = 0.4) -> None:
    code = timed_model(sleep)
    write_python_model(repo, "whole", code, config('{ name: "R1" count: 2 }'))
    write_python_model(repo, "half", code, config('{ name: "R1" count: 1 }'))
    write_python_model(repo, "single", code, config('{ name: "G" global: true count: 1 }'))
    write_python_model(repo, "free", code, config())
    write_python_model(repo, "batched", code, config('{ name: "R1" count: 1 }', batch=4,
                                                     extra="dynamic_batching { max_queue_delay_microseconds: 1000 }"))
    write_python_model(repo, "sequences", code, config('{ name: "R1" count: 2 }', extra="sequence_batching { }"))


def executions(url: str, models: list[str]) -> list[tuple[str, str, float, float]]:
    """Send one request per entry of ``models`` at once; (model, instance, start, end) of each, by start."""
    out: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(models))
    sequence_ids = iter(range(1, len(models) + 1))

    def call(model: str) -> None:
        sequence = {"sequence_id": next(sequence_ids), "sequence_start": True, "sequence_end": True} \
            if model == "sequences" else {}
        try:
            client = httpclient.InferenceServerClient(url, network_timeout=120)
            t = httpclient.InferInput("INPUT0", [1, 1] if model == "batched" else [1], "INT32")
            t.set_data_from_numpy(np.ones(t.shape(), np.int32))
            barrier.wait(30)
            name, start, end = json.loads(client.infer(model, [t], **sequence).as_numpy("OUT").reshape(-1)[0])
            out.append((model, name, start, end))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    return sorted(out, key=lambda e: e[2])


def most_at_once(runs: list[tuple[str, str, float, float]], weight: dict[str, int] | None = None) -> int:
    """The largest sum of ``weight`` (1 each by default) over executions running at one moment."""
    events = sorted([(start, 1, model) for model, _, start, _ in runs] + [(end, -1, model) for model, _, _, end in runs],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    now = most = 0
    for _, sign, model in events:
        now += sign * (weight or {}).get(model, 1)
        most = max(most, now)
    return most


@pytest.fixture(scope="module")
def limited(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("limited"))
    build(repo)
    with RunningServer([repo], ["--rate-limit=execution_count"], timeout=180) as server:
        client = httpclient.InferenceServerClient(server.url)
        for model in ("whole", "half", "single", "free", "batched", "sequences"):
            assert client.is_model_ready(model), server.output()[-3000:]
        yield server


def test_an_instance_that_needs_every_copy_runs_alone(limited):
    runs = executions(limited.url, ["whole"] * 4)
    assert most_at_once(runs) == 1
    assert {name for _, name, _, _ in runs} == {"whole_0_0", "whole_0_1"}  # both instances took turns


def test_instances_share_a_resource_up_to_its_count(limited):
    runs = executions(limited.url, ["half"] * 4)
    assert most_at_once(runs) == 2  # two copies of R1 (the most any instance asks for), one each
    mixed = executions(limited.url, ["whole", "whole", "half", "half", "half", "batched"])
    assert most_at_once(mixed, R1) <= 2  # across models: never more copies of R1 held than exist


def test_sequence_batches_wait_for_their_instances_resources(limited):
    runs = executions(limited.url, ["sequences"] * 2 + ["half"] * 2)
    assert most_at_once(runs, R1) <= 2
    assert most_at_once([r for r in runs if r[0] == "sequences"]) == 1  # two instances, never together


def test_a_global_resource_is_held_by_one_instance_at_a_time(limited):
    assert most_at_once(executions(limited.url, ["single"] * 3)) == 1


def test_instances_without_resources_are_not_held_back(limited):
    assert most_at_once(executions(limited.url, ["free"] * 2 + ["whole"] * 2)) >= 2


def test_priorities_share_turns(tmp_path):
    """Two models, two instances each, one copy of X: priority 3 gets about a third of priority 1's turns."""
    repo = str(tmp_path)
    code = timed_model(0.15)
    write_python_model(repo, "first", code, config('{ name: "X" count: 1 }', priority=1))
    write_python_model(repo, "third", code, config('{ name: "X" count: 1 }', priority=3))
    with RunningServer([repo], ["--rate-limit=execution_count"], timeout=180) as server:
        runs = executions(server.url, ["first"] * 12 + ["third"] * 12)
        assert most_at_once(runs) == 1
        firsts = [model for model, _, _, _ in runs[:12]].count("first")
        assert firsts >= 7, runs  # 9 when every request waits from the start; equal shares would give 6


def test_off_ignores_the_rate_limiter_config(tmp_path):
    repo = str(tmp_path)
    write_python_model(repo, "whole", timed_model(0.4), config('{ name: "R1" count: 2 }'))
    with RunningServer([repo], ["--rate-limit-resource=R1:1"], timeout=180) as server:  # off: not even checked
        assert most_at_once(executions(server.url, ["whole"] * 2)) == 2


def index(url: str) -> list[dict[str, str]]:
    request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:
        return list(json.loads(r.read()))


def test_resources_that_could_never_suffice_fail_the_load_in_tritons_words(tmp_path):
    repo = str(tmp_path)
    code = timed_model(0)
    write_python_model(repo, "needs_two", code, config('{ name: "R1" count: 2 }', count=1))
    write_python_model(repo, "unlisted", code, config('{ name: "R9" count: 1 }', count=1))
    write_python_model(repo, "fits", code, config('{ name: "R1" count: 1 }', count=1))
    with RunningServer([repo], ["--rate-limit=execution_count", "--rate-limit-resource=R1:1",
                                "--exit-on-error=false"], timeout=180) as server:
        rows = {row["name"]: row for row in index(server.url)}
        assert rows["fits"]["state"] == "READY"
        assert rows["needs_two"]["state"] == "UNAVAILABLE"
        assert rows["needs_two"]["reason"] == (
            'Invalid argument: Resource count for "R1" is limited to 1 which will prevent scheduling of one or more '
            "model instances, the minimum required count is 2")
        assert rows["unlisted"]["reason"].endswith('"R9" is limited to 0 which will prevent scheduling of one or '
                                                   "more model instances, the minimum required count is 1")
        client = httpclient.InferenceServerClient(server.url)
        assert client.is_server_live()


def test_global_and_per_device_use_of_one_name_is_refused(tmp_path):
    repo = str(tmp_path)
    code = timed_model(0)
    write_python_model(repo, "a_global", code, config('{ name: "G" global: true count: 1 }', count=1))
    write_python_model(repo, "b_device", code, config('{ name: "G" count: 1 }', count=1))
    with RunningServer([repo], ["--rate-limit=execution_count", "--exit-on-error=false",
                                "--model-load-thread-count=1"], timeout=180) as server:
        rows = index(server.url)
        failed = [row for row in rows if row.get("state") == "UNAVAILABLE"]
        assert len(failed) == 1, rows  # whichever registered second
        assert failed[0]["reason"] == ('Invalid argument: Resource "G" is present as both global and '
                                       "device-specific resource in the model configuration.")
        assert os.path.isdir(repo)
