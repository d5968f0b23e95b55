"""``tritium``: the command line, with ``tritonserver``'s flag names.

Flags accept ``--flag=value`` and ``--flag value``; booleans take
``true/false/1/0/on/off``.  A ``tritonserver`` flag whose feature tritium does
not have yet is refused with a message saying so, never silently ignored.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from tritium import __version__
from tritium.core.errors import STATUS_TEXT, TritiumError
from tritium.core.response_cache import check_cache_config, parse_cache_flags
from tritium.frontends.restrictions import GROUPS, parse_restriction
from tritium.logsettings import configure_logging
from tritium.options import ServerOptions
from tritium.scheduler.rate_limiter import parse_resource
from tritium.trace import TraceConfig, TraceManager

#: tritonserver flags tritium knows but cannot honour yet, with the reason shown to the user.
UNSUPPORTED_FLAGS: dict[str, str] = {
    "--grpc-infer-thread-count": "tritium serves gRPC on its event loop; there is no gRPC thread pool to size",
    "--grpc-infer-allocation-pool-size": "tritium's gRPC frontend keeps no pool of request/response objects",
    "--grpc-max-response-pool-size": "tritium's gRPC frontend keeps no pool of request/response objects",
    "--model-load-retry-count": "load retries are not available in this version of tritium",
    "--http-thread-count": "tritium serves HTTP on its event loop; there is no HTTP thread pool to size",
    "--allow-sagemaker": "the SageMaker endpoint is not available in tritium",
    "--sagemaker-port": "the SageMaker endpoint is not available in tritium",
    "--allow-vertex-ai": "the Vertex AI endpoint is not available in tritium",
    "--vertex-ai-port": "the Vertex AI endpoint is not available in tritium",
    "--pinned-memory-pool-byte-size": "tritium has no pinned memory pool",
    "--cuda-memory-pool-byte-size": "tritium has no CUDA memory pool",
    "--cuda-virtual-address-size": "tritium has no CUDA memory pool",
    "--min-supported-compute-capability": "GPU selection by compute capability is not available yet",
    "--buffer-manager-thread-count": "tritium has no buffer manager threads",
    "--host-policy": "host policies are not available in this version of tritium",
    "--model-load-gpu-limit": "GPU load limits are not available in this version of tritium",
    "--enable-peer-access": "GPU peer access settings are not available in this version of tritium",
    "--repoagent-directory": "repository agents are not available in tritium",
}


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "on", "yes"):
        return True
    if value in ("false", "0", "off", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got '{text}'")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got '{text}'") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tritium",
        description="Serve a Triton model repository over Triton's protocols.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"tritium {__version__}")
    p.add_argument("--model-repository", "--model-store", dest="model_repositories", action="append", default=[],
                   metavar="PATH", help="model repository: a folder, s3://[host:port/]bucket/path, gs://bucket/path "
                   "or as://account/container/path (repeatable)")
    p.add_argument("--repository-cache-dir", default="", metavar="PATH",
                   help="where models of object-storage repositories are copied (default: a temporary folder)")
    p.add_argument("--repository-cache-size", type=int, default=10240, metavar="MIB",
                   help="most MiB the copies of object-storage models may take together")
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default="none")
    p.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                   help="interval between scans of the repositories in poll mode")
    p.add_argument("--load-model", dest="load_models", action="append", default=[], metavar="NAME",
                   help="model to load at start in explicit mode (repeatable; '*' for all)")
    p.add_argument("--model-config-name", default="", help="use <model>/configs/<name>.pbtxt when present")
    p.add_argument("--strict-model-config", type=_bool, default=False, metavar="BOOL",
                   help="deprecated: true disables auto-complete")
    p.add_argument("--disable-auto-complete-config", action="store_true")
    p.add_argument("--exit-on-error", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--strict-readiness", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--exit-timeout-secs", type=int, default=30)
    p.add_argument("--model-load-thread-count", type=int, default=4)
    p.add_argument("--model-namespacing", type=_bool, default=False, metavar="BOOL",
                   help="true: a model name may be in several repositories, each copy loaded in its repository's "
                        "namespace (clients address names that are in one only; an ensemble's steps find its own "
                        "repository's copy); false (default): such a name is UNAVAILABLE and no copy loads")
    p.add_argument("--rate-limit", default="off", metavar="MODE",
                   help="'off' (default): run inference as soon as an instance is free; 'execution_count': an "
                        "instance runs once the resources its rate_limiter config lists are free, instances of "
                        "lower priority and fewer executions first")
    p.add_argument("--rate-limit-resource", action="append", default=[], metavar="<name>:<count>[:<device>]",
                   help="copies of a rate-limiter resource (repeatable; without <device>, on every device; "
                        "resources the configs call global ignore <device>); once any is given, resources not "
                        "listed have none. Default: the most any instance asks for")
    p.add_argument("--id", dest="server_id", default="triton")
    p.add_argument("--allow-http", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--http-address", default="0.0.0.0")
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--reuse-http-port", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--http-header-forward-pattern", default="", metavar="REGEX",
                   help="HTTP headers whose names match REGEX (case-insensitive) reach the model as request "
                        "parameters")
    p.add_argument("--http-restricted-api", action="append", default=[], metavar="APIS:KEY=VALUE",
                   help="HTTP requests of these APIs must carry header KEY with VALUE (repeatable; APIs: "
                        + ", ".join(GROUPS) + ")")
    p.add_argument("--allow-grpc", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--grpc-restricted-protocol", action="append", default=[],
                   metavar="PROTOCOLS:KEY=VALUE",
                   help="gRPC calls of these protocols must carry metadata triton-grpc-protocol-KEY with VALUE "
                        "(repeatable; same groups as --http-restricted-api)")
    p.add_argument("--allow-client-shm", type=_bool, default=False, metavar="BOOL",
                   help="let clients register system shared-memory regions (off by default, as in current Triton)")
    p.add_argument("--grpc-address", default="0.0.0.0")
    p.add_argument("--grpc-header-forward-pattern", default="", metavar="REGEX",
                   help="gRPC metadata whose keys match REGEX (case-insensitive) reach the model as request "
                        "parameters")
    p.add_argument("--grpc-port", type=_port, default=8001)
    p.add_argument("--reuse-grpc-port", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--grpc-max-input-size", type=int, default=2**31 - 1,
                   help="largest gRPC request message in bytes (tritium's flag; Triton's fixed limit by default)")
    p.add_argument("--grpc-use-ssl", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--grpc-use-ssl-mutual", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--grpc-server-cert", default="", metavar="PATH")
    p.add_argument("--grpc-server-key", default="", metavar="PATH")
    p.add_argument("--grpc-root-cert", default="", metavar="PATH")
    p.add_argument("--grpc-infer-response-compression-level", choices=["none", "low", "medium", "high"],
                   default="none")
    p.add_argument("--grpc-keepalive-time", type=int, default=7_200_000, metavar="MS")
    p.add_argument("--grpc-keepalive-timeout", type=int, default=20_000, metavar="MS")
    p.add_argument("--grpc-keepalive-permit-without-calls", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--grpc-http2-max-pings-without-data", type=int, default=2)
    p.add_argument("--grpc-http2-min-recv-ping-interval-without-data", type=int, default=300_000, metavar="MS")
    p.add_argument("--grpc-http2-max-ping-strikes", type=int, default=2)
    p.add_argument("--grpc-max-connection-age", type=int, default=None, metavar="MS")
    p.add_argument("--grpc-max-connection-age-grace", type=int, default=None, metavar="MS")
    p.add_argument("--allow-metrics", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--allow-cpu-metrics", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--allow-gpu-metrics", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--metrics-port", type=_port, default=8002)
    p.add_argument("--metrics-interval-ms", type=int, default=2000)
    p.add_argument("--metrics-config", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--log-verbose", type=int, default=0, help="verbose logging level (0 = off)")
    p.add_argument("--log-info", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--log-warning", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--log-error", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--log-format", choices=["default", "ISO8601"], default="default")
    p.add_argument("--log-file", default="", metavar="PATH", help="write the log to this file instead of stderr")
    p.add_argument("--backend-config", action="append", default=[], metavar="BACKEND,KEY=VALUE")
    p.add_argument("--backend-directory", default=None, metavar="DIR",
                   help="where Python-based backends are found: DIR/<backend name>/model.py")
    p.add_argument("--cache-config", action="append", default=[], metavar="CACHE,KEY=VALUE",
                   help="the response cache: local,size=<bytes> or redis,host=<host> with redis,port=<port> "
                        "(and user, password, db, connect_timeout, socket_timeout, pool_size, wait_timeout, cert, "
                        "key, cacert, cacert_dir); models enable it with response_cache { enable: true }")
    p.add_argument("--cache-directory", default=None, metavar="DIR",
                   help="accepted for tritonserver's command lines; tritium's caches are built in")
    p.add_argument("--response-cache-byte-size", default=None, metavar="BYTES",
                   help="deprecated: --cache-config=local,size=BYTES")
    p.add_argument("--trace-config", action="append", default=[], metavar="[MODE,]SETTING=VALUE",
                   help="trace setting: level, rate, count, mode; triton,file / triton,log-frequency; "
                        "opentelemetry,url / resource / bsp_*")
    # Deprecated spellings of --trace-config, still accepted as tritonserver does.
    p.add_argument("--trace-file", default=None, help="deprecated: --trace-config triton,file=PATH")
    p.add_argument("--trace-level", action="append", default=[], help="deprecated: --trace-config level=LEVEL")
    p.add_argument("--trace-rate", default=None, help="deprecated: --trace-config rate=N")
    p.add_argument("--trace-count", default=None, help="deprecated: --trace-config count=N")
    p.add_argument("--trace-log-frequency", default=None, help="deprecated: --trace-config triton,log-frequency=N")
    _connection_flags(p)
    # Process tuning for experts (hidden): the defaults are measured (ARCHITECTURE.md, decisions).
    p.add_argument("--inline-execute-us", type=_non_negative, default=150.0, help=argparse.SUPPRESS)
    p.add_argument("--switch-interval-us", type=_positive, default=100.0, help=argparse.SUPPRESS)
    p.add_argument("--busy-poll-us", type=_non_negative, default=200.0, help=argparse.SUPPRESS)
    p.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="auto", help=argparse.SUPPRESS)
    return p


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got '{text}'")
    return value


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive number, got 0")
    return value


def _connection_flags(p: argparse.ArgumentParser) -> None:
    """tritium's bounds on what one client may hold (connections, time, streams); see ServerOptions."""
    o = ServerOptions
    p.add_argument("--http-header-timeout-secs", type=float, default=o.http_header_timeout_secs, metavar="S",
                   help="a request line and headers must arrive whole within S seconds (else 408, closed)")
    p.add_argument("--http-body-timeout-secs", type=float, default=o.http_body_timeout_secs, metavar="S",
                   help="a request body may stop arriving for at most S seconds (else 408, closed)")
    p.add_argument("--http-send-timeout-secs", type=float, default=o.http_send_timeout_secs, metavar="S",
                   help="a client that reads none of a response for S seconds is disconnected")
    p.add_argument("--http-idle-timeout-secs", type=float, default=o.http_idle_timeout_secs, metavar="S",
                   help="an idle keep-alive connection is closed after S seconds")
    p.add_argument("--http-max-connections", type=int, default=0, metavar="N",
                   help="HTTP connections held at most (0: from the descriptor limit); at the limit the "
                        "longest-idle one is closed to admit a new one")
    p.add_argument("--grpc-max-connections", type=int, default=0, metavar="N",
                   help="gRPC connections held at most (0: from the descriptor limit)")
    p.add_argument("--grpc-max-concurrent-streams", type=int, default=o.grpc_max_concurrent_streams, metavar="N",
                   help="concurrent RPCs (HTTP/2 streams) per gRPC connection")
    p.add_argument("--grpc-max-concurrent-rpcs", type=int, default=o.grpc_max_concurrent_rpcs, metavar="N",
                   help="gRPC RPCs in progress in all; more are refused with RESOURCE_EXHAUSTED")
    p.add_argument("--grpc-transport", choices=["grpcio", "native"], default=o.grpc_transport,
                   help="the gRPC server: native (tritium's own HTTP/2 server, the default: about a third of "
                        "grpcio's CPU per call) or grpcio (grpc.aio)")
    p.add_argument("--grpc-max-connection-idle", type=int, default=o.grpc_max_connection_idle, metavar="MS",
                   help="close a gRPC connection without RPCs for MS ms (0: never)")


def _connection_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The values of :func:`_connection_flags`, checked."""
    values = {name: getattr(args, name) for name in (
        "http_header_timeout_secs", "http_body_timeout_secs", "http_send_timeout_secs", "http_idle_timeout_secs",
        "http_max_connections", "grpc_max_connections", "grpc_max_concurrent_streams", "grpc_max_concurrent_rpcs",
        "grpc_max_connection_idle", "grpc_transport")}
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if name.endswith("_secs") and not (0 < value < 1e6):
            parser.error(f"{flag} must be a positive number of seconds, got {value}")
        if name in ("grpc_max_concurrent_streams", "grpc_max_concurrent_rpcs") and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
        if name in ("http_max_connections", "grpc_max_connections", "grpc_max_connection_idle") and value < 0:
            parser.error(f"{flag} must be >= 0, got {value}")
    values["grpc_max_connection_idle"] = values["grpc_max_connection_idle"] or None
    return values


def _refuse_unsupported(argv: Sequence[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED_FLAGS:
            raise SystemExit(f"tritium: {name} is not supported: {UNSUPPORTED_FLAGS[name]}")


def _check_grpc(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """TLS needs readable certificate files; sizes and intervals must make sense."""
    if args.grpc_max_input_size <= 0:
        parser.error(f"--grpc-max-input-size must be a positive number of bytes, got {args.grpc_max_input_size}")
    for flag in ("grpc_keepalive_time", "grpc_keepalive_timeout", "grpc_http2_max_pings_without_data",
                 "grpc_http2_min_recv_ping_interval_without_data", "grpc_http2_max_ping_strikes",
                 "grpc_max_connection_age", "grpc_max_connection_age_grace"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            parser.error(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    if not (args.grpc_use_ssl or args.grpc_use_ssl_mutual):
        return
    needed = [("--grpc-server-cert", args.grpc_server_cert), ("--grpc-server-key", args.grpc_server_key)]
    if args.grpc_use_ssl_mutual:
        needed.append(("--grpc-root-cert", args.grpc_root_cert))
    for flag, path in needed:
        if not path:
            parser.error(f"{flag} is required with --grpc-use-ssl{'-mutual' if args.grpc_use_ssl_mutual else ''}")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            parser.error(f"{flag}: cannot read '{path}'")


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """Turn command-line flags into :class:`ServerOptions` (exits with a message on bad flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _refuse_unsupported(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.model_repositories:
        parser.error("at least one --model-repository is required")
    _check_grpc(parser, args)
    if args.metrics_interval_ms <= 0:
        parser.error(f"--metrics-interval-ms must be positive, got {args.metrics_interval_ms}")
    counter_latencies, summary_latencies, quantiles = _metrics_config(parser, args.metrics_config)
    if args.repository_poll_secs <= 0:
        parser.error(f"--repository-poll-secs must be a positive number of seconds, got {args.repository_poll_secs}")
    if args.http_max_input_size <= 0:
        parser.error(f"--http-max-input-size must be a positive number of bytes, got {args.http_max_input_size}")
    if args.repository_cache_size <= 0:
        parser.error(f"--repository-cache-size must be a positive number of MiB, got {args.repository_cache_size}")
    if args.model_load_thread_count < 1:
        parser.error(f"--model-load-thread-count must be at least 1, got {args.model_load_thread_count}")
    if args.exit_timeout_secs < 0:
        parser.error(f"--exit-timeout-secs must be >= 0, got {args.exit_timeout_secs}")
    if args.load_models and args.model_control_mode != "explicit":
        parser.error("--load-model requires --model-control-mode=explicit")
    cache_config = _cache_config(parser, args)
    restricted = _restrictions(parser, args)
    rate_limit, rate_limit_resources = _rate_limit(parser, args)
    for flag in ("http_header_forward_pattern", "grpc_header_forward_pattern"):
        try:
            re.compile(getattr(args, flag))
        except re.error as e:
            parser.error(f"--{flag.replace('_', '-')}: not a regular expression: {e}")
    trace_config = _trace_items(args)
    try:
        TraceManager(TraceConfig.parse(trace_config))
    except TritiumError as e:
        parser.error(f"--trace-config: {e}")
    backend_config: dict[str, dict[str, str]] = {}
    for item in args.backend_config:
        backend, _, setting = item.partition(",")
        if not setting:
            backend, setting = "*", item
        key, sep, value = setting.partition("=")
        if not sep or not key:
            parser.error(f"--backend-config expects <backend>,<key>=<value>, got '{item}'")
        backend_config.setdefault(backend, {})[key] = value
    return ServerOptions(
        model_repositories=args.model_repositories,
        model_control_mode=args.model_control_mode,
        load_models=args.load_models,
        repository_poll_secs=args.repository_poll_secs,
        model_config_name=args.model_config_name,
        strict_model_config=args.strict_model_config or args.disable_auto_complete_config,
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        exit_timeout_secs=args.exit_timeout_secs,
        model_load_thread_count=args.model_load_thread_count,
        repository_cache_dir=args.repository_cache_dir,
        repository_cache_size=args.repository_cache_size << 20,
        server_id=args.server_id,
        model_namespacing=args.model_namespacing,
        rate_limit=rate_limit,
        rate_limit_resources=rate_limit_resources,
        http_header_forward_pattern=args.http_header_forward_pattern,
        grpc_header_forward_pattern=args.grpc_header_forward_pattern,
        allow_http=args.allow_http,
        http_address=args.http_address,
        http_port=args.http_port,
        reuse_http_port=args.reuse_http_port,
        http_restricted_apis=restricted["http-restricted-api"],
        http_max_input_size=args.http_max_input_size,
        allow_grpc=args.allow_grpc,
        allow_client_shm=args.allow_client_shm,
        grpc_restricted_protocols=restricted["grpc-restricted-protocol"],
        grpc_address=args.grpc_address,
        grpc_port=args.grpc_port,
        reuse_grpc_port=args.reuse_grpc_port,
        grpc_max_input_size=args.grpc_max_input_size,
        grpc_use_ssl=args.grpc_use_ssl,
        grpc_use_ssl_mutual=args.grpc_use_ssl_mutual,
        grpc_server_cert=args.grpc_server_cert,
        grpc_server_key=args.grpc_server_key,
        grpc_root_cert=args.grpc_root_cert,
        grpc_infer_response_compression_level=args.grpc_infer_response_compression_level,
        grpc_keepalive_time=args.grpc_keepalive_time,
        grpc_keepalive_timeout=args.grpc_keepalive_timeout,
        grpc_keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
        grpc_http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
        grpc_http2_min_recv_ping_interval_without_data=args.grpc_http2_min_recv_ping_interval_without_data,
        grpc_http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
        grpc_max_connection_age=args.grpc_max_connection_age,
        grpc_max_connection_age_grace=args.grpc_max_connection_age_grace,
        allow_metrics=args.allow_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        allow_gpu_metrics=args.allow_gpu_metrics,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
        metrics_interval_ms=args.metrics_interval_ms,
        metrics_counter_latencies=counter_latencies,
        metrics_summary_latencies=summary_latencies,
        metrics_summary_quantiles=quantiles,
        log_verbose=args.log_verbose,
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
        log_format=args.log_format,
        log_file=args.log_file,
        backend_config=backend_config,
        backend_directory=args.backend_directory,
        cache_config=cache_config,
        trace_config=trace_config,
        inline_execute_us=args.inline_execute_us,
        switch_interval_us=args.switch_interval_us,
        busy_poll_us=args.busy_poll_us,
        event_loop=args.event_loop,
        **_connection_options(parser, args),
    )


def _metrics_config(parser: argparse.ArgumentParser, items: list[str]) -> tuple[bool, bool, tuple[float, ...]]:
    """``--metrics-config`` items: counter latencies, summary latencies, summary quantiles."""
    counter_latencies = True
    summary_latencies = False
    quantiles: tuple[float, ...] = ServerOptions.metrics_summary_quantiles
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--metrics-config expects <key>=<value>, got '{item}'")
        if key in ("counter_latencies", "summary_latencies"):
            try:
                flag = _bool(value)
            except argparse.ArgumentTypeError as e:
                parser.error(f"--metrics-config {item}: {e}")
            if key == "counter_latencies":
                counter_latencies = flag
            else:
                summary_latencies = flag
        elif key == "summary_quantiles":
            try:
                quantiles = tuple(float(pair.split(":")[0]) for pair in value.split(",") if pair)
            except ValueError:
                parser.error(f"--metrics-config summary_quantiles expects <quantile>:<error>,..., got '{value}'")
            if not quantiles or not all(0 < q < 1 for q in quantiles):
                parser.error(f"--metrics-config summary_quantiles must lie between 0 and 1, got '{value}'")
        elif key == "histogram_latencies":
            parser.error(f"--metrics-config {key}: latency histograms are not available in this version of tritium")
        else:
            parser.error(f"--metrics-config: unknown setting '{key}'")
    return counter_latencies, summary_latencies, quantiles


def _cache_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, str]]:
    """``--cache-config`` items (and the deprecated ``--response-cache-byte-size``), checked as Triton checks them
    when it creates the cache, in its words; a Redis cache is reached only when the server starts."""
    items = list(args.cache_config)
    if args.response_cache_byte_size is not None:
        print("Warning: '--response-cache-byte-size' has been deprecated! This will default to the 'local' cache "
              "implementation with the provided byte size for its config. Please use '--cache-config' instead. The "
              "equivalent --cache-config CLI args would be: "
              f"'--cache-config=local,size={args.response_cache_byte_size}'", file=sys.stderr)
        items.insert(0, f"local,size={args.response_cache_byte_size}")
    try:
        config = parse_cache_flags(items)
    except ValueError as e:
        parser.error(f"--cache-config: {e}")
    try:
        check_cache_config(config)
    except TritiumError as e:
        parser.error(f"creating server: {STATUS_TEXT[e.status]} - {e.message}")
    return config


def _rate_limit(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[str, list[tuple[str, int, int]]]:
    """``--rate-limit`` (case-insensitive, as Triton) and ``--rate-limit-resource`` items, with Triton's messages."""
    mode = args.rate_limit.lower()
    if mode not in ("off", "execution_count"):
        parser.error("invalid argument for --rate-limit")
    resources = []
    for item in args.rate_limit_resource:
        try:
            resources.append(parse_resource(item))
        except ValueError as e:
            parser.error(str(e))
    return mode, resources


def _restrictions(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, dict[str, tuple[str, str]]]:
    """``--http-restricted-api`` / ``--grpc-restricted-protocol``: flag -> group -> (key, value)."""
    restricted: dict[str, dict[str, tuple[str, str]]] = {"http-restricted-api": {}, "grpc-restricted-protocol": {}}
    for group_flag, items in (("http-restricted-api", args.http_restricted_api),
                              ("grpc-restricted-protocol", args.grpc_restricted_protocol)):
        for item in items:
            try:
                parse_restriction(item, group_flag, restricted[group_flag])
            except ValueError as e:
                parser.error(f"--{group_flag}: {e}")
    return restricted


def _trace_items(args: argparse.Namespace) -> list[str]:
    """The deprecated ``--trace-*`` flags as ``--trace-config`` items, before the explicit ones."""
    items = [f"triton,file={args.trace_file}"] if args.trace_file is not None else []
    items += [f"level={level}" for level in args.trace_level]
    if args.trace_rate is not None:
        items.append(f"rate={args.trace_rate}")
    if args.trace_count is not None:
        items.append(f"count={args.trace_count}")
    if args.trace_log_frequency is not None:
        items.append(f"triton,log-frequency={args.trace_log_frequency}")
    return items + args.trace_config


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        logs = configure_logging(options)
    except OSError as e:
        raise SystemExit(f"tritium: cannot open --log-file: {e}") from None
    from tritium.app import run

    return run(options, logs)


if __name__ == "__main__":
    sys.exit(main())
