"""``tritium``: the command line, with ``tritonserver``'s flag names.

Flags accept ``--flag=value`` and ``--flag value``; booleans take
``true/false/1/0/on/off``.  A ``tritonserver`` flag whose feature tritium does
not have yet is refused with a message saying so, never silently ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
from collections.abc import Sequence

from tritium import __version__
from tritium.options import ServerOptions

#: tritonserver flags tritium knows but cannot honour yet, with the reason shown to the user.
UNSUPPORTED_FLAGS: dict[str, str] = {
    **{
        f: "the gRPC endpoint is not available in this version of tritium (use --allow-grpc=false)"
        for f in (
            "--grpc-port", "--grpc-address", "--reuse-grpc-port", "--grpc-header-forward-pattern",
            "--grpc-infer-thread-count", "--grpc-infer-allocation-pool-size", "--grpc-max-response-pool-size",
            "--grpc-use-ssl", "--grpc-use-ssl-mutual", "--grpc-server-cert", "--grpc-server-key",
            "--grpc-root-cert", "--grpc-infer-response-compression-level", "--grpc-keepalive-time",
            "--grpc-keepalive-timeout", "--grpc-keepalive-permit-without-calls",
            "--grpc-http2-max-pings-without-data", "--grpc-http2-min-recv-ping-interval-without-data",
            "--grpc-http2-max-ping-strikes", "--grpc-restricted-protocol",
        )
    },
    **{
        f: "the metrics endpoint is not available in this version of tritium (use --allow-metrics=false)"
        for f in (
            "--metrics-port", "--metrics-address", "--metrics-interval-ms", "--metrics-config",
            "--allow-gpu-metrics", "--allow-cpu-metrics",
        )
    },
    "--repository-poll-secs": "model control mode 'poll' is not available in this version of tritium",
    "--model-load-retry-count": "load retries are not available in this version of tritium",
    "--model-namespacing": "model namespacing is not available in this version of tritium",
    "--http-thread-count": "tritium serves HTTP on its event loop; there is no HTTP thread pool to size",
    "--http-header-forward-pattern": "header forwarding is not available in this version of tritium",
    "--http-restricted-api": "restricted APIs are not available in this version of tritium",
    "--log-info": "the logging extension is not available in this version of tritium",
    "--log-warning": "the logging extension is not available in this version of tritium",
    "--log-error": "the logging extension is not available in this version of tritium",
    "--log-format": "the logging extension is not available in this version of tritium",
    "--log-file": "the logging extension is not available in this version of tritium",
    "--trace-config": "tracing is not available in this version of tritium",
    "--trace-file": "tracing is not available in this version of tritium",
    "--trace-level": "tracing is not available in this version of tritium",
    "--trace-rate": "tracing is not available in this version of tritium",
    "--trace-count": "tracing is not available in this version of tritium",
    "--trace-log-frequency": "tracing is not available in this version of tritium",
    "--cache-config": "the response cache is not available in this version of tritium",
    "--cache-directory": "the response cache is not available in this version of tritium",
    "--response-cache-byte-size": "the response cache is not available in this version of tritium",
    "--rate-limit": "the rate limiter is not available in this version of tritium",
    "--rate-limit-resource": "the rate limiter is not available in this version of tritium",
    "--allow-sagemaker": "the SageMaker endpoint is not available in tritium",
    "--sagemaker-port": "the SageMaker endpoint is not available in tritium",
    "--allow-vertex-ai": "the Vertex AI endpoint is not available in tritium",
    "--vertex-ai-port": "the Vertex AI endpoint is not available in tritium",
    "--allow-client-shm": "the shared-memory extensions are not available in this version of tritium",
    "--pinned-memory-pool-byte-size": "tritium has no pinned memory pool",
    "--cuda-memory-pool-byte-size": "tritium has no CUDA memory pool",
    "--cuda-virtual-address-size": "tritium has no CUDA memory pool",
    "--min-supported-compute-capability": "GPU selection by compute capability is not available yet",
    "--buffer-manager-thread-count": "tritium has no buffer manager threads",
    "--host-policy": "host policies are not available in this version of tritium",
    "--model-load-gpu-limit": "GPU load limits are not available in this version of tritium",
    "--enable-peer-access": "GPU peer access settings are not available in this version of tritium",
    "--backend-directory": "tritium's backends are Python modules; there is no backend directory",
    "--repoagent-directory": "repository agents are not available in tritium",
}


#: Allocations between young-generation collections (CPython's default is 700); request objects are
#: freed by reference counting, so the collector mostly finds nothing and only costs latency.
GC_THRESHOLD = 20_000


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
                   metavar="PATH", help="model repository folder (repeatable)")
    p.add_argument("--model-control-mode", choices=["none", "explicit", "poll"], default="none")
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
    p.add_argument("--id", dest="server_id", default="triton")
    p.add_argument("--allow-http", type=_bool, default=True, metavar="BOOL")
    p.add_argument("--http-address", default="0.0.0.0")
    p.add_argument("--http-port", type=_port, default=8000)
    p.add_argument("--reuse-http-port", type=_bool, default=False, metavar="BOOL")
    p.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024)
    p.add_argument("--allow-grpc", type=_bool, default=False, metavar="BOOL",
                   help="gRPC is not available yet; only false is accepted")
    p.add_argument("--allow-metrics", type=_bool, default=False, metavar="BOOL",
                   help="metrics are not available yet; only false is accepted")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--backend-config", action="append", default=[], metavar="BACKEND,KEY=VALUE")
    return p


def _refuse_unsupported(argv: Sequence[str]) -> None:
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in UNSUPPORTED_FLAGS:
            raise SystemExit(f"tritium: {name} is not supported: {UNSUPPORTED_FLAGS[name]}")


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """Turn command-line flags into :class:`ServerOptions` (exits with a message on bad flags)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _refuse_unsupported(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.model_repositories:
        parser.error("at least one --model-repository is required")
    if args.allow_grpc:
        parser.error("--allow-grpc=true: the gRPC endpoint is not available in this version of tritium")
    if args.allow_metrics:
        parser.error("--allow-metrics=true: the metrics endpoint is not available in this version of tritium")
    if args.model_control_mode == "poll":
        parser.error("--model-control-mode=poll is not available in this version of tritium")
    if args.http_max_input_size <= 0:
        parser.error(f"--http-max-input-size must be a positive number of bytes, got {args.http_max_input_size}")
    if args.model_load_thread_count < 1:
        parser.error(f"--model-load-thread-count must be at least 1, got {args.model_load_thread_count}")
    if args.exit_timeout_secs < 0:
        parser.error(f"--exit-timeout-secs must be >= 0, got {args.exit_timeout_secs}")
    if args.load_models and args.model_control_mode != "explicit":
        parser.error("--load-model requires --model-control-mode=explicit")
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
        model_config_name=args.model_config_name,
        strict_model_config=args.strict_model_config or args.disable_auto_complete_config,
        exit_on_error=args.exit_on_error,
        strict_readiness=args.strict_readiness,
        exit_timeout_secs=args.exit_timeout_secs,
        model_load_thread_count=args.model_load_thread_count,
        server_id=args.server_id,
        allow_http=args.allow_http,
        http_address=args.http_address,
        http_port=args.http_port,
        reuse_http_port=args.reuse_http_port,
        http_max_input_size=args.http_max_input_size,
        allow_grpc=False,
        allow_metrics=False,
        log_verbose=args.log_verbose,
        backend_config=backend_config,
    )


class TritonLogFormatter(logging.Formatter):
    """Triton's default log line: ``I1122 03:43:00.123456 1234 file.py:12] message``."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        level = record.levelname[0] if record.levelname else "I"
        text = (
            f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
            f"{os.getpid()} {record.filename}:{record.lineno}] {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(verbose: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TritonLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose > 0 else logging.INFO)


async def _run(options: ServerOptions) -> int:
    from tritium.core.errors import TritiumError
    from tritium.server import Server, StartupError

    server = Server(options)
    try:
        await server.start()
    except (StartupError, TritiumError) as e:  # e.g. a model failed, or a repository cannot be read
        logging.getLogger("tritium").error("%s", e)
        await server.stop()
        return 1
    except OSError as e:  # e.g. the port is taken
        logging.getLogger("tritium").error("failed to start: %s", e)
        await server.stop()
        return 1
    # What start-up made (modules, configs, sessions) lives as long as the server: keep it out of the
    # collector's scans, and collect young objects less often, so pauses stay off request latency.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    await server.serve_forever()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    configure_logging(options.log_verbose)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_run(options))


if __name__ == "__main__":
    sys.exit(main())
