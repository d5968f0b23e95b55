"""Sequence batching on a real server through tritonclient: stateful models keep one sum per sequence.

``acc_control`` is a Python-backend accumulator that keeps its sums itself, keyed by the CORRID control
input, and reads START / READY / END from control inputs the server adds.  ``acc_state`` (ONNX) keeps no
state of its own: ``OUTPUT = START ? INPUT : STATE_IN + INPUT`` with ``STATE_OUT = OUTPUT`` as the
implicit state the server feeds back.  ``acc_oldest`` is that model under the ``oldest`` strategy with
fewer candidate slots than sequences; ``acc_idle`` has one slot and a short idle timeout.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from models import write_model
from server import RunningServer

ACC_CONTROL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            get = lambda name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
            x, start, ready, end, corrid = get("INPUT"), get("START"), get("READY"), get("END"), get("CORRID")
            key = int(corrid.reshape(-1)[0])
            if not ready.reshape(-1)[0]:  # a null request filling an empty batch slot
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.zeros_like(x))]))
                continue
            total = int(x.reshape(-1)[0]) + (0 if start.reshape(-1)[0] else self.sums[key])
            self.sums[key] = total
            if end.reshape(-1)[0]:
                del self.sums[key]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", np.full(x.shape, total, np.int32))]))
        return responses
'''

CONTROLS = '''
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }
  ]'''

IO = '''
input [ { name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
'''

STATE = '''
  control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ]
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_INT32 dims: [ 1 ]
            initial_state [ { data_type: TYPE_INT32 dims: [ 1 ] zero_data: true name: "zero" } ] } ]'''


def state_graph():  # type: ignore[no-untyped-def]
    """OUTPUT = START ? INPUT : STATE_IN + INPUT; STATE_OUT = OUTPUT (the server keeps it per sequence)."""
    def tensor(name: str) -> object:
        return helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", 1])

    nodes = [
        helper.make_node("Cast", ["START"], ["is_start"], to=TensorProto.BOOL),
        helper.make_node("Add", ["STATE_IN", "INPUT"], ["sum"]),
        helper.make_node("Where", ["is_start", "INPUT", "sum"], ["OUTPUT"]),
        helper.make_node("Identity", ["OUTPUT"], ["STATE_OUT"]),
    ]
    return helper.make_graph(nodes, "acc_state", [tensor("INPUT"), tensor("START"), tensor("STATE_IN")],
                             [tensor("OUTPUT"), tensor("STATE_OUT")])


def python_model(repo: str, name: str, config: str) -> None:
    write_model(repo, name, config=config)
    with open(os.path.join(repo, name, "1", "model.py"), "w") as f:
        f.write(ACC_CONTROL)


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("sequence_repo"))
    python_model(repo, "acc_control", 'backend: "python"\nmax_batch_size: 4' + IO +
                 f"sequence_batching {{ direct {{ }} {CONTROLS}\n}}\n")
    python_model(repo, "acc_idle", 'backend: "python"\nmax_batch_size: 0' + IO +
                 f"sequence_batching {{ max_sequence_idle_microseconds: 300000 {CONTROLS}\n}}\n")
    write_model(repo, "acc_state", state_graph(), 'backend: "onnxruntime"\nmax_batch_size: 4' + IO +
                f"sequence_batching {{ {STATE}\n}}\n")
    write_model(repo, "acc_oldest", state_graph(), 'backend: "onnxruntime"\nmax_batch_size: 4' + IO +
                "sequence_batching { oldest { max_candidate_sequences: 2 max_queue_delay_microseconds: 2000 } "
                f"{STATE}\n}}\n")
    write_model(repo, "bad_control", state_graph(), 'backend: "onnxruntime"\nmax_batch_size: 4' + IO +
                'sequence_batching { control_input [ { name: "START" control [ { kind: CONTROL_SEQUENCE_START '
                'int32_false_true: [ 0, 1, 2 ] } ] } ] }\n')
    write_model(repo, "bad_state", state_graph(), 'backend: "onnxruntime"\nmax_batch_size: 4' + IO +
                'sequence_batching { state [ { input_name: "NOPE" output_name: "STATE_OUT" data_type: TYPE_INT32 '
                "dims: [ 1 ] } ] }\n")
    with RunningServer([repo], ["--exit-on-error=false"]) as running:
        yield running


def http_input(value: int, batch: int | None = 1) -> httpclient.InferInput:
    """[batch, 1]; [1] with ``batch=None`` (a model without batching)."""
    shape = [1] if batch is None else [batch, 1]
    tensor = httpclient.InferInput("INPUT", shape, "INT32")
    tensor.set_data_from_numpy(np.full(shape, value, np.int32))
    return tensor


def grpc_input(value: int) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.full((1, 1), value, np.int32))
    return tensor


def interleaved(ids: list[int | str], steps: int = 4) -> list[tuple[int | str, int, bool, bool]]:
    """(sequence id, value, start, end) with the sequences' requests interleaved round-robin."""
    plan = []
    for step in range(steps):
        for n, sequence_id in enumerate(ids):
            plan.append((sequence_id, (n + 1) * 10 + step, step == 0, step == steps - 1))
    return plan


def expected_sums(plan: list[tuple[int | str, int, bool, bool]]) -> list[int]:
    sums: dict[int | str, int] = {}
    out = []
    for sequence_id, value, start, _ in plan:
        sums[sequence_id] = value if start else sums[sequence_id] + value
        out.append(sums[sequence_id])
    return out


@pytest.mark.parametrize("model", ["acc_control", "acc_state"])
def test_interleaved_sequences_http(server, model):
    client = httpclient.InferenceServerClient(server.url)
    ids: list[int | str] = [1001, 1002, 1003] if model == "acc_control" else [7, "text-id", 2**63 + 5]
    plan = interleaved(ids)
    got = [int(client.infer(model, [http_input(value)], sequence_id=sid, sequence_start=start,
                            sequence_end=end).as_numpy("OUTPUT")[0, 0]) for sid, value, start, end in plan]
    assert got == expected_sums(plan)


@pytest.mark.parametrize("model", ["acc_control", "acc_state"])
def test_interleaved_sequences_grpc(server, model):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    ids: list[int | str] = [2001, 2002] if model == "acc_control" else ["alpha", 2002]
    plan = interleaved(ids, steps=3)
    got = [int(client.infer(model, [grpc_input(value)], sequence_id=sid, sequence_start=start,
                            sequence_end=end).as_numpy("OUTPUT")[0, 0]) for sid, value, start, end in plan]
    assert got == expected_sums(plan)


@pytest.mark.parametrize("model", ["acc_control", "acc_state"])
def test_interleaved_sequences_grpc_stream(server, model):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    plan = interleaved([3001, 3002, 3003], steps=3)
    try:
        for n, (sid, value, start, end) in enumerate(plan):
            client.async_stream_infer(model, [grpc_input(value)], request_id=str(n), sequence_id=sid,
                                      sequence_start=start, sequence_end=end)
        got: dict[int, int] = {}
        for _ in plan:
            result, error = results.get(timeout=30)
            assert error is None, error
            got[int(result.get_response().id)] = int(result.as_numpy("OUTPUT")[0, 0])
    finally:
        client.stop_stream()
    assert [got[n] for n in range(len(plan))] == expected_sums(plan)


@pytest.mark.parametrize("model", ["acc_control", "acc_state", "acc_oldest"])
def test_concurrent_sequences_keep_independent_sums(server, model):
    """More sequences than slots at once, each from its own thread: batches form, backlog waits, sums stay right."""
    errors: list[BaseException] = []

    def run(sequence_id: int) -> None:
        try:
            client = httpclient.InferenceServerClient(server.url)
            total = 0
            for step in range(6):
                value = sequence_id * 100 + step
                total = value if step == 0 else total + value
                out = client.infer(model, [http_input(value)], sequence_id=sequence_id, sequence_start=step == 0,
                                   sequence_end=step == 5).as_numpy("OUTPUT")
                assert int(out[0, 0]) == total, (sequence_id, step)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(sid,)) for sid in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def test_requested_outputs_hide_state(server):
    client = httpclient.InferenceServerClient(server.url)
    out = httpclient.InferRequestedOutput("OUTPUT")
    first = client.infer("acc_state", [http_input(5)], outputs=[out], sequence_id=42, sequence_start=True)
    second = client.infer("acc_state", [http_input(6)], sequence_id=42, sequence_end=True)
    assert [o["name"] for o in second.get_response()["outputs"]] == ["OUTPUT"]
    assert int(first.as_numpy("OUTPUT")[0, 0]) == 5 and int(second.as_numpy("OUTPUT")[0, 0]) == 11


def _error(call) -> InferenceServerException:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


@pytest.mark.parametrize("model", ["acc_control", "acc_state"])
def test_errors_as_triton_gives_them(server, model):
    client = httpclient.InferenceServerClient(server.url)
    e = _error(lambda: client.infer(model, [http_input(1)]))
    assert e.status() == "400"
    assert e.message() == f"inference request to model '{model}' must specify a non-zero or non-empty correlation ID"
    e = _error(lambda: client.infer(model, [http_input(1)], sequence_id=555))
    assert e.message() == (f"inference request for sequence 555 to model '{model}' must specify the START flag on "
                           "the first request of the sequence")
    e = _error(lambda: client.infer(model, [http_input(1, batch=2)], sequence_id=556, sequence_start=True))
    assert e.message() == (f"inference request to model '{model}' must specify batch-size 1 due to requirements of "
                           "sequence batcher")
    # A start on a live sequence restarts it (Triton logs a conflict); after END the id is unknown again.
    assert int(client.infer(model, [http_input(3)], sequence_id=557, sequence_start=True).as_numpy("OUTPUT")[0, 0]) == 3
    assert int(client.infer(model, [http_input(4)], sequence_id=557, sequence_start=True).as_numpy("OUTPUT")[0, 0]) == 4
    assert int(client.infer(model, [http_input(5)], sequence_id=557, sequence_end=True).as_numpy("OUTPUT")[0, 0]) == 9
    e = _error(lambda: client.infer(model, [http_input(1)], sequence_id=557))
    assert "must specify the START flag" in e.message()
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    e = _error(lambda: grpc.infer(model, [grpc_input(1)], sequence_id=558))
    assert e.status() == "StatusCode.INVALID_ARGUMENT" and "sequence 558" in e.message()
    assert server.proc.poll() is None


def test_string_id_on_integer_corrid_is_refused(server):
    client = httpclient.InferenceServerClient(server.url)
    e = _error(lambda: client.infer("acc_control", [http_input(1)], sequence_id="abc", sequence_start=True))
    assert "CONTROL_SEQUENCE_CORRID" in e.message() and "TYPE_UINT64" in e.message()


def test_idle_timeout_frees_the_slot(server):
    """One slot: a second sequence waits in the backlog until the first has been idle 0.3 s and is released."""
    client = httpclient.InferenceServerClient(server.url)
    assert int(client.infer("acc_idle", [http_input(2, None)], sequence_id=1, sequence_start=True).as_numpy("OUTPUT")[0]) == 2
    began = time.monotonic()
    out = client.infer("acc_idle", [http_input(7, None)], sequence_id=2, sequence_start=True).as_numpy("OUTPUT")
    waited = time.monotonic() - began
    assert int(out[0]) == 7
    assert 0.15 < waited < 5.0, waited
    e = _error(lambda: client.infer("acc_idle", [http_input(1, None)], sequence_id=1))
    assert "sequence 1 to model 'acc_idle' must specify the START flag" in e.message()
    client.infer("acc_idle", [http_input(1, None)], sequence_id=2, sequence_end=True)


def test_bad_sequence_configs_name_the_field(server):
    request = urllib.request.Request(f"http://{server.url}/v2/repository/index", data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    assert index["bad_control"]["state"] == "UNAVAILABLE"
    assert "control_input 'START'" in index["bad_control"]["reason"]
    assert "int32_false_true" in index["bad_control"]["reason"]
    assert index["bad_state"]["state"] == "UNAVAILABLE"
    assert "'NOPE'" in index["bad_state"]["reason"]


def test_config_shows_triton_defaults(server):
    client = httpclient.InferenceServerClient(server.url)
    config = client.get_model_config("acc_state")
    assert config["sequence_batching"]["max_sequence_idle_microseconds"] == 1000000
    assert "direct" in config["sequence_batching"]
