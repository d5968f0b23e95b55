"""Tests for tritium's generated protobuf/gRPC modules (src/tritium/_proto).

* the committed generated code, and its .pyi type stubs, match what
  scripts/gen_protos.py produces;
* tritium's messages are wire/text/JSON compatible with tritonclient's copies
  of Triton's protos, and both can be imported in one process;
* the gRPC service path is Triton's.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SRC_DIR = REPO_ROOT / "src"
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.py"
COMMITTED_DIR = SRC_DIR / "tritium" / "_proto"

if importlib.util.find_spec("tritium") is None:  # running without an install
    sys.path.insert(0, str(SRC_DIR))

from google.protobuf import descriptor_pool, json_format, text_format  # noqa: E402

from tritium._proto import (  # noqa: E402
    POOL,
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    model_config_pb2,
)

CONFIG_PBTXT = """
name: "m"
max_batch_size: 8
input [{name: "x" data_type: TYPE_FP32 dims: [-1, 16]}]
output [{name: "y" data_type: TYPE_STRING dims: [1] label_filename: "labels.txt"}]
instance_group [{kind: KIND_CPU count: 2}]
dynamic_batching {
  preferred_batch_size: [4]
  max_queue_delay_microseconds: 100
  priority_levels: 2
  priority_queue_policy { key: 1 value { timeout_action: DELAY max_queue_size: 3 } }
}
version_policy { specific { versions: [1, 3] } }
parameters { key: "k" value { string_value: "v" } }
model_warmup [{ name: "w" batch_size: 1 inputs { key: "x" value { data_type: TYPE_FP32 dims: [16] zero_data: true } } }]
model_transaction_policy { decoupled: true }
optimization { cuda { graph_spec [{ batch_size: 2 input { key: "x" value { dim: [16] } } }] } }
response_cache { enable: true }
model_metrics { metric_control [{ metric_identifier { family: "f" } histogram_options { buckets: [0.5, 1] } }] }
"""


def _tritonclient_protos():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    from tritonclient.grpc import model_config_pb2 as t_model_config
    from tritonclient.grpc import service_pb2 as t_service

    return t_model_config, t_service


# --------------------------------------------------------------------------
# (a) drift: committed generated code == generator output
# --------------------------------------------------------------------------


def _listing(d: Path) -> dict[str, bytes]:
    """The generated modules and type stubs in ``d``, by file name."""
    return {p.name: p.read_bytes() for p in sorted([*d.glob("*.py"), *d.glob("*.pyi")])}


def test_generated_code_matches_generator(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (grpc_tools) is not installed; cannot regenerate protos")
    out = tmp_path / "_proto"
    proc = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"generator failed:\n{proc.stdout}\n{proc.stderr}"

    fresh, committed = _listing(out), _listing(COMMITTED_DIR)
    assert sorted(fresh) == sorted(committed), "generated file set differs from src/tritium/_proto"
    # Every message module has its type stub (mypy reads these instead of the untyped builder code).
    modules = {name.removesuffix(".py") for name in fresh if name.endswith("_pb2.py")}
    assert modules and {name.removesuffix(".pyi") for name in fresh if name.endswith(".pyi")} == modules
    stale = [name for name in fresh if fresh[name] != committed[name]]
    if stale:
        import grpc_tools

        tools_version = getattr(grpc_tools, "__version__", None)
        if tools_version is None:
            from importlib.metadata import version

            tools_version = version("grpcio-tools")
        pytest.fail(
            f"src/tritium/_proto is out of date for {stale}. Run "
            f"`python scripts/gen_protos.py` and commit the result. (If the .proto files did "
            f"not change, the difference comes from the installed grpcio-tools "
            f"{tools_version} differing from the version the committed files were made with.)"
        )


def test_generator_is_deterministic(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (grpc_tools) is not installed; cannot regenerate protos")
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        subprocess.run([sys.executable, str(GEN_SCRIPT), str(out)], check=True, capture_output=True)
        outs.append(_listing(out))
    assert outs[0] == outs[1]


# --------------------------------------------------------------------------
# private pool
# --------------------------------------------------------------------------


def test_type_stubs_import_the_private_package():
    """The .pyi files name tritium._proto's modules, as the rewritten .py files do."""
    stub = (COMMITTED_DIR / "grpc_service_pb2.pyi").read_text(encoding="utf-8")
    assert "from tritium._proto import model_config_pb2 as _model_config_pb2" in stub
    assert "\nimport model_config_pb2" not in stub
    assert "class ModelInferRequest(_message.Message):" in stub


def test_descriptors_live_in_private_pool():
    assert POOL is not descriptor_pool.Default()
    for module in (model_config_pb2, grpc_service_pb2, health_pb2):
        assert module.DESCRIPTOR.pool is POOL
    assert POOL.FindMessageTypeByName("inference.ModelConfig") is model_config_pb2.ModelConfig.DESCRIPTOR


@pytest.mark.parametrize("impl", ["upb", "python"])
def test_default_pool_untouched_next_to_tritonclient(impl):
    """Both import orders, both protobuf implementations: no clash, no takeover."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    code = """
import sys
from google.protobuf import descriptor_pool
if sys.argv[1] == "tritium-first":
    from tritium._proto import grpc_service_pb2, model_config_pb2
    from tritonclient.grpc import service_pb2, model_config_pb2 as t_mc
else:
    from tritonclient.grpc import service_pb2, model_config_pb2 as t_mc
    from tritium._proto import grpc_service_pb2, model_config_pb2
d = descriptor_pool.Default()
assert d.FindMessageTypeByName("inference.ModelConfig") is t_mc.ModelConfig.DESCRIPTOR
assert d.FindMessageTypeByName("inference.ModelInferRequest") is service_pb2.ModelInferRequest.DESCRIPTOR
assert model_config_pb2.ModelConfig.DESCRIPTOR is not t_mc.ModelConfig.DESCRIPTOR
"""
    env = dict(os.environ)
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = impl
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for order in ("tritium-first", "tritonclient-first"):
        proc = subprocess.run(
            [sys.executable, "-W", "error::RuntimeWarning", "-c", code, order],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, f"{impl}/{order}:\n{proc.stderr}"


# --------------------------------------------------------------------------
# text format / JSON
# --------------------------------------------------------------------------


def test_config_text_format_and_json():
    cfg = text_format.Parse(
        'name: "m" max_batch_size: 8 input [{name: "x" data_type: TYPE_FP32 dims: [-1, 16]}] '
        "instance_group [{kind: KIND_CPU count: 2}] dynamic_batching { preferred_batch_size: [4] }",
        model_config_pb2.ModelConfig(),
    )
    assert cfg.input[0].dims == [-1, 16]
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert cfg.WhichOneof("scheduling_choice") == "dynamic_batching"
    as_json = json_format.MessageToDict(cfg)
    assert as_json["maxBatchSize"] == 8
    assert as_json["input"][0]["dataType"] == "TYPE_FP32"
    assert as_json["input"][0]["dims"] == ["-1", "16"]  # int64 -> JSON strings
    assert as_json["instanceGroup"][0]["kind"] == "KIND_CPU"
    assert json_format.MessageToJson(cfg)
    back = json_format.ParseDict(as_json, model_config_pb2.ModelConfig())
    assert back == cfg

    full = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())
    assert text_format.Parse(text_format.MessageToString(full), model_config_pb2.ModelConfig()) == full


# --------------------------------------------------------------------------
# (b) round trips against tritonclient's (i.e. Triton's) proto classes
# --------------------------------------------------------------------------


def test_model_config_round_trip_with_tritonclient():
    t_model_config, _ = _tritonclient_protos()
    ours = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())

    theirs = t_model_config.ModelConfig.FromString(ours.SerializeToString())
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(ours)
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    # Text format is the same language on both sides.
    assert text_format.Parse(CONFIG_PBTXT, t_model_config.ModelConfig()) == theirs

    again = model_config_pb2.ModelConfig.FromString(theirs.SerializeToString())
    assert again == ours


def test_model_infer_request_round_trip_with_tritonclient():
    _, t_service = _tritonclient_protos()
    req = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="1", id="42")
    req.parameters["sequence_id"].int64_param = 7
    req.parameters["sequence_start"].bool_param = True
    req.parameters["big"].uint64_param = 2**63 + 1
    inp = req.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    inp.parameters["binary_data_size"].int64_param = 8
    typed = req.inputs.add(name="s", datatype="BYTES", shape=[2])
    typed.contents.bytes_contents.extend([b"a", b"bc"])
    req.outputs.add(name="y").parameters["classification"].int64_param = 3
    req.raw_input_contents.append(b"\x00\x00\x80?\x00\x00\x00@")

    theirs = t_service.ModelInferRequest.FromString(req.SerializeToString())
    assert json_format.MessageToDict(theirs) == json_format.MessageToDict(req)
    assert theirs.parameters["big"].uint64_param == 2**63 + 1
    assert list(theirs.inputs[1].contents.bytes_contents) == [b"a", b"bc"]
    assert theirs.SerializeToString(deterministic=True) == req.SerializeToString(deterministic=True)

    # And back, for a response built by tritonclient's classes.
    t_resp = t_service.ModelInferResponse(model_name="m", id="42")
    t_resp.outputs.add(name="y", datatype="INT32", shape=[2]).contents.int_contents.extend([1, -2])
    t_resp.parameters["triton_final_response"].bool_param = True
    ours = grpc_service_pb2.ModelInferResponse.FromString(t_resp.SerializeToString())
    assert json_format.MessageToDict(ours) == json_format.MessageToDict(t_resp)


def _field_signature(desc, prefix=""):
    """Flatten a message descriptor into comparable (path, facts) rows."""
    rows = set()
    name = prefix + desc.name
    for f in desc.fields:
        rows.add(
            (
                f"{name}.{f.name}",
                f.number,
                f.type,
                f.is_repeated if hasattr(f, "is_repeated") else f.label,
                f.json_name,
                f.message_type.full_name if f.message_type else None,
                f.enum_type.full_name if f.enum_type else None,
                f.containing_oneof.name if f.containing_oneof else None,
            )
        )
    for enum in desc.enum_types:
        rows.add((f"{name}.{enum.name}", tuple((v.name, v.number) for v in enum.values)))
    for nested in desc.nested_types:
        rows |= _field_signature(nested, name + ".")
    return rows


def _file_signature(file_desc):
    rows = set()
    for msg in file_desc.message_types_by_name.values():
        rows |= _field_signature(msg)
    for enum in file_desc.enum_types_by_name.values():
        rows.add((enum.name, tuple((v.name, v.number) for v in enum.values)))
    for service in file_desc.services_by_name.values():
        for m in service.methods:
            rows.add(
                (
                    f"{service.full_name}/{m.name}",
                    m.input_type.full_name,
                    m.output_type.full_name,
                    m.client_streaming,
                    m.server_streaming,
                )
            )
    return rows


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("which", ["model_config", "grpc_service"])
def test_schema_matches_tritonclient(which):
    """Every message/field/enum/RPC of tritonclient's copy exists identically in ours."""
    t_model_config, t_service = _tritonclient_protos()
    ours, theirs = {
        "model_config": (model_config_pb2.DESCRIPTOR, t_model_config.DESCRIPTOR),
        "grpc_service": (grpc_service_pb2.DESCRIPTOR, t_service.DESCRIPTOR),
    }[which]
    ours_rows, theirs_rows = _file_signature(ours), _file_signature(theirs)
    missing = sorted(map(str, theirs_rows - ours_rows))
    assert not missing, "differs from tritonclient's protos:\n" + "\n".join(missing)
    # Anything extra on our side must be a newer Triton addition, not a typo.
    extra = sorted(map(str, ours_rows - theirs_rows))
    assert not extra, "not in tritonclient's protos:\n" + "\n".join(extra)


# --------------------------------------------------------------------------
# (c) service paths
# --------------------------------------------------------------------------


def test_service_paths():
    source = inspect.getsource(grpc_service_pb2_grpc)
    assert "'/inference.GRPCInferenceService/ModelInfer'" in source
    assert "'/inference.GRPCInferenceService/ModelStreamInfer'" in source
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    stream = service.methods_by_name["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert not any(
        m.client_streaming or m.server_streaming for m in service.methods if m.name != "ModelStreamInfer"
    )
    assert "'/grpc.health.v1.Health/Check'" in inspect.getsource(health_pb2_grpc)


def test_tritonclient_talks_to_generated_servicer():
    """A real gRPC round trip: tritonclient -> servicer built from our stubs."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] is not installed")
    from concurrent import futures

    import grpc
    import numpy as np
    import tritonclient.grpc as grpcclient

    class Servicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
        def ServerLive(self, request, context):
            return grpc_service_pb2.ServerLiveResponse(live=True)

        def ModelInfer(self, request, context):
            resp = grpc_service_pb2.ModelInferResponse(
                model_name=request.model_name, model_version="1", id=request.id
            )
            for tensor, raw in zip(request.inputs, request.raw_input_contents):
                out = resp.outputs.add(name="OUT_" + tensor.name, datatype=tensor.datatype)
                out.shape.extend(tensor.shape)
                resp.raw_output_contents.append(raw)
            return resp

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_live()
        data = np.arange(6, dtype=np.float32).reshape(2, 3)
        inp = grpcclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(data)
        result = client.infer("echo", [inp], request_id="r1")
        assert result.get_response().id == "r1"
        np.testing.assert_array_equal(result.as_numpy("OUT_x"), data)
        client.close()
    finally:
        server.stop(None)
