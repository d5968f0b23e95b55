"""Responses of the in-process API and the iterators that hand them out, sync and asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tritium.core.errors import TritiumError
from tritium.core.inference import InferenceResponse as CoreResponse

from ._tensor import Tensor, output_tensor

if TYPE_CHECKING:
    from ._model import Model
    from ._request import InferenceRequest
    from ._runtime import Call

#: What the loop delivers: (response, error, final).
_Item = tuple[CoreResponse | None, TritiumError | None, bool]


@dataclass
class InferenceResponse:
    """One response: its outputs (name -> :class:`Tensor`), parameters, an error if the request failed,
    and ``final``, set on the last response of a request."""

    model: Model
    request_id: str | None = None
    parameters: dict[str, str | int | bool] = field(default_factory=dict)
    outputs: dict[str, Tensor] = field(default_factory=dict)
    error: TritiumError | None = None
    classification_label: str | None = None
    final: bool = False

    @staticmethod
    def _from_item(model: Model, request: InferenceRequest, item: _Item) -> InferenceResponse:
        core, error, final = item
        result = InferenceResponse(model, request.request_id, final=final)
        if core is not None:
            if core.model_version != model.version:
                result.model = model._at_version(core.model_version)
            result.request_id = core.id
            result.parameters = dict(core.parameters)
            result.outputs = {t.name: output_tensor(t.datatype, t.data) for t in core.outputs}
        if error is not None:
            error.args += (result,)  # as Triton: the failed response rides on the error
            result.error = error
        return result


class _Responses:
    """What both iterators hold: the call's model and request, whether an error response raises, whether the
    final response was taken, the caller's own response queue, and the call (to cancel it)."""

    def __init__(self, model: Model, inference_request: InferenceRequest, raise_on_error: bool) -> None:
        self._model = model
        self._inference_request = inference_request
        self._raise_on_error = raise_on_error
        self._complete = False
        self._user_queue = inference_request.response_queue
        self._call: Call | None = None

    def _taken(self, response: InferenceResponse) -> InferenceResponse:
        """``response``, as the iterator hands it out (raised instead when it is an error and errors raise)."""
        self._complete = response.final
        if response.error is not None and self._raise_on_error:
            raise response.error
        return response

    def cancel(self) -> None:
        """Ask the model to stop; the iterator ends with a CANCELLED error response (unless already done)."""
        if self._call is not None:
            self._call.cancel()


class ResponseIterator(_Responses):
    """The responses of one ``Model.infer`` call, in order; the last one has ``final`` set."""

    def __init__(self, model: Model, inference_request: InferenceRequest, raise_on_error: bool) -> None:
        super().__init__(model, inference_request, raise_on_error)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def _deliver(self, core: CoreResponse | None, error: TritiumError | None, final: bool) -> None:
        """On the server's loop: hand over a response (converted now when the caller's queue wants it)."""
        if self._user_queue is None:
            self._queue.put((core, error, final))
            return
        response = InferenceResponse._from_item(self._model, self._inference_request, (core, error, final))
        self._queue.put(response)
        self._user_queue.put_nowait(response)

    def __iter__(self) -> ResponseIterator:
        return self

    def __next__(self) -> InferenceResponse:
        if self._complete:
            raise StopIteration
        got = self._queue.get()
        response = got if self._user_queue is not None else InferenceResponse._from_item(
            self._model, self._inference_request, got)
        return self._taken(response)


class AsyncResponseIterator(_Responses):
    """The responses of one ``Model.async_infer`` call, delivered on the caller's event loop."""

    def __init__(self, model: Model, inference_request: InferenceRequest, raise_on_error: bool,
                 loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(model, inference_request, raise_on_error)
        self._loop = loop
        self._queue: asyncio.Queue[InferenceResponse] = asyncio.Queue()

    def _deliver(self, core: CoreResponse | None, error: TritiumError | None, final: bool) -> None:
        """On the server's loop: pass the response to the caller's loop."""
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._arrived, (core, error, final))

    def _arrived(self, item: _Item) -> None:
        response = InferenceResponse._from_item(self._model, self._inference_request, item)
        self._queue.put_nowait(response)
        if self._user_queue is not None:
            self._user_queue.put_nowait(response)

    def __aiter__(self) -> AsyncResponseIterator:
        return self

    async def __anext__(self) -> InferenceResponse:
        if self._complete:
            raise StopAsyncIteration
        return self._taken(await self._queue.get())
