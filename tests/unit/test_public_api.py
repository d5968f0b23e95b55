"""tritium's public surfaces, pinned: changing one is a decision, not a side effect of a refactor.

What is public, and why (``tritium.backends.__all__`` is pinned in test_backend_api.py):

* the ``tritium`` package itself: ``__version__`` and nothing else; everything else lives in submodules;
* the command line: the ``tritium`` console script, ``python -m tritium``, and the flags ``--help`` lists
  (Triton's spellings, which users' launch scripts pass; hidden expert flags are not pinned);
* embedding: ``tritium.server.__all__`` and the :class:`~tritium.options.ServerOptions` fields an embedder sets
  (adding a field with a default breaks no one, so only removals and renames fail here);
* what a backend's ``execute`` reads and builds: the fields of ``InferenceRequest``, ``InferenceResponse`` and
  ``Tensor`` in order (backends construct them positionally), ``DataType`` and ``Status`` members and the error
  classes' codes;
* ``triton_python_backend_utils`` (``pb_utils``) as Python-backend models import it: it mirrors Triton's module,
  so an extra name is as much a decision as a missing one.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
import tomllib
import types
from importlib import metadata

import tritium
import tritium.backends as backend_api
import tritium.server
from tritium.backends.python import pb_utils
from tritium.core import errors
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.options import ServerOptions

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CLI_FLAGS = {
    "--help", "--version",
    # model repository and lifecycle
    "--model-repository", "--model-store", "--model-control-mode", "--repository-poll-secs", "--repository-cache-dir",
    "--repository-cache-size", "--load-model",
    "--model-config-name", "--strict-model-config", "--disable-auto-complete-config", "--exit-on-error",
    "--strict-readiness", "--exit-timeout-secs", "--model-load-thread-count", "--id", "--model-namespacing",
    # rate limiter
    "--rate-limit", "--rate-limit-resource",
    # HTTP
    "--allow-http", "--http-address", "--http-port", "--reuse-http-port", "--http-max-input-size",
    "--http-restricted-api", "--http-header-timeout-secs", "--http-body-timeout-secs", "--http-send-timeout-secs",
    "--http-idle-timeout-secs", "--http-max-connections", "--http-header-forward-pattern",
    # gRPC
    "--allow-grpc", "--grpc-restricted-protocol", "--allow-client-shm", "--grpc-address", "--grpc-port",
    "--reuse-grpc-port", "--grpc-max-input-size", "--grpc-use-ssl", "--grpc-use-ssl-mutual", "--grpc-server-cert",
    "--grpc-server-key", "--grpc-root-cert", "--grpc-infer-response-compression-level", "--grpc-keepalive-time",
    "--grpc-keepalive-timeout", "--grpc-keepalive-permit-without-calls", "--grpc-http2-max-pings-without-data",
    "--grpc-http2-min-recv-ping-interval-without-data", "--grpc-http2-max-ping-strikes",
    "--grpc-max-connection-age", "--grpc-max-connection-age-grace", "--grpc-max-connections",
    "--grpc-max-concurrent-streams", "--grpc-max-concurrent-rpcs", "--grpc-max-connection-idle", "--grpc-transport",
    "--grpc-header-forward-pattern",
    # metrics
    "--allow-metrics", "--allow-cpu-metrics", "--allow-gpu-metrics", "--metrics-address", "--metrics-port",
    "--metrics-interval-ms", "--metrics-config",
    # logging
    "--log-verbose", "--log-info", "--log-warning", "--log-error", "--log-format", "--log-file",
    # backends
    "--backend-config", "--backend-directory",
    # the response cache (--response-cache-byte-size: Triton's deprecated spelling of local,size=)
    "--cache-config", "--cache-directory", "--response-cache-byte-size",
    # tracing (the last five are Triton's deprecated spellings, still accepted)
    "--trace-config", "--trace-file", "--trace-level", "--trace-rate", "--trace-count", "--trace-log-frequency",
}

SERVER_ALL = {"Server", "StartupError", "LocalInference", "TRITON_VERSION", "EXTENSIONS", "__version__"}

#: ServerOptions fields an embedder may set; each has a default.  Removing or renaming one breaks embedders.
SERVER_OPTIONS = {
    "model_repositories", "model_control_mode", "repository_poll_secs", "load_models", "model_config_name",
    "strict_model_config", "exit_on_error", "strict_readiness", "exit_timeout_secs", "model_load_thread_count",
    "server_id",
    "allow_http", "http_address", "http_port", "http_max_input_size", "reuse_http_port", "http_header_timeout_secs",
    "http_body_timeout_secs", "http_send_timeout_secs", "http_idle_timeout_secs", "http_max_connections",
    "http_restricted_apis",
    "allow_grpc", "grpc_restricted_protocols", "allow_client_shm", "grpc_address", "grpc_port", "reuse_grpc_port",
    "grpc_max_input_size", "grpc_use_ssl", "grpc_use_ssl_mutual", "grpc_server_cert", "grpc_server_key",
    "grpc_root_cert", "grpc_infer_response_compression_level", "grpc_keepalive_time", "grpc_keepalive_timeout",
    "grpc_keepalive_permit_without_calls", "grpc_http2_max_pings_without_data",
    "grpc_http2_min_recv_ping_interval_without_data", "grpc_http2_max_ping_strikes", "grpc_max_connection_age",
    "grpc_max_connection_age_grace", "grpc_max_connections", "grpc_max_concurrent_streams",
    "grpc_max_concurrent_rpcs", "grpc_max_connection_idle",
    "allow_metrics", "allow_cpu_metrics", "allow_gpu_metrics", "metrics_address", "metrics_port",
    "metrics_interval_ms", "metrics_counter_latencies", "metrics_summary_latencies", "metrics_summary_quantiles",
    "log_verbose", "log_info", "log_warning", "log_error", "log_format", "log_file",
    "trace_config", "backend_config", "backend_directory", "cache_config",
    "model_namespacing", "rate_limit", "rate_limit_resources", "http_header_forward_pattern",
    "grpc_header_forward_pattern",
}

REQUEST_FIELDS = [
    "model_name", "model_version", "id", "inputs", "requested_outputs", "parameters", "batch_size",
    "response_stream", "priority", "timeout_us", "queued_ns", "trace", "classification", "on_cancel",
    "rescheduled", "backend_state",
]
RESPONSE_FIELDS = ["model_name", "model_version", "id", "outputs", "parameters"]
TENSOR_FIELDS = ["name", "datatype", "data"]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64",
             "BYTES", "BF16"]
STATUSES = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS",
            "CANCELLED"]
ERROR_CODES = {
    "TritiumError": "UNKNOWN", "InvalidArgumentError": "INVALID_ARG", "ModelConfigError": "INVALID_ARG",
    "NotFoundError": "NOT_FOUND", "UnavailableError": "UNAVAILABLE", "UnsupportedError": "UNSUPPORTED",
    "AlreadyExistsError": "ALREADY_EXISTS", "CancelledError": "CANCELLED", "InternalError": "INTERNAL",
}

#: The names of Triton's triton_python_backend_utils that tritium's copy offers.
PB_UTILS = {
    "TRITONSERVER_REQUEST_FLAG_SEQUENCE_START", "TRITONSERVER_REQUEST_FLAG_SEQUENCE_END",
    "TRITONSERVER_RESPONSE_COMPLETE_FINAL", "TRITONSERVER_REQUEST_RELEASE_ALL",
    "TRITONSERVER_REQUEST_RELEASE_RESCHEDULE", "TRITONSERVER_MEMORY_CPU", "TRITONSERVER_MEMORY_CPU_PINNED",
    "TRITONSERVER_MEMORY_GPU", "TRITON_STRING_TO_NUMPY", "CODE_NAMES",
    "TritonError", "TritonModelException", "Tensor", "PreferredMemory", "InferenceTrace", "InferenceRequest",
    "InferenceResponse", "InferenceResponseSender", "ResponseIterator", "Logger", "MetricKind", "MetricFamily",
    "Metric", "ModelConfig",
    "load_model", "unload_model", "is_model_ready", "serialize_byte_tensor", "deserialize_bytes_tensor",
    "get_input_tensor_by_name", "get_output_tensor_by_name", "get_input_config_by_name", "get_output_config_by_name",
    "using_decoupled_model_transaction_policy", "triton_to_numpy_type", "numpy_to_triton_type",
    "triton_string_to_numpy",
}


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _run_tritium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tritium", *args], capture_output=True, text=True, timeout=120)


def test_top_level_package_offers_only_its_version() -> None:
    public = {name for name, value in vars(tritium).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert public == set()
    assert tritium.__version__ == _pyproject()["project"]["version"] == metadata.version("tritium")


def test_console_script_and_module_entry() -> None:
    assert _pyproject()["project"]["scripts"] == {"tritium": "tritium.cli:main"}
    (script,) = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "tritium"]
    assert callable(script.load())
    proc = _run_tritium("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"tritium {tritium.__version__}"


def test_cli_flags_listed_by_help_are_pinned() -> None:
    proc = _run_tritium("--help")
    assert proc.returncode == 0, proc.stderr
    # argparse indents each option line by two spaces: flags and metavars, then (after a gap) the help text.
    heads = [re.split(r"\s{2,}", line.strip())[0] for line in re.findall(r"^  -.*$", proc.stdout, re.MULTILINE)]
    flags = {flag for head in heads for flag in re.findall(r"--[a-z0-9-]+", head)}
    assert flags == CLI_FLAGS, (f"added: {sorted(flags - CLI_FLAGS)}; removed: {sorted(CLI_FLAGS - flags)}")


def test_embedding_api_is_pinned() -> None:
    assert set(tritium.server.__all__) == SERVER_ALL
    assert len(tritium.server.__all__) == len(SERVER_ALL)
    params = list(inspect.signature(tritium.server.Server).parameters)
    assert params[0] == "options"
    fields = {f.name: f for f in dataclasses.fields(ServerOptions)}
    missing = SERVER_OPTIONS - set(fields)
    assert not missing, f"ServerOptions lost fields embedders set: {sorted(missing)}"
    no_default = [name for name, f in fields.items()
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    assert no_default == [], "every ServerOptions field has a default, so ServerOptions() is a whole configuration"


def test_backend_facing_core_types_are_pinned() -> None:
    assert [f.name for f in dataclasses.fields(InferenceRequest)] == REQUEST_FIELDS
    assert [f.name for f in dataclasses.fields(InferenceResponse)] == RESPONSE_FIELDS
    assert [f.name for f in dataclasses.fields(Tensor)] == TENSOR_FIELDS
    assert callable(Tensor.from_numpy) and isinstance(Tensor.shape, property)
    assert [d.name for d in DataType] == DATATYPES
    assert [s.name for s in errors.Status] == STATUSES
    assert {name: getattr(errors, name).status.name for name in ERROR_CODES} == ERROR_CODES
    # The backend API re-exports these very objects (not copies).
    for name, value in [("InferenceRequest", InferenceRequest), ("InferenceResponse", InferenceResponse),
                        ("Tensor", Tensor), ("DataType", DataType), ("Status", errors.Status),
                        ("TritiumError", errors.TritiumError)]:
        assert getattr(backend_api, name) is value


def test_pb_utils_names_are_pinned() -> None:
    own = {name for name, value in vars(pb_utils).items()
           if not name.startswith("_") and not isinstance(value, types.ModuleType)
           and getattr(value, "__module__", pb_utils.__name__) == pb_utils.__name__}
    assert own == PB_UTILS, f"added: {sorted(own - PB_UTILS)}; removed: {sorted(PB_UTILS - own)}"
