"""tritium embedded in a program with its own event loop (what each Ray Serve replica runs): the server on a
private loop thread, called from the host's loop; KServe v2 HTTP answered without a socket."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import threading

import numpy as np
import pytest

from tritium.core.errors import InvalidArgumentError, TritiumError
from tritium.embedded import EmbeddedServer, outputs_of, to_tensors
from tritium.frontends.http.routes import HttpRequest
from tritium.options import ServerOptions

from models import ADD_SUB_CONFIG, add_sub_graph, write_model

BATCHED = ADD_SUB_CONFIG.replace('max_batch_size: 8', 'max_batch_size: 8\n    dynamic_batching { max_queue_delay_microseconds: 20000 }')


@pytest.fixture(scope="module")
def engine(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("repo"))
    write_model(repo, "add_sub", add_sub_graph("INT32", ("batch", 16)), config=BATCHED)
    options = ServerOptions(model_repositories=[repo], allow_http=False, allow_grpc=False, allow_metrics=False)
    server = EmbeddedServer(options)
    server.start(timeout=120)
    yield server
    server.stop()


def _pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.arange(16, dtype=np.int32).reshape(1, 16) + i
    return a, np.full((1, 16), 3, dtype=np.int32)


def test_infer_from_the_hosts_loop_batches_on_tritiums(engine):  # type: ignore[no-untyped-def]
    async def main() -> list[dict[str, np.ndarray]]:
        assert threading.current_thread() is threading.main_thread()
        calls = [engine.call(engine.infer("add_sub", dict(zip(("INPUT0", "INPUT1"), _pair(i))))) for i in range(8)]
        return [outputs_of(r) for r in await asyncio.gather(*calls)]

    results = asyncio.run(main())
    for i, out in enumerate(results):
        a, b = _pair(i)
        np.testing.assert_array_equal(out["OUTPUT0"], a + b)
        np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    stats = engine.submit(_sync(lambda: engine.api.model_statistics("add_sub"))).result(30)["model_stats"][0]
    assert stats["inference_count"] >= 8
    # eight requests sent together into a 20 ms queue delay: the dynamic batcher joined some of them
    assert stats["execution_count"] < stats["inference_count"]


async def _sync(function):  # type: ignore[no-untyped-def]
    return function()


def test_errors_are_tritiums_own(engine):  # type: ignore[no-untyped-def]
    with pytest.raises(TritiumError, match="unknown_model"):
        engine.submit(engine.infer("unknown_model", {"INPUT0": np.zeros((1, 16), np.int32)})).result(30)
    a, _ = _pair(0)
    with pytest.raises(InvalidArgumentError, match="INPUT1"):
        engine.submit(engine.infer("add_sub", {"INPUT0": a})).result(30)
    with pytest.raises(InvalidArgumentError, match="unsupported numpy dtype"):
        to_tensors({"INPUT0": np.zeros(2, dtype=np.complex64)})
    with pytest.raises(InvalidArgumentError, match="must be str or bytes"):
        to_tensors({"INPUT0": np.array([1, None], dtype=object)})


def test_bytes_inputs_become_bytes_tensors() -> None:
    (tensor,) = to_tensors({"TEXT": np.array([["a", "é"]])})
    assert tensor.datatype.wire_name == "BYTES"
    assert tensor.data.tolist() == [[b"a", "é".encode()]]


def test_kserve_http_without_a_socket(engine):  # type: ignore[no-untyped-def]
    body = json.dumps({"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}]}).encode()
    answer = engine.submit(engine.handle_http(HttpRequest("POST", "/v2/models/add_sub/infer", {}, body))).result(30)
    assert answer.status == 200 and answer.content_type == "application/json"
    doc = json.loads(answer.body)
    assert {o["name"]: o["data"] for o in doc["outputs"]}["OUTPUT0"] == [i + 1 for i in range(16)]
    missing = engine.submit(engine.handle_http(HttpRequest("POST", "/v2/models/nope/infer", {}, body))).result(30)
    assert missing.status == 404 and "nope" in json.loads(missing.body)["error"]
    gzipped = engine.submit(engine.handle_http(HttpRequest("GET", "/v2/models/add_sub", {}, b""), "gzip")).result(30)
    assert ("Content-Encoding", "gzip") in gzipped.headers
    ready = engine.submit(engine.handle_http(HttpRequest("GET", "/v2/health/ready", {}, b""))).result(30)
    assert ready.status == 200
    assert engine.running()


def test_a_failed_start_is_raised_and_cleaned_up(tmp_path) -> None:  # type: ignore[no-untyped-def]
    write_model(str(tmp_path), "broken", None, config='name: "broken"\nbackend: "onnxruntime"\nmax_batch_size: 0')
    options = ServerOptions(model_repositories=[str(tmp_path)], allow_http=False, allow_grpc=False,
                            allow_metrics=False)
    server = EmbeddedServer(options)
    with pytest.raises(Exception, match="broken"):
        server.start(timeout=120)
    assert not server.running() and server.loop.is_closed()


def test_a_stream_on_tritiums_loop_is_relayed_and_closed(engine):  # type: ignore[no-untyped-def]
    """generate_stream's events are produced on tritium's loop and read from the host's; a reader that stops
    early closes the stream there (the model's request is cancelled)."""
    closed = []

    async def events():  # type: ignore[no-untyped-def]
        try:
            for i in range(100):
                assert asyncio.get_running_loop() is engine.loop
                yield f"event {i}".encode()
        finally:
            closed.append(asyncio.get_running_loop() is engine.loop)

    async def read(limit: int) -> list[bytes]:
        got = []
        relay = engine.relay(events())
        async for piece in relay:
            got.append(piece)
            if len(got) == limit:
                break
        await relay.aclose()
        return got

    assert asyncio.run(read(3)) == [b"event 0", b"event 1", b"event 2"]
    assert closed == [True]
    assert len(asyncio.run(read(1000))) == 100 and closed == [True, True]


def test_the_host_process_is_left_untuned_and_a_server_starts_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An embedded server runs in someone else's program: unless asked (``tune_process=True``, as a Ray replica,
    whose process is only the server, asks), the garbage collector and the GIL switch interval stay as they
    were.  A stopped server is gone: stopping again is a no-op, starting again is refused."""
    before = (gc.get_freeze_count(), gc.get_threshold(), sys.getswitchinterval())
    options = ServerOptions(model_repositories=[str(tmp_path)], allow_http=False, allow_grpc=False,
                            allow_metrics=False)
    server = EmbeddedServer(options)
    server.start(timeout=60)
    try:
        assert server.running() and server.thread.name == "tritium-loop"
        assert (gc.get_freeze_count(), gc.get_threshold(), sys.getswitchinterval()) == before
    finally:
        server.stop()
    assert not server.running() and server.loop.is_closed() and not server.thread.is_alive()
    server.stop()
    with pytest.raises(InvalidArgumentError, match="starts once"):
        server.start()
    with pytest.raises(TritiumError, match="stopped"):
        server.submit(server.ready())
