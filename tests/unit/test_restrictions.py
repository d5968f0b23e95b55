"""Which group each HTTP route and gRPC RPC belongs to (Triton 2.51's tables), and that an unrestricted
frontend installs no check at all."""

from __future__ import annotations

import pytest

from tritium._proto import grpc_service_pb2 as pb
from tritium.frontends.restrictions import GROUPS, GRPC_GROUPS, check_restrictions, http_group


@pytest.mark.parametrize("path, group", [
    ("/v2/health/live", "health"), ("/v2/health/ready", "health"),
    ("/v2/models/m/ready", "health"), ("/v2/models/m/versions/3/ready", "health"),
    ("/v2", "metadata"), ("/v2/models/m", "metadata"), ("/v2/models/m/versions/2", "metadata"),
    ("/v2/models/m/infer", "inference"), ("/v2/models/m/versions/1/infer", "inference"),
    ("/v2/models/m/generate", "inference"), ("/v2/models/m/generate_stream", "inference"),
    ("/v2/models/m/versions/1/generate_stream", "inference"),
    ("/v2/systemsharedmemory/status", "shared-memory"), ("/v2/systemsharedmemory/region/r/register", "shared-memory"),
    ("/v2/systemsharedmemory/unregister", "shared-memory"), ("/v2/cudasharedmemory/region/r/status", "shared-memory"),
    ("/v2/models/m/config", "model-config"), ("/v2/models/m/versions/1/config", "model-config"),
    ("/v2/repository/index", "model-repository"), ("/v2/repository/models/m/load", "model-repository"),
    ("/v2/repository/models/m/unload", "model-repository"), ("/v2/repository/r/index", "model-repository"),
    ("/v2/models/stats", "statistics"), ("/v2/models/m/stats", "statistics"),
    ("/v2/models/m/versions/1/stats", "statistics"),
    ("/v2/trace/setting", "trace"), ("/v2/models/m/trace/setting", "trace"),
    ("/v2/logging", "logging"),
    # Triton answers these 404 without checking any header
    ("/v2/models/m/versions/1/trace/setting", None), ("/v2/health", None), ("/v2/health/live/", None),
    ("/v2/models/m/bogus", None), ("/v2/models/m/versions/x", None), ("/v2/repository/models/m/delete", None),
    ("/v2/systemsharedmemory/register", "shared-memory"),  # matched by the route, refused later (404)
    ("/metrics", None), ("/", None), ("", None), ("/v2/", None), ("/v2/logging/", None),
])
def test_http_route_groups(path, group):
    assert http_group(path) == group


def test_every_grpc_rpc_has_a_group():
    """A new RPC cannot go unclassified (and so unchecked): every RPC of the service is in the table."""
    rpcs = {method.name for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert set(GRPC_GROUPS) == rpcs | {"Check"}
    assert set(GRPC_GROUPS.values()) == set(GROUPS)


def test_options_built_in_code_are_checked():
    check_restrictions({"health": ("k", "v")}, "http-restricted-api")
    for bad in ({"bogus": ("k", "v")}, {"health": ("", "v")}, {"health": ("k", "")}, {"health": ("k",)}):
        with pytest.raises(ValueError):
            check_restrictions(bad, "http-restricted-api")  # type: ignore[arg-type]


def test_no_check_is_installed_without_restrictions():
    """Zero cost when nothing is restricted: the HTTP API keeps its plain handle, gRPC its plain handlers."""
    from tritium.frontends.grpc.server import GrpcApi
    from tritium.frontends.http.routes import HttpApi

    plain, guarded = HttpApi(None, 1), HttpApi(None, 1, {"health": ("k", "v")})  # type: ignore[arg-type]
    assert "handle" not in vars(plain) and vars(guarded)["handle"] == guarded._restricted_handle

    def behaviours(api: GrpcApi) -> dict[str, object]:
        found = {}
        for generic in api.handlers():
            for name, handler in generic._method_handlers.items():  # type: ignore[attr-defined]
                found[name] = handler.unary_unary or handler.stream_stream
        return found

    plain_grpc = behaviours(GrpcApi(None))
    checked = behaviours(GrpcApi(None, {"health": ("k", "v"), "inference": ("k", "v")}))
    changed = {name.rsplit("/", 1)[1] for name in plain_grpc
               if getattr(checked[name], "__qualname__", "") != getattr(plain_grpc[name], "__qualname__", "")}
    assert changed == {"ServerLive", "ServerReady", "ModelReady", "Check", "ModelInfer", "ModelStreamInfer"}
