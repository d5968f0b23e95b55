"""The command line: tritonserver's flag names and spellings, refusals that name the flag."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tritium.cli import UNSUPPORTED_FLAGS, parse_args

REPO = ["--model-repository=/models"]


def refused(capsys, argv) -> str:
    """Parse ``argv`` expecting a refusal; return everything said about it."""
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    code = info.value.code
    assert code not in (0, None)
    return (code if isinstance(code, str) else "") + capsys.readouterr().err


# -- spellings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["--model-repository=/a", "--http-port=9000", "--exit-on-error=false", "--log-verbose=2", "--id=srv"],
    ["--model-repository", "/a", "--http-port", "9000", "--exit-on-error", "false",
     "--log-verbose", "2", "--id", "srv"],
    ["--model-store=/a", "--http-port", "9000", "--exit-on-error=false", "--log-verbose", "2", "--id=srv"],
    ["--model-store", "/a", "--http-port=9000", "--exit-on-error", "false", "--log-verbose=2", "--id", "srv"],
])
def test_equals_and_space_forms_agree(argv):
    options = parse_args(argv)
    assert options.model_repositories == ["/a"]
    assert options.http_port == 9000
    assert options.exit_on_error is False
    assert options.log_verbose == 2
    assert options.server_id == "srv"


def test_defaults():
    options = parse_args(REPO)
    assert options.http_port == 8000 and options.http_address == "0.0.0.0"
    assert options.exit_on_error is True and options.strict_readiness is True
    assert options.model_control_mode == "none"
    assert options.http_max_input_size == 64 * 1024 * 1024
    assert options.strict_model_config is False
    assert options.server_id == "triton"


def test_repeatable_model_repository_keeps_order():
    options = parse_args(["--model-repository=/a", "--model-store", "/b", "--model-repository", "/c"])
    assert options.model_repositories == ["/a", "/b", "/c"]


def test_repository_path_with_equals_sign():
    assert parse_args(["--model-repository=/data/a=b"]).model_repositories == ["/data/a=b"]


@pytest.mark.parametrize("text, value", [
    ("true", True), ("TRUE", True), ("1", True), ("on", True), ("yes", True),
    ("false", False), ("False", False), ("0", False), ("off", False), ("no", False),
])
def test_boolean_spellings(text, value):
    options = parse_args([*REPO, f"--strict-readiness={text}", "--exit-on-error", text])
    assert options.strict_readiness is value and options.exit_on_error is value


def test_auto_complete_switches():
    assert parse_args([*REPO, "--strict-model-config=true"]).strict_model_config is True
    assert parse_args([*REPO, "--disable-auto-complete-config"]).strict_model_config is True
    assert parse_args([*REPO, "--strict-model-config=false"]).strict_model_config is False


def test_explicit_mode_and_load_model():
    options = parse_args([*REPO, "--model-control-mode=explicit", "--load-model=a", "--load-model", "b"])
    assert options.model_control_mode == "explicit"
    assert options.load_models == ["a", "b"]


def test_backend_config():
    options = parse_args([*REPO, "--backend-config=onnxruntime,default-max-batch-size=8",
                          "--backend-config", "default-max-batch-size=2",
                          "--backend-config=python,shm-default-byte-size=1048576"])
    assert options.backend_config == {
        "onnxruntime": {"default-max-batch-size": "8"},
        "*": {"default-max-batch-size": "2"},
        "python": {"shm-default-byte-size": "1048576"},
    }


def test_disabled_endpoints_accept_false():
    options = parse_args([*REPO, "--allow-grpc=false", "--allow-metrics", "false", "--allow-http=true"])
    assert options.allow_grpc is False and options.allow_metrics is False and options.allow_http is True


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, flag", [
    (["--grpc-infer-thread-count", "4"], "--grpc-infer-thread-count"),
    (["--grpc-infer-allocation-pool-size=8"], "--grpc-infer-allocation-pool-size"),
    (["--metrics-config=histogram_latencies=true"], "histogram_latencies"),
    (["--model-load-retry-count", "2"], "--model-load-retry-count"),
    (["--pinned-memory-pool-byte-size=0"], "--pinned-memory-pool-byte-size"),
])
def test_unsupported_flags_name_the_flag(capsys, argv, flag):
    message = refused(capsys, [*REPO, *argv])
    assert flag in message
    assert "not supported" in message or "not available" in message


def test_every_unsupported_flag_is_refused(capsys):
    for flag in UNSUPPORTED_FLAGS:
        assert flag in refused(capsys, [*REPO, f"{flag}=1"])


@pytest.mark.parametrize("argv, needles", [
    (["--exit-on-error=maybe"], ["--exit-on-error", "maybe"]),
    (["--strict-readiness", "2"], ["--strict-readiness", "2"]),
    (["--allow-http="], ["--allow-http"]),
    (["--http-port=70000"], ["--http-port", "70000"]),
    (["--http-port", "-1"], ["--http-port"]),
    (["--http-port=http"], ["--http-port", "http"]),
    (["--log-verbose=loud"], ["--log-verbose", "loud"]),
    (["--http-max-input-size=64MB"], ["--http-max-input-size", "64MB"]),
    (["--model-control-mode=sometimes"], ["--model-control-mode", "sometimes"]),
    (["--no-such-flag=1"], ["--no-such-flag"]),
    (["--model-repo=/x"], ["--model-repo"]),  # no abbreviations
    (["--allow-grpc=perhaps"], ["--allow-grpc"]),
    (["--grpc-port=70000"], ["--grpc-port", "70000"]),
    (["--grpc-infer-response-compression-level=max"], ["--grpc-infer-response-compression-level", "max"]),
    (["--grpc-use-ssl=true"], ["--grpc-server-cert"]),
    (["--grpc-use-ssl=true", "--grpc-server-cert=/no/cert", "--grpc-server-key=/no/key"], ["/no/cert"]),
    (["--grpc-keepalive-time=-5"], ["--grpc-keepalive-time"]),
    (["--allow-metrics=maybe"], ["--allow-metrics"]),
    (["--metrics-interval-ms=0"], ["--metrics-interval-ms"]),
    (["--model-control-mode=poll", "--repository-poll-secs=0"], ["--repository-poll-secs", "0"]),
    (["--load-model=a"], ["--load-model", "explicit"]),
    (["--backend-config=onnxruntime,novalue"], ["--backend-config", "onnxruntime,novalue"]),
    (["--exit-on-error"], ["--exit-on-error"]),  # a value is required
])
def test_bad_values_are_refused_with_the_flag_named(capsys, argv, needles):
    message = refused(capsys, [*REPO, *argv])
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# -- restricted APIs --------------------------------------------------------------------------------


def test_restricted_apis_by_group():
    options = parse_args([*REPO, "--http-restricted-api=health:Probe-Key=p",
                          "--http-restricted-api", "metadata,model-repository:admin=v=1:2",
                          "--grpc-restricted-protocol=health,inference:k=v"])
    # the header keeps its spelling (messages name it so); the value may hold '=' and ':'
    assert options.http_restricted_apis == {"health": ("Probe-Key", "p"), "metadata": ("admin", "v=1:2"),
                                            "model-repository": ("admin", "v=1:2")}
    assert options.grpc_restricted_protocols == {"health": ("k", "v"), "inference": ("k", "v")}
    assert parse_args(REPO).http_restricted_apis == {} and parse_args(REPO).grpc_restricted_protocols == {}


def test_every_triton_group_is_accepted():
    groups = "health,metadata,inference,shared-memory,model-config,model-repository,statistics,trace,logging"
    options = parse_args([*REPO, f"--http-restricted-api={groups}:k=v", f"--grpc-restricted-protocol={groups}:k=v"])
    assert sorted(options.http_restricted_apis) == sorted(groups.split(","))
    assert options.grpc_restricted_protocols == options.http_restricted_apis


@pytest.mark.parametrize("flag", ["--http-restricted-api", "--grpc-restricted-protocol"])
@pytest.mark.parametrize("value, needles", [
    ("bogus:k=v", ["unknown restricted", "'bogus'", "health, metadata"]),
    ("Health:k=v", ["'Health'"]),  # group names are lower-case, as in Triton
    ("health,,metadata:k=v", ["unknown restricted", "''"]),
    ("health,:k=v", ["''"]),
    ("health", ["<key>=<value>", "'health'"]),
    ("health:k", ["<key>=<value>"]),
    ("health:k=", ["<key>=<value>"]),
    ("health:=v", ["<key>=<value>"]),
    (":k=v", ["<key>=<value>"]),
    ("health=k:v", ["<key>=<value>"]),
    ("health,health:k=v", ["'health' can not be specified in multiple config groups"]),
])
def test_bad_restrictions_are_refused(capsys, flag, value, needles):
    message = refused(capsys, [*REPO, f"{flag}={value}"])
    for needle in [flag, *needles]:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("flag", ["--http-restricted-api", "--grpc-restricted-protocol"])
def test_a_group_restricted_by_two_flags_is_refused(capsys, flag):
    message = refused(capsys, [*REPO, f"{flag}=health,trace:a=1", f"{flag}=logging,trace:b=2"])
    assert "'trace' can not be specified in multiple config groups" in message


def test_http_and_grpc_restrictions_are_independent():
    options = parse_args([*REPO, "--http-restricted-api=health:a=1", "--grpc-restricted-protocol=health:b=2"])
    assert options.http_restricted_apis == {"health": ("a", "1")}
    assert options.grpc_restricted_protocols == {"health": ("b", "2")}


def test_model_repository_is_required(capsys):
    assert "--model-repository" in refused(capsys, ["--http-port=9000"])


def test_process_exits_nonzero_naming_the_flag():
    """As users see it: the process exits non-zero before starting anything, naming the flag."""
    result = subprocess.run([sys.executable, "-m", "tritium", "--model-repository=/nonexistent", "--grpc-infer-thread-count", "4"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--grpc-infer-thread-count" in result.stderr
    result = subprocess.run([sys.executable, "-m", "tritium", "--model-repository=/nonexistent", "--http-port=x"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--http-port" in result.stderr


def test_cache_flags_become_the_cache_config(capsys):
    options = parse_args([*REPO, "--cache-config=redis,host=r", "--cache-config", "redis,port=6379",
                          "--cache-directory=/opt/tritonserver/caches"])
    assert options.cache_config == {"redis": {"host": "r", "port": "6379"}}
    options = parse_args([*REPO, "--response-cache-byte-size=4096"])
    assert options.cache_config == {"local": {"size": "4096"}}
    assert "'--response-cache-byte-size' has been deprecated" in capsys.readouterr().err
    assert parse_args(REPO).cache_config == {}


# -- issue 26: rate limiter, header forwarding, namespacing -----------------------------------------


def test_rate_limiter_flags():
    options = parse_args([*REPO, "--rate-limit=EXECUTION_COUNT", "--rate-limit-resource=R1:4",
                          "--rate-limit-resource", "R2:2:1", "--rate-limit-resource=:3"])
    assert options.rate_limit == "execution_count"
    assert options.rate_limit_resources == [("R1", 4, -1), ("R2", 2, 1), ("", 3, -1)]
    assert parse_args(REPO).rate_limit == "off"


@pytest.mark.parametrize("argv, message", [
    # Triton's own words (tritonserver 2.51 asked)
    (["--rate-limit=bogus"], "invalid argument for --rate-limit"),
    (["--rate-limit-resource=R1"], "--rate-limit-resource option format is '<resource_name>:<count>:<device>' "
                                   "or '<resource_name>:<count>'. Got R1"),
    (["--rate-limit-resource=a:1:2:3"], "option format is '<resource_name>:<count>:<device>' or "
                                        "'<resource_name>:<count>'. Got a:1:2:3"),
    (["--rate-limit-resource=R1:x"], "Invalid option value. Got x"),
    (["--rate-limit-resource=R1:2:x"], "Invalid option value. Got x"),
    (["--rate-limit-resource=R1:"], "Invalid option value. Got "),
    # Triton reads -1 as an unsigned count (unlimited): refused here
    (["--rate-limit-resource=R1:-1"], "count must be >= 0. Got R1:-1"),
    (["--http-header-forward-pattern=("], "--http-header-forward-pattern: not a regular expression"),
    (["--grpc-header-forward-pattern=a[b"], "--grpc-header-forward-pattern: not a regular expression"),
    (["--model-namespacing=maybe"], "--model-namespacing"),
])
def test_bad_issue_26_flags_are_refused_with_tritons_words(capsys, argv, message):
    assert message in refused(capsys, [*REPO, *argv])


def test_header_patterns_and_namespacing():
    options = parse_args([*REPO, "--http-header-forward-pattern=^x-", "--grpc-header-forward-pattern", "trace",
                          "--model-namespacing=true"])
    assert (options.http_header_forward_pattern, options.grpc_header_forward_pattern) == ("^x-", "trace")
    assert options.model_namespacing is True


def test_issue_26_flags_are_in_help():
    out = subprocess.run([sys.executable, "-m", "tritium", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--rate-limit ", "--rate-limit-resource", "--http-header-forward-pattern",
                 "--grpc-header-forward-pattern", "--model-namespacing"):
        assert flag in out


def test_grpc_transport():
    assert parse_args(REPO).grpc_transport == "native"
    assert parse_args([*REPO, "--grpc-transport=grpcio"]).grpc_transport == "grpcio"
    with pytest.raises(SystemExit):
        parse_args([*REPO, "--grpc-transport=h2"])
