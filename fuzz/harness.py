"""Coverage-guided fuzzing (atheris, libFuzzer) of every decoder a client reaches; run by hand.

    python fuzz/harness.py <target> [libFuzzer flags...]      e.g.
    python fuzz/harness.py grpc -max_total_time=180

Targets: http_json, http_binary, bytes, grpc, generate, config_text, config_json, api (the repository,
logging, trace, shared-memory, infer and generate bodies through the HTTP API of a started server) and
grpc_control (the gRPC settings, repository and shared-memory messages, through its servicer).  Each runs the contract
of ``tests/fuzz_targets.py`` (only TritiumError may come out, memory bounded by the input, refused input
changes nothing); a broken contract is a crash: libFuzzer stops and writes the input to ``crash-<sha1>``.
The corpus grows in ``fuzz/corpus/<target>`` (seeded with valid inputs on the first run); replay a crash
with ``python fuzz/harness.py <target> crash-<sha1>``.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tracemalloc

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

with atheris.instrument_imports(include=["tritium"]):
    # every module a decoder runs, instrumented (imported here, before anything else imports them)
    import tritium.config.sequence  # noqa: F401
    import tritium.frontends.http.routes  # noqa: F401
    import tritium.logsettings  # noqa: F401
    import tritium.repository.manager  # noqa: F401
    import tritium.repository.overrides  # noqa: F401
    import tritium.repository.warmup  # noqa: F401
    import tritium.scheduler.sequence  # noqa: F401
    import tritium.server  # noqa: F401
    import tritium.trace  # noqa: F401

    import fuzz_targets as targets
    from tritium._proto import grpc_service_pb2 as pb


def _u16(data: bytes) -> tuple[int, bytes]:
    return (struct.unpack("<H", data[:2])[0], data[2:]) if len(data) >= 2 else (0, data)


def http_json(data: bytes) -> None:
    targets.http_infer(data, None, targets.MODELS[data[0] & 1] if data else None)


def http_binary(data: bytes) -> None:
    """The first two bytes: the Inference-Header-Content-Length (within the body, as the route checks)."""
    length, body = _u16(data)
    if not body:
        return
    targets.http_infer(body, length % len(body) + 1, targets.MODELS[length >> 15])


def bytes_(data: bytes) -> None:
    """The first two bytes: the element count (the top bit: times 2**32, a count no buffer can hold)."""
    count, buffer = _u16(data)
    targets.bytes_tensor(buffer, (count & 0x7FFF) << (32 if count >> 15 else 0))


def grpc(data: bytes) -> None:
    targets.grpc_infer(data, targets.MODELS[len(data) & 1])


def generate(data: bytes) -> None:
    targets.generate(data, targets.MODELS[len(data) & 1])


def config_text(data: bytes) -> None:
    targets.config_text(data.decode("utf-8", "replace"))  # the server reads config.pbtxt as UTF-8 text


def config_json(data: bytes) -> None:
    targets.config_json(data.decode("utf-8", "replace"))  # the 'config' parameter arrives as text


_API: targets.ApiTarget | None = None
API_ROUTES = [
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/broken/load"),
    ("POST", "/v2/repository/models/fuzzed/load"),
    ("POST", "/v2/repository/models/broken/unload"),
    ("POST", "/v2/logging"),
    ("POST", "/v2/trace/setting"),
    ("POST", "/v2/systemsharedmemory/region/r/register"),
    ("POST", "/v2/systemsharedmemory/region/r/unregister"),
    ("POST", "/v2/models/m/trace/setting"),
    ("POST", "/v2/models/m/generate"),
    ("POST", "/v2/models/m/infer"),
]


def api(data: bytes) -> None:
    """The first byte picks the route; ``KEY`` in a body becomes the key of a real /dev/shm file."""
    global _API
    if _API is None:
        _API = targets.ApiTarget()
    if not data:
        return
    method, path = API_ROUTES[data[0] % len(API_ROUTES)]
    _API.handle(method, path, data[1:].replace(b"KEY", _API.shm_key.encode()))


GRPC_CALLS = [
    ("log_settings", pb.LogSettingsRequest),
    ("trace_setting", pb.TraceSettingRequest),
    ("repository_model_load", pb.RepositoryModelLoadRequest),
    ("repository_model_unload", pb.RepositoryModelUnloadRequest),
    ("repository_index", pb.RepositoryIndexRequest),
    ("system_shared_memory_register", pb.SystemSharedMemoryRegisterRequest),
]


def grpc_control(data: bytes) -> None:
    """The first byte picks the RPC; the rest is its request message (what gRPC cannot parse, it refuses)."""
    global _API
    if _API is None:
        _API = targets.ApiTarget()
    if not data:
        return
    method, cls = GRPC_CALLS[data[0] % len(GRPC_CALLS)]
    request = cls()
    try:
        request.ParseFromString(data[1:].replace(b"KEY", _API.shm_key.encode()))
    except Exception:  # noqa: BLE001 - gRPC answers these itself, before the servicer
        return
    _API.grpc(method, request)


TARGETS = {"http_json": http_json, "http_binary": http_binary, "bytes": bytes_, "grpc": grpc, "generate": generate,
           "config_text": config_text, "config_json": config_json, "api": api, "grpc_control": grpc_control}


def seeds(target: str) -> list[bytes]:
    """Valid inputs to start from: libFuzzer mutates them into the deep paths sooner than from nothing."""
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2], "data": [1.5, 2]},
                      {"name": "INPUT1", "datatype": "BYTES", "shape": [2], "data": ["a", "bc"]},
                      {"name": "INPUT2", "datatype": "INT8", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
           "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}], "id": "7",
           "parameters": {"priority": 1}}
    if target == "http_json":
        shm = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [4], "parameters": {
            "shared_memory_region": "r0", "shared_memory_offset": 0, "shared_memory_byte_size": 16}}]}
        return [json.dumps(doc).encode(), json.dumps(shm).encode()]
    if target == "http_binary":
        header = json.dumps({"inputs": [
            {"name": "INPUT0", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "INPUT1", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}]}).encode()
        tail = struct.pack("<2f", 1, 2) + struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
        return [struct.pack("<H", len(header) - 1) + header + tail]
    if target == "bytes":
        return [struct.pack("<H", 2) + struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)]
    if target == "grpc":
        message = pb.ModelInferRequest(model_name="m", id="1")
        item = message.inputs.add(name="INPUT0", datatype="FP32", shape=[2])
        item.contents.fp32_contents.extend([1, 2])
        message.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 1
        raw = pb.ModelInferRequest(model_name="m")
        raw.inputs.add(name="INPUT1", datatype="BYTES", shape=[1])
        raw.inputs.add(name="INPUT0", datatype="FP32", shape=[1]).parameters["shared_memory_region"].string_param = "r0"
        raw.raw_input_contents.append(struct.pack("<I", 1) + b"a")
        return [message.SerializeToString(), raw.SerializeToString()]
    if target == "generate":
        return [json.dumps({"INPUT0": [1, 2], "INPUT1": ["a", "b"], "INPUT2": [1, 2, 3, 4], "id": "x",
                            "parameters": {"k": 1}, "priority": 1}).encode()]
    if target in ("config_text", "config_json"):
        from fuzz_strategies import CONFIG_SAMPLES
        from google.protobuf import json_format

        from tritium.config.parse import parse_config_text

        if target == "config_text":
            return [text.encode() for text in CONFIG_SAMPLES]
        return [json.dumps(json_format.MessageToDict(parse_config_text(t, "m"))).encode() for t in CONFIG_SAMPLES]
    if target == "api":
        config = json.dumps({"name": "fuzzed", "backend": "onnxruntime", "input": [
            {"name": "a", "data_type": "TYPE_FP32", "dims": [1]}]})
        return [bytes([0]) + b'{"ready": true}',
                bytes([2]) + json.dumps({"parameters": {"config": config, "file:1/model.onnx": "AAAA"}}).encode(),
                bytes([3]) + b'{"parameters": {"unload_dependents": true}}',
                bytes([4]) + b'{"log_verbose_level": 1, "log_format": "ISO8601", "log_info": false}',
                bytes([5]) + b'{"trace_level": ["TIMESTAMPS"], "trace_rate": "10", "trace_count": "-1"}',
                bytes([6]) + b'{"key": "KEY", "offset": 0, "byte_size": 4096}']
    if target == "grpc_control":
        config = json.dumps({"name": "fuzzed", "backend": "onnxruntime"})
        load = pb.RepositoryModelLoadRequest(model_name="fuzzed")
        load.parameters["config"].string_param = config
        load.parameters["file:1/model.onnx"].bytes_param = b"xyz"
        log = pb.LogSettingsRequest()
        log.settings["log_verbose_level"].uint32_param = 1
        log.settings["log_format"].string_param = "ISO8601"
        trace = pb.TraceSettingRequest(model_name="m")
        trace.settings["trace_rate"].value.append("10")
        trace.settings["trace_level"].value.extend(["TIMESTAMPS", "TENSORS"])
        unload = pb.RepositoryModelUnloadRequest(model_name="fuzzed")
        unload.parameters["unload_dependents"].bool_param = True
        register = pb.SystemSharedMemoryRegisterRequest(name="r", key="KEY", offset=0, byte_size=4096)
        return [bytes([i]) + m.SerializeToString() for i, m in enumerate(
            [log, trace, load, unload, pb.RepositoryIndexRequest(ready=True), register])]
    raise KeyError(target)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} <{'|'.join(TARGETS)}> [libFuzzer flags...] [corpus dirs or inputs]")
    target = sys.argv[1]
    args = [sys.argv[0]] + sys.argv[2:]
    if not any(not a.startswith("-") for a in sys.argv[2:]):  # no corpus or input given: ours
        corpus = os.path.join(HERE, "corpus", target)
        if not os.path.isdir(corpus):
            os.makedirs(corpus)
            for i, seed in enumerate(seeds(target)):
                with open(os.path.join(corpus, f"seed-{i}"), "wb") as f:
                    f.write(seed)
        args.append(corpus)
    atheris.Setup(args, TARGETS[target])
    tracemalloc.start()  # once: the targets measure peaks; starting and stopping it per input churns memory
    atheris.Fuzz()


if __name__ == "__main__":
    main()
