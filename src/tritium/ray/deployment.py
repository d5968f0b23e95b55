"""The Ray Serve deployment: a whole tritium in each replica, KServe v2 over Serve's HTTP proxy, and a Python
handle API.

Serve places the replicas (one CPU each by default, so they spread over nodes; ``max_replicas_per_node`` and
every other deployment option pass through), restarts them when they or their node die, and autoscales them
(``autoscaling_config``).  Inside a replica tritium batches as it does on its own (the model's
``dynamic_batching``): Serve routes requests, tritium joins them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tritium.core.errors import UnavailableError
from tritium.embedded import EmbeddedServer, outputs_of
from tritium.frontends.http.routes import HttpRequest
from tritium.options import ServerOptions

#: The response header (HTTP ingress) that names the replica that answered.
REPLICA_HEADER = "tritium-replica"


@dataclass(frozen=True)
class InferResult:
    """What :meth:`TritiumDeployment.infer` returns through a handle: the outputs as numpy arrays (BYTES as
    object arrays of ``bytes``) and which replica, on which node, computed them."""

    model_name: str
    model_version: str
    id: str
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    replica: str = ""
    node_id: str = ""


@serve.deployment(name="tritium", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class TritiumDeployment:
    """One replica: tritium serving ``options``' repository, with the KServe v2 HTTP API as its ingress
    (``__call__``) and handle methods for Python callers."""

    def __init__(self, options: ServerOptions) -> None:
        self._engine = EmbeddedServer(options, tune_process=True)  # the replica process is only this server
        self._engine.start()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node_id = ray.get_runtime_context().get_node_id()

    # -- HTTP: the KServe v2 protocol as tritium's own frontend speaks it ------------------------------------

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path") or ""
        if root and path.startswith(root):  # the application's route prefix
            path = path[len(root):] or "/"
        headers = {key.lower(): value for key, value in request.headers.items()}
        body = await request.body()
        answer = await self._engine.call(self._engine.handle_http(
            HttpRequest(request.method, path, headers, body), headers.get("accept-encoding")))
        response_headers = dict(answer.headers)
        response_headers[REPLICA_HEADER] = self.replica
        if answer.stream is not None:
            return StreamingResponse(self._stream(answer.body, answer.stream), answer.status, response_headers,
                                     answer.content_type)
        return Response(answer.body, answer.status, response_headers, answer.content_type)

    async def _stream(self, first: bytes, rest: Any) -> Any:
        if first:
            yield first
        async for piece in self._engine.relay(rest):
            yield piece

    # -- the handle API ----------------------------------------------------------------------------------------

    async def infer(self, model_name: str, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None,
                    parameters: Mapping[str, Any] | None = None, model_version: int = -1,
                    request_id: str = "") -> InferResult:
        """One inference: ``inputs`` are numpy arrays by name (str/bytes arrays become BYTES); ``outputs`` names
        the outputs wanted (all when ``None``).  Raises tritium's errors (``InvalidArgumentError``, ...)."""
        engine = self._engine
        response = await engine.call(
            engine.infer(model_name, inputs, outputs, parameters, model_version, request_id))
        return InferResult(response.model_name, str(response.model_version), response.id, outputs_of(response),
                           dict(response.parameters), self.replica, self.node_id)

    async def model_metadata(self, model_name: str, model_version: int = -1) -> dict[str, Any]:
        return await self._engine.call(_sync(self._engine.api.model_metadata, model_name, model_version))

    async def model_config(self, model_name: str, model_version: int = -1) -> dict[str, Any]:
        return await self._engine.call(_sync(self._engine.api.model_config, model_name, model_version))

    async def model_ready(self, model_name: str, model_version: int = -1) -> bool:
        return await self._engine.call(_sync(self._engine.api.model_ready, model_name, model_version))

    async def statistics(self, model_name: str = "", model_version: int = -1) -> dict[str, Any]:
        """This replica's statistics (Triton's statistics extension), with its replica id and node."""
        stats = await self._engine.call(_sync(self._engine.api.model_statistics, model_name, model_version))
        return {"replica": self.replica, "node_id": self.node_id, **stats}

    # -- Serve's lifecycle -------------------------------------------------------------------------------------

    async def check_health(self) -> None:
        """Serve restarts a replica whose tritium is not live and ready (its loop thread died, a model failed)."""
        if not self._engine.running():
            raise UnavailableError("tritium's event loop thread is not running")
        if not await self._engine.call(self._engine.ready()):
            raise UnavailableError("tritium is not ready")

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.stop()


async def _sync(function: Any, *args: Any) -> Any:
    return function(*args)


def server_options(model_repository: str | Sequence[str], server_args: Sequence[str] = (),
                   frontends: bool = False) -> ServerOptions:
    """``tritonserver``-style flags -> the options each replica starts tritium with, checked here (on the
    driver) so a bad flag fails the deployment at once, not every replica in a restart loop.  Unless
    ``frontends``, the replica opens no port of its own (HTTP, gRPC, metrics): Serve's proxy is the way in, and
    replicas sharing a node would fight over the ports."""
    from tritium.cli import parse_args

    repositories = [model_repository] if isinstance(model_repository, str) else list(model_repository)
    argv = [f"--model-repository={repo}" for repo in repositories] + list(server_args)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            options = parse_args(argv)
    except SystemExit as e:  # argparse's error (printed), or a flag tritium refuses (the exit's message)
        lines = stderr.getvalue().strip().splitlines()
        message = e.code if isinstance(e.code, str) else lines[-1] if lines else f"bad flags {argv}"
        raise ValueError(f"tritium server_args: {message}") from None
    if not frontends:
        options = replace(options, allow_http=False, allow_grpc=False, allow_metrics=False)
    return options


def build_app(model_repository: str | Sequence[str], *, server_args: Sequence[str] = (), name: str = "tritium",
              frontends: bool = False, **deployment_options: Any) -> serve.Application:
    """A Serve application that serves ``model_repository`` with tritium in every replica.

    ``server_args``: ``tritonserver`` flags for each replica's tritium (``--model-control-mode=explicit``,
    ``--load-model=...``, ``--log-verbose=1``...).  ``deployment_options`` go to Serve unchanged:
    ``num_replicas``, ``autoscaling_config``, ``ray_actor_options`` (default ``{"num_cpus": 1}``),
    ``max_replicas_per_node``, ``max_ongoing_requests``, health-check periods...
    """
    options = server_options(model_repository, server_args, frontends)
    deployment: Any = TritiumDeployment  # a Serve Deployment (typed as the class where Ray is not installed)
    return deployment.options(name=name, **deployment_options).bind(options)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run tritium.ray:app_builder model_repository=/models num_replicas=2`` and Serve config files
    (``import_path: tritium.ray:app_builder`` with ``args``).  Keys: ``model_repository`` (required; a list or
    comma-separated), ``server_args`` (a list or one shell-quoted string), ``name``, and deployment options
    (``num_replicas``, ``max_replicas_per_node``, ``max_ongoing_requests``: integers; ``autoscaling_config``,
    ``ray_actor_options``: mappings or JSON text)."""
    args = dict(args)
    repository = args.pop("model_repository", None)
    if not repository:
        raise ValueError("tritium.ray.app_builder: 'model_repository' is required")
    repositories = repository.split(",") if isinstance(repository, str) else list(repository)
    server_args = args.pop("server_args", ())
    if isinstance(server_args, str):
        server_args = shlex.split(server_args)
    name = str(args.pop("name", "tritium"))
    options: dict[str, Any] = {}
    for key in ("num_replicas", "max_replicas_per_node", "max_ongoing_requests"):
        if key in args:
            options[key] = _integer(key, args.pop(key))
    for key in ("autoscaling_config", "ray_actor_options"):
        if key in args:
            options[key] = _mapping(key, args.pop(key))
    if args:
        raise ValueError(f"tritium.ray.app_builder: unknown argument(s) {', '.join(sorted(args))}")
    return build_app(repositories, server_args=list(server_args), name=name, **options)


def _integer(key: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"tritium.ray.app_builder: '{key}' must be an integer, got {value!r}") from None


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"tritium.ray.app_builder: '{key}' is not valid JSON: {e}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"tritium.ray.app_builder: '{key}' must be a mapping, got {type(value).__name__}")
    return dict(value)


__all__ = ["REPLICA_HEADER", "InferResult", "TritiumDeployment", "app_builder", "build_app", "server_options"]
