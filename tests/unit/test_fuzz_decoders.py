"""Property-based tests of every decoder a client reaches (hypothesis).

Inputs are structured where that reaches deeper than random bytes: valid requests first, then one or two
mutations (a field replaced by other JSON, a size or header length off by some bytes, a length prefix made
huge, bytes flipped or cut).  Each target (``tests/fuzz_targets.py``) asserts that only a
:class:`TritiumError` comes out, that memory stays within what the input justifies, and that refused input
changes no server state.  The coverage-guided harnesses in ``fuzz/`` run the same targets for longer.

Bounded for CI: the ``ci`` profile (the default) runs ``FUZZ_EXAMPLES`` examples per test with no
deadline; ``HYPOTHESIS_PROFILE=long`` runs many more by hand.
"""

from __future__ import annotations

import os
import struct
import tracemalloc

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzz_targets as targets
from fuzz_strategies import (
    WIRE_TYPES,
    bytes_buffers,
    config_jsons,
    config_texts,
    dumps,
    generate_bodies,
    grpc_messages,
    infer_bodies,
    logging_bodies,
    repository_requests,
    shm_requests,
    trace_bodies,
)
from tritium.core.bytes_codec import deserialize_bytes_tensor
from tritium.core.errors import InvalidArgumentError
from tritium.core.types import DataType
from tritium.frontends.http import codec as http_codec

settings.register_profile(
    "ci", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "120")), deadline=None, derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile(
    "long", max_examples=20_000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    if targets._REGIONS is not None:
        targets._REGIONS.close()
        targets._REGIONS = None


@given(infer_bodies(), st.sampled_from(targets.MODELS))
def test_http_infer_bodies(case, model):
    body, length = case
    if length is not None and not 0 < length <= len(body):
        return  # the route answers these itself (tested below through the API)
    targets.http_infer(body, length, model)


@given(st.binary(max_size=300), st.none() | st.integers(1, 300))
def test_http_infer_random_bytes(body, length):
    if length is not None and length > len(body):
        length = len(body) or None
    targets.http_infer(body, length)


@given(st.lists(st.tuples(st.sampled_from(WIRE_TYPES), st.lists(st.integers(0, 2), max_size=2)),
                min_size=1, max_size=400))
def test_http_plan_cache_stays_bounded(headers):
    """Headers that vary per request never grow the plan cache past its bound."""
    for wire, shape in headers:
        dtype = DataType.from_wire(wire)
        count = int(np.prod(shape)) if shape else 1
        size = 4 * count if dtype is DataType.BYTES else dtype.itemsize * count
        blob = struct.pack("<I", 0) * count if dtype is DataType.BYTES else bytes(size)
        header = dumps({"inputs": [{"name": f"x{len(http_codec._PLANS)}", "datatype": wire, "shape": shape,
                                    "parameters": {"binary_data_size": size}}]})
        http_codec.decode_infer_request(header + blob, len(header), "m", 1)
        assert len(http_codec._PLANS) <= http_codec.MAX_PLANS


@given(st.binary(max_size=64), st.sampled_from(WIRE_TYPES),
       st.lists(st.sampled_from([-1, 0, 1, 2, 3, 2**31, 2**62]), max_size=3))
def test_http_raw_binary_request(body, wire, shape):
    targets.raw_infer(body, wire, shape)


@given(bytes_buffers())
def test_bytes_deserialization(case):
    targets.bytes_tensor(*case)


def test_bytes_huge_length_prefix_is_refused_before_allocating():
    """A 4 GiB length prefix, and 2**40 elements declared by a shape: refused, nothing large allocated."""
    for buffer, count in ((struct.pack("<I", 2**32 - 1) + b"abc", 1), (b"\0" * 16, 2**40), (b"", 2**62)):
        assert isinstance(targets.bytes_tensor(buffer, count), InvalidArgumentError)
    header = dumps({"inputs": [{"name": "INPUT1", "datatype": "BYTES", "shape": [2**40],
                                "parameters": {"binary_data_size": 8}}]})
    error = targets.http_infer(header + struct.pack("<I", 2**32 - 1) + b"abcd", len(header))
    assert isinstance(error, InvalidArgumentError), error
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgumentError, match="BYTES"):
            deserialize_bytes_tensor(b"\0\0\0\0" * 4, 2**40, "x")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


@given(grpc_messages(), st.sampled_from(targets.MODELS))
def test_grpc_infer_messages(data, model):
    targets.grpc_infer(data, model)


@given(st.binary(max_size=200))
def test_grpc_infer_random_bytes(data):
    targets.grpc_infer(data)


@given(generate_bodies(), st.sampled_from(targets.MODELS))
def test_generate_bodies(body, model):
    targets.generate(body, model)


@given(config_texts())
def test_config_text(text):
    targets.config_text(text)


@given(config_jsons())
def test_config_json(text):
    targets.config_json(text)


@pytest.fixture(scope="module")
def api():
    target = targets.ApiTarget()
    yield target
    target.close()


@settings(max_examples=max(20, settings().max_examples // 2))
@given(repository_requests())
def test_repository_bodies(api, case):
    path, body = case
    api.handle("POST", path, body)


@given(logging_bodies())
def test_logging_bodies(api, body):
    api.handle("POST", "/v2/logging", body)


@given(trace_bodies(), st.sampled_from(["/v2/trace/setting", "/v2/models/broken/trace/setting"]))
def test_trace_setting_bodies(api, body, path):
    api.handle("POST", path, body)


@given(trace_bodies(), st.sampled_from(["", "some_model"]))
def test_trace_settings_of_a_model(body, model):
    """The trace manager's per-model settings (the route checks the model is loaded first)."""
    from tritium.trace import TraceConfig, TraceManager

    tracer = TraceManager(TraceConfig.parse([]))
    try:
        changes = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    if not isinstance(changes, dict):
        return
    before = (dict(tracer._global_values), {k: dict(v) for k, v in tracer._overrides.items()})
    _, error = targets.refused_or_result(tracer.settings, model, changes, size=len(body), what="trace settings")
    after = (dict(tracer._global_values), {k: dict(v) for k, v in tracer._overrides.items()})
    if error is not None:
        assert before == after, f"refused trace settings changed the tracer: {error}"


@given(shm_requests())
def test_shared_memory_register_bodies(api, case):
    path, action, doc = case
    if isinstance(doc, dict) and isinstance(doc.get("key"), str):
        doc["key"] = doc["key"].replace("KEY", api.shm_key)
    body = dumps(doc)
    api.handle("GET" if action == "status" else "POST", path, body)


@given(st.sampled_from(["/v2/repository/index", "/v2/repository/models/fuzzed/load", "/v2/logging",
                        "/v2/trace/setting", "/v2/systemsharedmemory/region/r/register",
                        "/v2/models/m/generate", "/v2/models/m/infer"]),
       st.binary(max_size=120),
       st.fixed_dictionaries({}, optional={"content-encoding": st.sampled_from(["gzip", "deflate", "br", "identity"]),
                                           "inference-header-content-length": st.sampled_from(
                                               ["0", "-1", "5", "x", "99999999999999999999", ""])}))
def test_api_random_bodies(api, path, body, headers):
    api.handle("POST", path, body, headers)
