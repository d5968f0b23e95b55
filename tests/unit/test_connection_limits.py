"""Connection bounds: their flags, their defaults from the descriptor limit, gRPC's channel arguments."""

from __future__ import annotations

import pytest

from tritium.cli import parse_args
from tritium.frontends import limits
from tritium.frontends.grpc.listener import server_options
from tritium.frontends.http.listener import HttpListener, metrics_limits
from tritium.frontends.http.server import ConnectionLimits

REPO = ["--model-repository=/models"]


def test_defaults_are_bounded_like_nginx():
    options = parse_args(REPO)
    assert (options.http_header_timeout_secs, options.http_body_timeout_secs, options.http_send_timeout_secs,
            options.http_idle_timeout_secs) == (60, 60, 60, 75)
    assert options.http_max_connections == 0 and options.grpc_max_connections == 0  # derived
    assert options.grpc_max_concurrent_streams == 256 and options.grpc_max_concurrent_rpcs == 4096
    assert options.grpc_max_connection_idle == 300_000


def test_flags_set_the_bounds():
    options = parse_args(REPO + ["--http-header-timeout-secs=5", "--http-body-timeout-secs=6",
                                 "--http-send-timeout-secs=7", "--http-idle-timeout-secs=0.5",
                                 "--http-max-connections=100", "--grpc-max-connections=50",
                                 "--grpc-max-concurrent-streams=8", "--grpc-max-concurrent-rpcs=9",
                                 "--grpc-max-connection-idle=0"])
    limits_ = ConnectionLimits.from_options(options, options.http_max_connections)
    assert limits_ == ConnectionLimits(5, 6, 7, 0.5, 100)
    assert options.grpc_max_connection_idle is None  # 0: never
    args = dict(server_options(options))
    assert args["grpc.max_concurrent_streams"] == 8
    assert args["grpc.max_allowed_incoming_connections"] == 50
    assert "grpc.max_connection_idle_ms" not in args


@pytest.mark.parametrize("flag, message", [
    ("--http-idle-timeout-secs=0", "--http-idle-timeout-secs must be a positive number of seconds"),
    ("--http-header-timeout-secs=-1", "--http-header-timeout-secs must be a positive number of seconds"),
    ("--http-max-connections=-5", "--http-max-connections must be >= 0"),
    ("--grpc-max-concurrent-streams=0", "--grpc-max-concurrent-streams must be at least 1"),
    ("--grpc-max-concurrent-rpcs=0", "--grpc-max-concurrent-rpcs must be at least 1"),
])
def test_bad_values_are_refused_naming_the_flag(capsys, flag, message):
    with pytest.raises(SystemExit):
        parse_args(REPO + [flag])
    assert message in capsys.readouterr().err


def test_derived_connection_limits_leave_a_reserve():
    for limit in (1024, 4096, 65536, 1 << 20):
        http, grpc = limits.default_http_connections(limit), limits.default_grpc_connections(limit)
        spare = limit - http - grpc - limits.METRICS_MAX_CONNECTIONS
        assert spare >= limits.reserve(limit) >= limits.MIN_RESERVE
        assert http >= grpc > 0
    assert limits.default_http_connections(1024) == 304


def test_listener_uses_the_flag_or_the_derived_limit():
    assert HttpListener(None, "127.0.0.1", 0, 1, "x", limits=ConnectionLimits(max_connections=7)).max_connections == 7
    derived = HttpListener(None, "127.0.0.1", 0, 1, "x").max_connections
    assert derived == limits.default_http_connections()
    assert metrics_limits(parse_args(REPO)).max_connections == limits.METRICS_MAX_CONNECTIONS
