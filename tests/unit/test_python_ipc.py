"""The Python backend's crossing: message framing, and response arrays that view shared memory.

Responses of a Python model are zero-copy views of the arena the batch used; these tests check that
a later execution never writes over an arena whose arrays are still held, with a real stub process.
"""

from __future__ import annotations

import gc
import os
import pickle
import socket
import struct
import threading
import time

import numpy as np
import pytest

from tritium._proto import model_config_pb2 as mc
from tritium.backends.base import InstanceSpec, ModelContext
from tritium.backends.python import protocol
from tritium.backends.python.backend import PythonBackend, Settings
from tritium.backends.python.protocol import INCOMPLETE, Channel
from tritium.backends.python.stub import WaitPolicy
from tritium.config.parse import parse_config_text
from tritium.core import shared_memory
from tritium.core.errors import ModelConfigError
from tritium.core.inference import InferenceRequest
from tritium.core.types import Tensor


def test_channel_reassembles_split_and_joined_messages() -> None:
    a, b = socket.socketpair()
    reader = Channel(b)
    first, second = pickle.dumps(("exec", 1, [1.5] * 100), 5), pickle.dumps(("finalize",), 5)
    framed = struct.pack("<II", len(first), 0) + first + struct.pack("<II", len(second), 0) + second
    a.sendall(framed[:3])  # not even the length yet
    assert reader.recv_nowait() is INCOMPLETE
    a.sendall(framed[3:20])
    assert reader.recv_nowait() is INCOMPLETE
    a.sendall(framed[20:])  # the rest of the first and all of the second in one chunk
    assert reader.recv() == ("exec", 1, [1.5] * 100)
    assert reader.poll(0)
    assert reader.recv_nowait() == ("finalize",)
    assert reader.recv_nowait() is INCOMPLETE
    Channel(a).send({"x": b"\0" * 200_000})  # larger than one read
    assert reader.recv() == {"x": b"\0" * 200_000}
    a.close()
    with pytest.raises(EOFError):
        reader.recv()
    b.close()


def test_tensors_travel_out_of_band_and_big_messages_arrive_in_pieces() -> None:
    a, b = socket.socketpair()
    a.setblocking(True)
    writer, reader = Channel(a), Channel(b)
    big = np.arange(3 << 18, dtype=np.float32)  # 3 MiB: many reads, more than the socket holds
    small = np.array([[1, 2], [3, 4]], np.int16)
    metas, data = protocol.inline_tensors([("BIG", big), ("SMALL", small),
                                           ("TEXT", np.array([b"a", b"bc"], dtype=object))])
    assert all(isinstance(d, pickle.PickleBuffer) for d in data)  # not copied into the pickle
    sender = threading.Thread(target=lambda: [writer.send(m) for m in (("resp", 7, metas, data), ("log", 1, "x"))])
    sender.start()
    got = INCOMPLETE
    while got is INCOMPLETE:  # as the event loop reads it: whatever has arrived, never blocking
        got = reader.recv_nowait()
        if got is INCOMPLETE:
            reader.poll(1)
    assert got[:2] == ("resp", 7)
    arrays = {name: array for name, _, array in protocol.read_tensors(got[2], got[3], None)}
    assert np.array_equal(arrays["BIG"], big) and np.array_equal(arrays["SMALL"], small)
    assert arrays["SMALL"].dtype == np.int16 and arrays["TEXT"].tolist() == [b"a", b"bc"]
    arrays["BIG"][0] = -1.0  # the received memory is the message's own, writable like a model's tensors
    assert reader.recv() == ("log", 1, "x")  # the message after it is intact
    sender.join()
    assert reader.recv_nowait() is INCOMPLETE
    a.close()
    b.close()


def test_bls_arena_places_regions_first_fit_and_frees_them_when_no_view_is_left() -> None:
    arena = protocol.BlsArena("tritium_test_", 1 << 16, 1 << 16)
    released: list[int] = []
    try:
        a = np.arange(5_000, dtype=np.float32)  # 20 KB
        text = np.array([b"abc", b"", "\u00fc".encode()], dtype=np.object_)
        metas, new = arena.place([("A", a), ("T", text)])
        assert new is not None and new[1] == 1 << 16 and os.path.exists(new[0]) and metas[0][3] == 0
        reader = protocol.Arena.attach(*new, unlink=True)  # as the other side maps it
        assert not os.path.exists(new[0])
        got = protocol.read_tensors(metas, [None, None], reader, released.append)
        assert np.array_equal(got[0][2], a) and list(got[1][2]) == list(text)
        second, again = arena.place([("B", a + 1)])  # beside the first region, in the same arena
        assert again is None and second[0][3] >= metas[1][3] + metas[1][4]
        assert arena.place([("C", np.zeros(7_500, np.float32))]) is None  # 30 KB more do not fit: inline
        tail = got[0][2][10:20]  # a view of a view keeps the region
        del got
        gc.collect()
        assert released == []
        del tail
        gc.collect()
        assert released == [0]  # no view of the first region is left: its start, to free it by
        arena.free(released)
        third, again = arena.place([("D", a * 3)])  # first fit: where the first region was, before the second
        assert again is None and third[0][3] == 0
        assert np.array_equal(protocol.read_tensors(third, [None], reader)[0][2], a * 3)
        assert np.array_equal(protocol.read_tensors(second, [None], reader)[0][2], a + 1)  # untouched
        arena.free([0, second[0][3], 12345])  # an unknown start is ignored
        big = np.zeros(50_000, np.float32)  # 200 KB, none taken: a bigger arena, named for the reader to map
        bigger, grown = arena.place([("E", big)])
        assert grown is not None and grown[1] >= 2 * big.nbytes and bigger[0][3] == 0
        protocol.unlink_quietly(grown[0])
        empty, _ = arena.place([("F", np.zeros(0, np.float32))])  # an empty tensor still has a region
        assert empty[0][3] != bigger[0][3]
    finally:
        arena.close()
    with pytest.raises(ValueError, match="never sent"):
        protocol.read_tensors([("X", "FP32", (1,), 0, 4)], [None], None, released.append)
    assert released == [0]  # nothing was read: nothing to release
    nowhere = protocol.BlsArena("no-such-dir/tritium_test_", 1 << 16, 1 << 16)  # no arena can be made: inline
    assert nowhere.place([("A", np.zeros(100, np.float32))]) is None


def test_recv_polls_then_sleeps_until_the_message_comes() -> None:
    a, b = socket.socketpair()
    reader, writer = Channel(b), Channel(a)
    for delay in (0.005, 0.1):  # within the polling time, and long after it
        timer = threading.Timer(delay, writer.send, (("exec", delay),))
        start = time.perf_counter()
        timer.start()
        assert reader.recv(spin_s=0.02) == ("exec", delay)
        assert time.perf_counter() - start >= delay
        timer.join()
    a.close()
    b.close()


def test_recv_naps_between_polls_and_still_gets_every_message() -> None:
    """With naps between polls (the stub's wait for its next execute): messages that come during the back-to-back
    polls, during the naps, in pieces, or after the polling ends all arrive whole and in order."""
    a, b = socket.socketpair()
    reader, writer = Channel(b), Channel(a)
    assert not reader.readable()
    for delay in (0.0, 0.002, 0.1):  # at once, while it naps, long after it stopped polling
        timer = threading.Timer(delay, writer.send, (("exec", delay),))
        start = time.perf_counter()
        timer.start()
        assert reader.recv(spin_s=0.02, nap_s=20e-6) == ("exec", delay)
        assert time.perf_counter() - start >= delay
        timer.join()
    frame = pickle.dumps(("exec", "split"), 5)
    frame = struct.pack("<II", len(frame), 0) + frame
    a.sendall(frame[:5])  # a partial message is readable, yet incomplete: polling goes on until the rest comes
    assert reader.readable()
    threading.Timer(0.005, a.sendall, (frame[5:],)).start()
    assert reader.recv(spin_s=0.02, nap_s=20e-6) == ("exec", "split")
    writer.send(("one",))
    writer.send(("two",))
    assert reader.recv(spin_s=0.02, nap_s=20e-6) == ("one",)
    assert reader.readable()  # the second is buffered here, not on the socket
    assert reader.recv(spin_s=0.02, nap_s=20e-6) == ("two",)
    a.close()
    with pytest.raises(EOFError):
        reader.recv(spin_s=0.02, nap_s=20e-6)
    b.close()


def test_poll_works_past_fd_setsize() -> None:
    """A busy server holds more than 1024 descriptors (connections, shared-memory blocks): waiting for a
    stub's reply (finalize on unload) must not depend on the socket's descriptor number."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1600:
        pytest.skip(f"the hard descriptor limit ({hard}) is below 1600")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1600), hard))
    a, b = socket.socketpair()
    high = socket.socket(fileno=os.dup2(a.fileno(), 1500))
    a.close()
    try:
        reader, writer = Channel(high), Channel(b)
        assert not reader.poll(0.01)
        writer.send(("finalized", None))
        assert reader.poll(1.0)
        assert reader.recv() == ("finalized", None)
    finally:
        high.close()
        b.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("key,attribute", [("stub-nap-microseconds", "stub_nap_us"),
                                           ("stub-spin-microseconds", "stub_spin_us")])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_stub_wait_settings_are_checked(key: str, attribute: str, value: str) -> None:
    with pytest.raises(ModelConfigError, match=f"'{key}' .*'{value}'"):
        Settings({key: value})
    assert getattr(Settings({key: "0"}), attribute) == 0
    assert getattr(Settings({}), attribute) > 0


def test_stub_polls_only_while_executes_come_crowded() -> None:
    """One request in flight (one request per execute, whatever the gap): the stub sleeps at once after each
    reply.  Batches of several requests soon after the reply: it polls; when they thin out again, it sleeps."""
    policy = WaitPolicy(1e-3)
    assert all(policy.next(gap, 1) == 0.0 for gap in (5e-6, 200e-6, 50e-6) * 10)
    polls = [policy.next(100e-6, 4) for _ in range(10)]
    assert polls[0] == 0.0 and polls[-1] == 1e-3  # crowded after a few such executes, not the first
    assert [policy.next(100e-6, 1) for _ in range(10)][-1] == 0.0
    for _ in range(10):  # several requests each, but long after the reply: sleeping costs nothing then
        policy.next(5e-3, 8)
    assert policy.next(5e-3, 8) == 0.0
    assert WaitPolicy(0.0).next(1e-6, 32) == 0.0  # stub-spin-microseconds=0: never polls


MODEL = """
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("SAME", x), pb_utils.Tensor("PLUS", x + 1)]))
        return out
"""


@pytest.fixture(scope="module")
def instance(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("pyipc")
    os.makedirs(root / "m" / "1")
    (root / "m" / "1" / "model.py").write_text(MODEL)
    config = parse_config_text("""
        name: "m" backend: "python" max_batch_size: 0
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "SAME" data_type: TYPE_FP32 dims: [ -1 ] }, { name: "PLUS" data_type: TYPE_FP32 dims: [ -1 ] } ]
    """, "m")
    config.default_model_filename = "model.py"
    backend = PythonBackend()
    # a stub that never polls: the other tests (and the server's default) cover the polling one
    backend.initialize({"shm-default-byte-size": "4096", "shm-growth-byte-size": "4096",
                        "stub-spin-microseconds": "0"})
    state = backend.model_initialize(ModelContext("m", 1, str(root / "m"), config))
    inst = state.instance_initialize(InstanceSpec("m_0", "KIND_CPU", 0, mc.ModelInstanceGroup()))
    yield inst
    inst.finalize()


def run(instance, x: np.ndarray) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    response = instance.execute([InferenceRequest("m", inputs=[Tensor.from_numpy("INPUT0", x)])])[0]
    return {t.name: t.data for t in response.outputs}


def test_held_outputs_are_never_overwritten(instance) -> None:  # type: ignore[no-untyped-def]
    held = [run(instance, np.full(16, float(i), np.float32)) for i in range(5)]
    for i, outputs in enumerate(held):
        np.testing.assert_array_equal(outputs["SAME"], np.full(16, float(i), np.float32))
        np.testing.assert_array_equal(outputs["PLUS"], np.full(16, float(i + 1), np.float32))
    pool = len(instance._stub.arenas)
    assert pool >= 5  # each held response keeps its own arena
    del held, outputs
    gc.collect()
    for i in range(20):  # released arenas are reused: the pool does not grow
        np.testing.assert_array_equal(run(instance, np.full(16, float(i), np.float32))["PLUS"], i + 1)
    assert len(instance._stub.arenas) == pool


def test_tensor_larger_than_the_arena(instance) -> None:  # type: ignore[no-untyped-def]
    x = np.arange(100_000, dtype=np.float32)  # 400 kB into 4 kB arenas
    outputs = run(instance, x)
    small = run(instance, np.zeros(4, np.float32))
    np.testing.assert_array_equal(outputs["SAME"], x)
    np.testing.assert_array_equal(outputs["PLUS"], x + 1)
    np.testing.assert_array_equal(small["PLUS"], np.ones(4, np.float32))


@pytest.mark.parametrize("value", ["x", "-5"])
def test_reply_spin_setting_is_checked(value: str) -> None:
    with pytest.raises(ModelConfigError, match=f"'reply-spin-microseconds' .*'{value}'"):
        Settings({"reply-spin-microseconds": value})
    assert Settings({"reply-spin-microseconds": "0"}).reply_spin_s == 0
    assert Settings({}).reply_spin_s > 0


def test_executes_on_the_event_loop_with_inputs_in_shared_memory(instance) -> None:  # type: ignore[no-untyped-def]
    """As the server runs them: execute_async, the reply read (or polled for) on the loop.  An input that lies
    in a shared body block is read there by the stub, and an output that is that input comes back as a view
    of the same block, with no copy either way."""
    import asyncio

    async def execute(x: np.ndarray) -> dict[str, np.ndarray]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        request = InferenceRequest("m", inputs=[Tensor.from_numpy("INPUT0", x)])
        assert instance.execute_async([request], loop, lambda r, e: future.set_result((r, e)))
        responses, error = await future
        assert error is None
        return {t.name: t.data for t in responses[0].outputs}

    async def main() -> None:
        for n in (4, 100_000, 16):
            body = shared_memory.take(4 * n + 64)
            x = np.frombuffer(memoryview(body)[64:], np.float32) if body is not None else np.empty(n, np.float32)
            x[:] = np.arange(n, dtype=np.float32)
            for _ in range(20):
                outputs = await execute(x)
                np.testing.assert_array_equal(outputs["SAME"], x)
                np.testing.assert_array_equal(outputs["PLUS"], x + 1)
            if body is not None:
                block, offset = shared_memory.locate(outputs["SAME"])  # type: ignore[misc]
                assert (block, offset) == shared_memory.locate(x)
                assert block.ident in instance._stub.blocks  # its descriptor was handed over once

    asyncio.run(main())
    instance._unwatch(instance._stub)


def test_async_exec_sends_at_once_in_a_loop_and_when_awaited_outside_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """As Triton: inside a running loop the BLS request goes out when async_exec() is called; built outside
    one (which Triton refuses), it goes out when awaited, on the loop that awaits it."""
    import asyncio
    from concurrent.futures import Future

    from tritium.backends.python import pb_utils

    sent: list[str] = []

    class Runtime:
        def bls(self, request, decoupled):  # type: ignore[no-untyped-def]
            sent.append(request.model_name)
            waiter: Future = Future()
            waiter.set_result(request.model_name + " answered")
            return len(sent), waiter

    monkeypatch.setattr(pb_utils, "_runtime", Runtime())

    async def inside() -> list[str]:
        pending = pb_utils.InferenceRequest(model_name="a").async_exec()
        assert sent == ["a"]  # before any await
        return [await pending]

    assert asyncio.run(inside()) == ["a answered"]
    outside = pb_utils.InferenceRequest(model_name="b").async_exec()
    assert sent == ["a"]  # not yet

    async def later() -> str:
        return await outside

    assert asyncio.run(later()) == "b answered"
    assert sent == ["a", "b"]


def test_execute_messages_have_their_named_layouts_and_plain_types_on_the_wire(instance) -> None:  # type: ignore[no-untyped-def]
    """Each message is the plain tuple of its ``messages`` type: readable by field name there, and pickled with
    no class reference (a NamedTuple or enum member would need a Python ``__reduce__`` per message)."""
    import io
    from typing import Any

    from tritium.backends.python.messages import Execute, Executed, ExecuteRequest, Kind, Location, Outcome, TensorMeta

    class PlainOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            raise AssertionError(f"a message refers to {module}.{name}")

    control = instance._stub.control
    seen: list[Any] = []

    class Recording:
        def __getattr__(self, name: str) -> Any:
            return getattr(control, name)

        def send(self, message: Any) -> None:
            seen.append(message)
            control.send(message)

        def recv(self, *args: Any) -> Any:
            reply = control.recv(*args)
            seen.append(reply)
            return reply

    instance._stub.control = Recording()
    try:
        x = np.arange(8, dtype=np.float32)
        outputs = run(instance, x)
    finally:
        instance._stub.control = control
    np.testing.assert_array_equal(outputs["PLUS"], x + 1)
    sent, reply = seen
    for message in (sent, reply):
        assert type(message) is tuple
        assert PlainOnly(io.BytesIO(pickle.dumps(message, 5))).load() == message
    execute = Execute._make(sent)
    assert execute.kind == Kind.EXECUTE and len(execute.batch) == 1
    request = ExecuteRequest._make(execute.batch[0])
    (given,) = [TensorMeta._make(meta) for meta in request.inputs]
    assert (given.name, given.datatype, given.shape, given.nbytes) == ("INPUT0", "FP32", (8,), 32)
    assert (given.location, given.block) == (Location.IN_ARENA, -1)
    executed = Executed._make(reply)
    assert executed.kind == Kind.EXECUTED and executed.error is None
    (outcome, metas), = executed.results  # type: ignore[misc]
    assert outcome == Outcome.OK
    by_name = {meta.name: meta for meta in map(TensorMeta._make, metas)}
    assert by_name["SAME"].location == Location.IN_ARENA and by_name["SAME"].offset == given.offset  # not copied
    assert by_name["PLUS"].location in (Location.IN_ARENA, Location.OUT_ARENA) and by_name["PLUS"].block == -1


def test_the_stubs_requests_and_tensors_are_those_the_constructors_make() -> None:
    """The stub builds an execute's requests and inputs without the constructors' conversions: what a model
    sees of them must be exactly what the constructors would have given it."""
    from tritium.backends.python import pb_utils

    array = np.arange(4, dtype=np.float32)
    assert vars(pb_utils.Tensor._wrap("INPUT0", array)) == vars(pb_utils.Tensor("INPUT0", array))
    tensors = [pb_utils.Tensor("INPUT0", array)]
    made = pb_utils.InferenceRequest(inputs=tensors, requested_output_names=["OUT"], request_id="r1",
                                     correlation_id=7, flags=3, parameters={"p": 1})
    made._key = 5
    fast = pb_utils.InferenceRequest._incoming(5, tensors, ["OUT"], "r1", 7, 3, {"p": 1})
    mine, theirs = vars(fast), vars(made)
    assert type(mine.pop("_trace")) is type(theirs.pop("_trace"))
    assert mine == theirs
    assert pb_utils.InferenceRequest._incoming(5, [], [], "", 0, 0, None).parameters() == "{}"
