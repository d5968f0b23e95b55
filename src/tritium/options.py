"""Everything the server is configured with, built once (by the CLI or by code) and passed down."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServerOptions:
    """Server settings, named after ``tritonserver``'s flags."""

    model_repositories: list[str] = field(default_factory=list)
    model_control_mode: str = "none"  # none | explicit | poll
    #: Seconds between scans of the repositories in poll mode.
    repository_poll_secs: float = 15.0
    load_models: list[str] = field(default_factory=list)
    model_config_name: str = ""
    strict_model_config: bool = False  # True disables backend auto-complete
    exit_on_error: bool = True
    strict_readiness: bool = True
    exit_timeout_secs: int = 30
    model_load_thread_count: int = 4
    #: Where models of object-storage repositories are copied ("" for the system's temporary folder, or
    #: Triton's ``TRITON_AWS/GCS/AZURE_MOUNT_DIRECTORY``), and the bytes those copies may take in all.
    repository_cache_dir: str = ""
    repository_cache_size: int = 10 << 30
    server_id: str = "triton"
    #: ``--model-namespacing``: a model name may be in several repositories, each copy in its repository's
    #: namespace (a client addresses a name that is in one only; ensembles find their own repository's first).
    model_namespacing: bool = False
    #: ``--rate-limit`` (off | execution_count) and ``--rate-limit-resource`` items as (name, count, device;
    #: -1 for every device): see ``scheduler/rate_limiter.py``.
    rate_limit: str = "off"
    rate_limit_resources: list[tuple[str, int, int]] = field(default_factory=list)

    allow_http: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    http_max_input_size: int = 64 * 1024 * 1024
    reuse_http_port: bool = False
    #: Connection hardening (``--http-*-timeout-secs``, ``--http-max-connections``): a request head must
    #: arrive whole within ``header`` seconds, a body may pause at most ``body`` seconds between reads, a
    #: client that reads none of a response for ``send`` seconds is cut, an idle keep-alive connection is
    #: closed after ``idle`` seconds (a request being answered never is).  0 connections: derived from the
    #: descriptor limit (``frontends.limits``).
    http_header_timeout_secs: float = 60.0
    http_body_timeout_secs: float = 60.0
    http_send_timeout_secs: float = 60.0
    http_idle_timeout_secs: float = 75.0
    http_max_connections: int = 0
    #: ``--http-header-forward-pattern``: request headers whose names match (case-insensitive search) reach
    #: the model as string parameters, as Triton forwards them; "" forwards none.
    http_header_forward_pattern: str = ""

    #: ``--http-restricted-api <group>[,<group>...]:<header>=<value>`` (repeatable): group -> (header, value)
    #: that an HTTP request of that group must carry (Triton's groups, ``frontends.restrictions``); none by default.
    http_restricted_apis: dict[str, tuple[str, str]] = field(default_factory=dict)

    allow_grpc: bool = True
    #: ``--grpc-header-forward-pattern``: the same for gRPC metadata.
    grpc_header_forward_pattern: str = ""
    #: ``--grpc-restricted-protocol <group>[,...]:<key>=<value>`` (repeatable): group -> (key, value); a call
    #: must carry the metadata ``triton-grpc-protocol-<key>: <value>``, as in Triton.
    grpc_restricted_protocols: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: Clients may register system shared-memory regions (``--allow-client-shm``; off by default, as Triton
    #: since 26.04: a region is any file in /dev/shm the server can open, which a client then reads and writes
    #: through inference).
    allow_client_shm: bool = False
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    reuse_grpc_port: bool = False
    #: Largest request message accepted (tritium's flag; Triton's limit is INT32_MAX, as here).
    grpc_max_input_size: int = 2**31 - 1
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""
    grpc_infer_response_compression_level: str = "none"  # none | low | medium | high
    #: Keepalive settings in milliseconds, with tritonserver's defaults.
    grpc_keepalive_time: int = 7_200_000
    grpc_keepalive_timeout: int = 20_000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300_000
    grpc_http2_max_ping_strikes: int = 2
    grpc_max_connection_age: int | None = None
    grpc_max_connection_age_grace: int | None = None
    #: tritium's gRPC bounds: connections held (0: derived from the descriptor limit), streams per
    #: connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), RPCs in progress in all (more are refused with
    #: RESOURCE_EXHAUSTED), and ms after which a connection with no RPC is closed (GOAWAY; None: never).
    grpc_max_connections: int = 0
    grpc_max_concurrent_streams: int = 256
    grpc_max_concurrent_rpcs: int = 4096
    grpc_max_connection_idle: int | None = 300_000
    #: ``--grpc-transport``: ``native`` (tritium's own HTTP/2 server, ``frontends/grpc/native``: the same
    #: handlers at about a third of grpcio's CPU per call) or ``grpcio`` (grpc.aio).
    grpc_transport: str = "native"

    allow_metrics: bool = False
    allow_cpu_metrics: bool = True
    allow_gpu_metrics: bool = True
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    metrics_interval_ms: int = 2000
    #: ``--metrics-config counter_latencies=<bool>``: the cumulative *_duration_us counters.
    metrics_counter_latencies: bool = True
    #: ``--metrics-config summary_latencies=<bool>``: the *_summary_us metrics (per-request windows).
    metrics_summary_latencies: bool = False
    #: ``--metrics-config summary_quantiles=<q>:<error>,...``: the quantiles reported by the summaries.
    metrics_summary_quantiles: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)

    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"  # or "ISO8601"
    log_file: str = ""

    #: ``--trace-config [<mode>,]<setting>=<value>`` items in order (deprecated ``--trace-*`` flags become
    #: such items); parsed and checked by :class:`tritium.trace.TraceConfig`.
    trace_config: list[str] = field(default_factory=list)

    #: ``--backend-config <backend>,<key>=<value>``; backend ``*`` holds global settings.
    backend_config: dict[str, dict[str, str]] = field(default_factory=dict)
    #: ``--cache-config <cache>,<key>=<value>``: cache name -> settings (``local`` with ``size``, or ``redis``);
    #: empty: no response cache (models that enable one are served uncached, as Triton).
    cache_config: dict[str, dict[str, str]] = field(default_factory=dict)
    #: ``--backend-directory``: where Python-based backends (``<dir>/<name>/model.py``) are found.
    backend_directory: str | None = None

    # -- process tuning (hidden flags, for experts; the defaults are measured, see ARCHITECTURE.md) --
    #: ``--inline-execute-us``: an instance whose executions average under this runs them on the event loop
    #: instead of its worker thread (a thread hop costs more than so short a call); 0: always the thread.
    inline_execute_us: float = 150.0
    #: ``--switch-interval-us``: ``sys.setswitchinterval``, how long the event loop may keep the GIL from a
    #: waiting instance thread (CPython's default is 5000).
    switch_interval_us: float = 100.0
    #: ``--busy-poll-us``: after writing an answer the event loop polls its sockets this long before it sleeps,
    #: while requests lately followed answers that soon (``frontends/busy_poll.py``); 0: never.
    busy_poll_us: float = 200.0
    #: ``--event-loop``: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``.
    event_loop: str = "auto"
