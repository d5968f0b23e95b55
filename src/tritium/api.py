"""The one API every frontend speaks to: :class:`InferenceAPI`.

The HTTP, gRPC and metrics frontends are typed against this protocol and never import
:mod:`tritium.server` (its one implementation) nor any backend, so a frontend can be read,
tested and replaced knowing only this page and :mod:`tritium.core`.  Protocol-neutral: names,
versions and plain dictionaries in, core objects out; each frontend keeps its wire format.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Protocol

from tritium.core.custom_metrics import CustomMetrics
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.response_cache import ResponseCache
from tritium.core.shm_regions import Region, SystemSharedMemory
from tritium.core.streaming import StreamItem
from tritium.trace import Trace


class InferenceAPI(Protocol):
    """What a frontend may ask of the server (Triton's core API, protocol-neutral)."""

    #: Regions clients registered; the codecs read inputs from and write outputs to them.
    system_shm: SystemSharedMemory
    #: Metric families model code defines (Python backend), shown by the metrics frontend.
    custom_metrics: CustomMetrics
    #: The response cache of ``--cache-config`` (``None`` without one); the metrics frontend reads its figures.
    response_cache: ResponseCache | None

    # -- health and server metadata --------------------------------------------------------------

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def metadata(self) -> dict[str, Any]: ...

    # -- models -----------------------------------------------------------------------------------

    def model(self, name: str, version: int = -1) -> Model:
        """The model that serves ``name`` (a decoder needs its inputs); raises when none is ready."""
        ...

    def loaded_models(self) -> list[Model]:
        """Every ready version of every model (the metrics frontend's scrape)."""
        ...

    def model_ready(self, name: str, version: int = -1) -> bool: ...

    def model_metadata(self, name: str, version: int = -1) -> dict[str, Any]: ...

    def model_config(self, name: str, version: int = -1) -> dict[str, Any]: ...

    def model_statistics(self, name: str = "", version: int = -1) -> dict[str, Any]: ...

    # -- inference --------------------------------------------------------------------------------

    def require_unary(self, model: Model, endpoint: str) -> None:
        """Refuse a decoupled ``model`` on an endpoint that answers once (``endpoint`` names it in the error)."""
        ...

    def start_trace(self, model: Model, request_id: str = "") -> Trace | None:
        """A trace for this request when the trace extension samples it, else ``None``."""
        ...

    def validate(self, request: InferenceRequest, model: Model) -> None: ...

    def infer(self, request: InferenceRequest, model: Model | None = None, trace: Trace | None = None,
              validated: bool = False) -> Awaitable[InferenceResponse]:
        """One request, one response; a failed request's ``trace`` is finished (written) here, a successful
        one by the frontend once the answer is sent."""
        ...

    def stream(self, request: InferenceRequest, model: Model,
               validated: bool = False) -> AsyncGenerator[StreamItem, None]:
        """The responses of one request as the model sends them (any model; decoupled ones send 0..n); close
        it (``aclose``) to cancel the request."""
        ...

    # -- the model repository extension -----------------------------------------------------------

    async def repository_index(self, ready_only: bool = False, repository: str = "") -> list[dict[str, str]]: ...

    async def load_model(self, name: str, parameters: dict[str, Any] | None = None, repository: str = "") -> None: ...

    async def unload_model(self, name: str, parameters: dict[str, Any] | None = None,
                           repository: str = "") -> None: ...

    # -- the logging and trace extensions ---------------------------------------------------------

    def log_settings(self, changes: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def trace_settings(self, model: str = "", changes: dict[str, Any] | None = None) -> dict[str, Any]: ...

    # -- the shared-memory extensions -------------------------------------------------------------

    def system_shm_status(self, name: str = "") -> list[Region]: ...

    def system_shm_register(self, name: str, key: str, offset: int, byte_size: int) -> None: ...

    def system_shm_unregister(self, name: str = "") -> None: ...

    def cuda_shm_status(self, name: str = "") -> list[Region]: ...

    def cuda_shm_register(self, name: str) -> None: ...


__all__ = ["InferenceAPI"]
