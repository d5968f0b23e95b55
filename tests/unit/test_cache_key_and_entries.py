"""The response cache's parts: the key, the local cache's bounds and eviction, settings read as Triton reads
them, and the Redis entry format against hostile bytes."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import orjson
import pytest

from tritium.core.cache_redis import RedisSettings, decode_entry, encode_entry
from tritium.core.errors import InternalError, InvalidArgumentError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.response_cache import (
    LOCAL_MIN_SIZE,
    LocalCache,
    cache_key,
    check_cache_config,
    entry_size,
    local_size,
    parse_cache_flags,
)
from tritium.core.types import DataType, Tensor


def request(*tensors: Tensor, outputs: list[str] | None = None, **parameters: object) -> InferenceRequest:
    return InferenceRequest("m", inputs=list(tensors), requested_outputs=outputs, parameters=dict(parameters))


def fp32(name: str, values: list[float], shape: tuple[int, ...] | None = None) -> Tensor:
    data = np.array(values, np.float32)
    return Tensor(name, DataType.FP32, data.reshape(shape) if shape else data)


def response(*tensors: Tensor, **parameters: object) -> InferenceResponse:
    return InferenceResponse("m", 1, outputs=list(tensors), parameters=dict(parameters))


def key(r: InferenceRequest, name: str = "m", version: int = 1) -> bytes:
    return cache_key(r, name, version)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


# -- the key --------------------------------------------------------------------------------------------------

def test_the_key_is_the_same_for_the_same_request_in_any_input_order() -> None:
    a, b = fp32("A", [1, 2]), fp32("B", [3, 4])
    assert key(request(a, b)) == key(request(b, a)) == key(request(fp32("B", [3, 4]), fp32("A", [1, 2])))
    assert len(key(request(a))) == 32


@pytest.mark.parametrize("other", [
    request(fp32("A", [1, 3])),                                        # bytes
    request(fp32("B", [1, 2])),                                        # input name
    request(fp32("A", [1, 2], (2, 1))),                                # shape, same bytes
    request(Tensor("A", DataType.INT32, np.array([1, 2], np.float32).view(np.int32))),  # data type, same bytes
    request(fp32("A", [1, 2]), outputs=["OUT0"]),                      # requested outputs
    request(fp32("A", [1, 2]), add=1),                                 # parameters the model sees
], ids=["bytes", "name", "shape", "datatype", "outputs", "parameters"])
def test_what_decides_the_answer_changes_the_key(other: InferenceRequest) -> None:
    assert key(request(fp32("A", [1, 2]))) != key(other)


def test_model_name_and_version_are_in_the_key() -> None:
    r = request(fp32("A", [1, 2]))
    assert len({key(r), key(r, "n"), key(r, "m", 2)}) == 3


def test_bytes_inputs_are_keyed_by_their_elements() -> None:
    def strings(*items: bytes) -> InferenceRequest:
        return request(Tensor("S", DataType.BYTES, np.array(list(items), dtype=np.object_)))

    assert key(strings(b"ab", b"c")) == key(strings(b"ab", b"c"))
    assert key(strings(b"ab", b"c")) != key(strings(b"a", b"bc"))


def test_requested_outputs_are_a_set() -> None:
    a = fp32("A", [1])
    assert key(request(a, outputs=["X", "Y"])) == key(request(a, outputs=["Y", "X", "X"]))
    assert key(request(a, outputs=[])) != key(request(a))


# -- the local cache ------------------------------------------------------------------------------------------

def test_least_recently_used_entries_are_evicted_to_stay_within_the_size() -> None:
    out = response(fp32("OUT", [0.0] * 64))  # 256 bytes of data
    size = entry_size(out)
    cache = LocalCache(3 * size)
    for k in (b"a", b"b", b"c"):
        run(cache.insert(k, out))
    assert run(cache.lookup(b"a")) is not None  # now b is the least recently used
    run(cache.insert(b"d", out))
    assert run(cache.lookup(b"b")) is None
    assert all(run(cache.lookup(k)) is not None for k in (b"a", b"c", b"d"))
    assert cache.used == 3 * size <= cache.size and cache.counters.evictions == 1
    assert cache.usage() == (3, 1.0)


def test_an_entry_larger_than_the_cache_is_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    cache = LocalCache(1000)
    run(cache.insert(b"small", response(fp32("OUT", [1.0]))))
    run(cache.insert(b"big", response(fp32("OUT", [0.0] * 1000))))
    assert run(cache.lookup(b"big")) is None and run(cache.lookup(b"small")) is not None
    assert "is greater than total cache size: 1000" in caplog.text


def test_replacing_an_entry_keeps_the_accounting_exact() -> None:
    cache = LocalCache(10_000)
    run(cache.insert(b"k", response(fp32("OUT", [1.0] * 10))))
    run(cache.insert(b"k", response(fp32("OUT", [2.0] * 20))))
    assert cache.usage()[0] == 1 and cache.used == entry_size(response(fp32("OUT", [2.0] * 20)))


def test_stored_outputs_are_copies_nobody_can_write() -> None:
    """A backend may reuse the memory of its outputs (the Python backend's arenas): the cache keeps its own."""
    data = np.array([1, 2, 3], np.int32)
    cache = LocalCache(10_000)
    run(cache.insert(b"k", response(Tensor("OUT", DataType.INT32, data), note="kept")))
    data[:] = 0
    entry = run(cache.lookup(b"k"))
    [stored] = entry.outputs
    assert stored.data.tolist() == [1, 2, 3] and not stored.data.flags.writeable
    answer = entry.response(InferenceRequest("m", id="req-7"), "m", 3)
    assert (answer.id, answer.model_version, answer.parameters) == ("req-7", 3, {"note": "kept"})


# -- settings ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("items, message", [
    (["local"], "No cache specified. --cache-config option format is <cache name>,<setting>=<value>. Got local"),
    (["size=100"], "No cache specified."),
    (["local,size"], "--cache-config option format is '<cache name>,<setting>=<value>'. Got local,size"),
])
def test_malformed_cache_flags_are_refused_in_tritons_words(items: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("<", ".").replace(">", ".")):
        parse_cache_flags(items)


def test_cache_flags_merge_and_later_values_win() -> None:
    assert parse_cache_flags(["redis,host=a", "redis,port=1", "redis,host=b"]) == {"redis": {"host": "b", "port": "1"}}
    with pytest.raises(InvalidArgumentError, match="only a single cache is currently supported"):
        check_cache_config(parse_cache_flags(["local,size=1000", "redis,host=x"]))
    with pytest.raises(InvalidArgumentError, match="unable to find 'libtritoncache_memcached.so'"):
        check_cache_config({"memcached": {"host": "x"}})


@pytest.mark.parametrize("text, size", [("1048576", 1048576), (" 500", 500), ("+600", 600), ("600abc", 600),
                                        (str(LOCAL_MIN_SIZE), LOCAL_MIN_SIZE)])
def test_the_local_size_is_read_as_stoull_reads_it(text: str, size: int) -> None:
    assert local_size({"size": text}) == size


@pytest.mark.parametrize("text, message", [
    ("abc", "Failed to initialize LocalCache: stoull"),
    ("99999999999999999999", "Failed to initialize LocalCache: stoull"),
    ("0", "Could not initialize buffer in basic_managed_external_buffer constructor"),
    ("191", "Could not initialize buffer"),
    ("1e6", "Could not initialize buffer"),  # stoull reads 1
    ("-1", "failed to allocate buffer"),  # wraps to 2**64 - 1
])
def test_a_local_size_triton_cannot_use_is_refused(text: str, message: str) -> None:
    with pytest.raises(InternalError, match=message):
        local_size({"size": text})


def test_redis_settings_are_tritons() -> None:
    with pytest.raises(InvalidArgumentError, match="didn't specify address. Must at a minimum specify 'host' and"):
        RedisSettings.parse({"host": "x"})
    s = RedisSettings.parse({"host": "r", "port": "6380", "user": "u", "password": "p", "db": "2",
                             "connect_timeout": "0", "pool_size": "4", "wait_timeout": "50"})
    args = s.client_arguments()
    assert (args["host"], args["port"], args["username"], args["password"], args["db"]) == ("r", 6380, "u", "p", 2)
    assert args["socket_connect_timeout"] is None and args["socket_timeout"] == 1.0  # 0: forever; unset: 1 s
    assert (s.pool_size, s.wait_timeout_ms, s.tls) == (4, 50, False)
    assert RedisSettings.parse({"host": "r", "port": "1", "cacert": "/ca.pem"}).tls
    for bad in ({"port": "http"}, {"port": "70000"}, {"db": "-1"}, {"pool_size": "0"}, {"colour": "blue"}):
        with pytest.raises(InvalidArgumentError, match="Failed to initialize RedisCache"):
            RedisSettings.parse({"host": "r", "port": "1", **bad})


# -- the Redis entry format ---------------------------------------------------------------------------------

def test_an_entry_round_trips_exactly() -> None:
    out = response(Tensor("F", DataType.FP16, np.arange(6, dtype=np.float16).reshape(2, 3)),
                   Tensor("S", DataType.BYTES, np.array([[b"x", b""], [b"\x00yz", b"w"]], dtype=np.object_)),
                   Tensor("E", DataType.INT64, np.zeros((0, 4), np.int64)), flag=True, name="n")
    entry = decode_entry(encode_entry(out))
    assert entry.parameters == {"flag": True, "name": "n"}
    for got, sent in zip(entry.outputs, out.outputs, strict=True):
        assert (got.name, got.datatype, got.data.shape) == (sent.name, sent.datatype, sent.data.shape)
        assert got.data.tolist() == sent.data.tolist()


def _entry(header: object, payload: bytes = b"") -> bytes:
    data = orjson.dumps(header)
    return b"TRC1" + struct.pack("<I", len(data)) + data + payload


@pytest.mark.parametrize("data", [
    b"", b"TRC1", b"\x80\x04pickle", b"TRC1\xff\xff\xff\xff{}",
    _entry([]), _entry({"outputs": [], "parameters": []}),
    _entry({"outputs": [["X", "FP32", [4], 16]], "parameters": {}}, b"\x00" * 8),          # truncated
    _entry({"outputs": [["X", "FP32", [4], 8]], "parameters": {}}, b"\x00" * 8),           # size vs shape
    _entry({"outputs": [["X", "FP32", [2**40, 2**40], 0]], "parameters": {}}),              # huge claim
    _entry({"outputs": [["X", "FP32", [-1], 0]], "parameters": {}}),
    _entry({"outputs": [["X", "NOPE", [1], 4]], "parameters": {}}, b"\x00" * 4),
    _entry({"outputs": [["X", "BYTES", [3], 4]], "parameters": {}}, b"\x09\x00\x00\x00"),
    _entry({"outputs": [], "parameters": {}}, b"left over"),
], ids=lambda d: repr(d[:24]))
def test_an_entry_that_does_not_decode_exactly_is_refused(data: bytes) -> None:
    with pytest.raises((ValueError, InvalidArgumentError)):
        decode_entry(data)


def test_a_strided_view_is_keyed_as_the_array_the_model_sees() -> None:
    grid = np.arange(8, dtype=np.float32).reshape(2, 4)
    view = request(Tensor("A", DataType.FP32, grid[:, :2]))
    copy = request(Tensor("A", DataType.FP32, np.ascontiguousarray(grid[:, :2])))
    assert key(view) == key(copy) != key(request(Tensor("A", DataType.FP32, grid[:, 2:])))


def test_bf16_inputs_are_keyed_by_their_bytes() -> None:
    import ml_dtypes

    def bf16(values: list[float]) -> InferenceRequest:
        return request(Tensor("A", DataType.BF16, np.array(values, ml_dtypes.bfloat16)))

    assert key(bf16([1.0, 2.0])) == key(bf16([1.0, 2.0])) != key(bf16([1.0, 3.0]))
