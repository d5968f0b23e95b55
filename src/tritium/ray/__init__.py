"""Serving a Triton model repository on a Ray cluster, a whole tritium in every Ray Serve replica.

    from ray import serve
    from tritium.ray import build_app

    handle = serve.run(build_app("/models", num_replicas=2), route_prefix="/")
    result = handle.infer.remote("add_sub", {"INPUT0": a, "INPUT1": b}).result()

Needs the ``ray`` extra (``pip install tritium[ray]``).  See docs/ray.md.
"""

from __future__ import annotations

try:
    import ray.serve  # noqa: F401  (only to say what is missing, before the deployment module needs it)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("tritium.ray needs Ray Serve: pip install 'tritium[ray]'") from e

from tritium.embedded import EmbeddedServer
from tritium.ray.deployment import (
    REPLICA_HEADER,
    InferResult,
    TritiumDeployment,
    app_builder,
    build_app,
    server_options,
)

__all__ = [
    "REPLICA_HEADER",
    "EmbeddedServer",
    "InferResult",
    "TritiumDeployment",
    "app_builder",
    "build_app",
    "server_options",
]
