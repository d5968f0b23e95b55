"""Protocol-neutral inference request and response.

Frontends decode their wire format into an :class:`InferenceRequest` and encode
the :class:`InferenceResponse` they get back; schedulers and backends only see
these objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .types import Tensor

if TYPE_CHECKING:
    from tritium.trace import Trace

    from .streaming import ResponseStream


@dataclass(slots=True)
class InferenceRequest:
    """One client request for one model.

    ``model_version`` is ``-1`` to let the version policy pick (latest ready).
    ``requested_outputs`` is ``None`` to ask for every output of the model.
    ``parameters`` holds request-level parameters as the client sent them.
    """

    model_name: str
    model_version: int = -1
    id: str = ""
    inputs: list[Tensor] = field(default_factory=list)
    requested_outputs: list[str] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    #: The size of the batch dimension; set by validation (1 for non-batching models).
    batch_size: int = 1
    #: Where a decoupled model sends its responses; set by :meth:`tritium.core.model.Model.stream`.
    response_stream: ResponseStream | None = None
    #: Request ``priority`` parameter (0 = the model's default level, 1 = highest); set by validation.
    priority: int = 0
    #: Request ``timeout`` parameter in microseconds (0 = none); set by validation.
    timeout_us: int = 0
    #: ``time.monotonic_ns()`` when the scheduler queued the request (for statistics).
    queued_ns: int = 0
    #: The trace of a sampled request (trace extension); ``None`` for every other request.
    trace: Trace | None = None
    #: Classification extension: output name -> top-K classes to return instead of the tensor.
    classification: dict[str, int] | None = None
    #: Set by a backend while it executes the request: tells the model that the client went away (Triton's
    #: ``request.is_cancelled()``); called on the loop by :class:`tritium.core.model.Model` when the caller's
    #: wait is cancelled (gRPC cancel or deadline, a BLS caller's cancel).  Decoupled requests use
    #: ``response_stream.on_cancel`` instead.
    on_cancel: Callable[[], None] | None = None
    #: Set by a backend when the model released the request with Triton's
    #: ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``: the sequence batcher of an ``iterative_sequence`` model runs
    #: it again in a later batch instead of answering it.
    rescheduled: bool = False
    #: What the backend executing the request keeps with it across reschedules (the Python backend: its key).
    backend_state: Any = None


@dataclass(slots=True)
class InferenceResponse:
    """The outputs of one request, in the order the client asked for them."""

    model_name: str
    model_version: int
    id: str = ""
    outputs: list[Tensor] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
