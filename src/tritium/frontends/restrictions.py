"""Triton's restricted APIs: ``--http-restricted-api`` and ``--grpc-restricted-protocol``.

Each flag names groups of endpoints (Triton's nine: health, metadata, inference, ...) and a header
that a request to one of them must carry with an exact value.  Frontends own authentication
(DESIGN.md): each turns the options into a table group -> (header, value) once, and checks a request
at its edge, before routing it.  A frontend with no restriction configured installs no check at all.

This module holds what both frontends share: the groups, the parsing of the flags (with Triton's
messages), and which group each HTTP route and gRPC RPC belongs to, mirroring Triton 2.51's
``http_server.cc`` dispatch and ``grpc_server.cc`` handlers.
"""

from __future__ import annotations

import functools
import re

HEALTH = "health"
METADATA = "metadata"
INFERENCE = "inference"
SHARED_MEMORY = "shared-memory"
MODEL_CONFIG = "model-config"
MODEL_REPOSITORY = "model-repository"
STATISTICS = "statistics"
TRACE = "trace"
LOGGING = "logging"

#: Triton's restricted categories, in its order (``restricted_features.h``).
GROUPS = (HEALTH, METADATA, INFERENCE, SHARED_MEMORY, MODEL_CONFIG, MODEL_REPOSITORY, STATISTICS, TRACE, LOGGING)

#: Triton prefixes the key of ``--grpc-restricted-protocol`` with this to name the gRPC metadata it checks.
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"

#: group -> (header or metadata key as configured, exact value expected).
Restrictions = dict[str, tuple[str, str]]


def parse_restriction(text: str, flag: str, into: Restrictions) -> None:
    """Add one ``<group>[,<group>...]:<key>=<value>`` to ``into``.

    As in Triton: the first ``:`` ends the groups and the first ``=`` after it ends the key (the value
    may hold both); no part may be empty; a group may be restricted once per flag kind, even by two
    uses of the flag.  Raises ValueError saying what is wrong, in Triton's words where they are clear
    (``flag`` is ``http-restricted-api`` or ``grpc-restricted-protocol``).
    """
    kind = "api" if flag.startswith("http") else "protocol"
    groups, colon, setting = text.partition(":")
    key, equals, value = setting.partition("=")
    if not (colon and equals and groups and key and value):
        raise ValueError(f"expected <{kind}>[,<{kind}>...]:<key>=<value>, none of them empty; got '{text}'")
    for group in groups.split(","):
        if group not in GROUPS:
            raise ValueError(f"unknown restricted {kind} '{group}' (allowed: {', '.join(GROUPS)})")
        if group in into:
            raise ValueError(f"restricted {kind} '{group}' can not be specified in multiple config groups")
        into[group] = (key, value)


def check_restrictions(restrictions: Restrictions, flag: str) -> None:
    """Refuse options built in code with a group or setting the flag could not have given."""
    for group, setting in restrictions.items():
        if group not in GROUPS:
            raise ValueError(f"--{flag}: unknown restricted group '{group}' (allowed: {', '.join(GROUPS)})")
        if len(setting) != 2 or not all(isinstance(part, str) and part for part in setting):
            raise ValueError(f"--{flag}: the restriction of '{group}' needs a non-empty header and value")


def refusal_message(header: str, grpc: bool = False) -> str:
    """What Triton answers a request that lacks the header or carries another value."""
    if grpc:
        return f"This protocol is restricted, expecting header '{header}'"
    return f"This API is restricted, expecting header '{header}'"


# -- HTTP: Triton's HTTPAPIServer::Handle, in its order ------------------------------------------------

_MODEL_URL = re.compile(
    r"/v2/models/[^/]+(/versions/[0-9]+)?(?:/(infer|generate|generate_stream|ready|config|stats|trace/setting))?")
_SERVER_URL = re.compile(r"/v2/health/(?:live|ready)")
_SHM_URL = re.compile(r"/v2/(?:system|cuda)sharedmemory(?:/region/[^/]+)?/(?:status|register|unregister)")
_REPOSITORY_URL = re.compile(r"/v2/repository(?:/[^/]+)?/(?:index|models/[^/]+/(?:load|unload))")
_MODEL_ACTION_GROUP = {
    None: METADATA, "ready": HEALTH, "infer": INFERENCE, "generate": INFERENCE, "generate_stream": INFERENCE,
    "config": MODEL_CONFIG, "stats": STATISTICS, "trace/setting": TRACE,
}


@functools.lru_cache(maxsize=4096)  # bounded: clients choose paths; per model and action it is a few
def http_group(path: str) -> str | None:
    """The group of an HTTP path, or None for one Triton answers 404 without checking anything."""
    if path == "/v2/models/stats":
        return STATISTICS
    if path == "/v2/logging":
        return LOGGING
    match = _MODEL_URL.fullmatch(path)
    if match is not None:
        version, action = match.groups()
        if action != "trace/setting" or version is None:  # a versioned trace path falls through to 404
            return _MODEL_ACTION_GROUP[action]
    if path == "/v2":
        return METADATA
    if _SERVER_URL.fullmatch(path):
        return HEALTH
    if _SHM_URL.fullmatch(path):
        return SHARED_MEMORY
    if _REPOSITORY_URL.fullmatch(path):
        return MODEL_REPOSITORY
    if path == "/v2/trace/setting":
        return TRACE
    return None


# -- gRPC: the group each handler of Triton's grpc_server.cc checks ----------------------------------

#: RPC name (in ``inference.GRPCInferenceService``, or ``Check`` of ``grpc.health.v1.Health``) -> group.
GRPC_GROUPS: dict[str, str] = {
    "ServerLive": HEALTH, "ServerReady": HEALTH, "ModelReady": HEALTH, "Check": HEALTH,
    "ServerMetadata": METADATA, "ModelMetadata": METADATA,
    "ModelInfer": INFERENCE, "ModelStreamInfer": INFERENCE,
    "ModelConfig": MODEL_CONFIG,
    "ModelStatistics": STATISTICS,
    "RepositoryIndex": MODEL_REPOSITORY, "RepositoryModelLoad": MODEL_REPOSITORY,
    "RepositoryModelUnload": MODEL_REPOSITORY,
    "SystemSharedMemoryStatus": SHARED_MEMORY, "SystemSharedMemoryRegister": SHARED_MEMORY,
    "SystemSharedMemoryUnregister": SHARED_MEMORY, "CudaSharedMemoryStatus": SHARED_MEMORY,
    "CudaSharedMemoryRegister": SHARED_MEMORY, "CudaSharedMemoryUnregister": SHARED_MEMORY,
    "TraceSetting": TRACE,
    "LogSettings": LOGGING,
}
