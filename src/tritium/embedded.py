"""tritium inside a program that has its own event loop, or none: :class:`EmbeddedServer`.

The server runs on an event loop of its own, in one daemon thread, so the host's loop (a Ray Serve replica's,
a notebook's) never runs tritium's schedulers and tritium never waits on the host: calls cross with
``run_coroutine_threadsafe`` (tens of microseconds; a hop through Ray costs milliseconds).  It knows nothing of
Ray: :mod:`tritium.ray` touches tritium only through it, and it is the seam where ``tritium.tritonserver``
(Triton's in-process API, which must own its loop the same way) can take over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Coroutine, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from tritium.api import InferenceAPI
from tritium.app import App, event_loop_factory
from tritium.core.errors import InvalidArgumentError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.frontends.http.routes import HttpApi, HttpRequest, compress_body
from tritium.options import ServerOptions

log = logging.getLogger(__name__)

T = TypeVar("T")


class EmbeddedServer:
    """A whole tritium (repository, schedulers with their dynamic batching, backends; frontends only when the
    options allow them) on a private event loop thread.  ``start`` blocks until the startup models are loaded."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        factory = event_loop_factory(options.event_loop)
        self._loop = factory() if factory is not None else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tritium-loop", daemon=True)
        self._app = App(options)
        #: The KServe v2 HTTP API (with Triton's extensions) without a socket: an ingress hands it requests.
        self.http = HttpApi(self._app.server, options.http_max_input_size, options.http_restricted_apis)
        self._started = False

    @property
    def api(self) -> InferenceAPI:
        return self._app.server

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self, timeout: float | None = None) -> None:
        """Start the loop thread and the server (models, then any frontends the options ask for); raises what
        the start raised (a model failed with ``exit_on_error``, a repository that cannot be read)."""
        self._thread.start()
        try:
            self.submit(self._app.start()).result(timeout)
        except BaseException:
            self.stop()
            raise
        self._started = True

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on tritium's loop (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``coroutine`` on tritium's loop and await it from the caller's loop."""
        return asyncio.wrap_future(self.submit(coroutine))

    def running(self) -> bool:
        """Started, and the loop thread still runs (a call to a dead loop would never be answered)."""
        return self._started and self._thread.is_alive() and self._loop.is_running()

    async def relay(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Iterate a stream that lives on tritium's loop from the caller's loop; closing this closes it (the
        model's request is cancelled when the client goes away)."""
        try:
            while (piece := await self.call(_next(stream))) is not None:
                yield piece
        finally:
            if not self._loop.is_closed():
                await self.call(_close(stream))

    def stop(self, timeout: float | None = None) -> None:
        """Unload every model (in-flight requests drain, bounded by ``exit_timeout_secs``), then end the loop."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            try:
                self.submit(self._app.stop()).result(timeout or self.options.exit_timeout_secs + 30)
            except Exception:
                log.exception("tritium did not stop cleanly")
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self._loop.close()

    async def ready(self) -> bool:
        """Live and ready (on tritium's loop)."""
        return self.api.live() and self.api.ready()

    async def handle_http(self, request: HttpRequest, accept_encoding: str | None = None) -> HttpAnswer:
        """One KServe v2 HTTP request, answered as tritium's own HTTP frontend answers it (on tritium's loop):
        routing, errors, binary tensors, compression as the client accepts; a trace is finished here."""
        response = await self.http.handle(request)
        pieces = response.body
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers]
        if accept_encoding and pieces and response.stream is None:
            pieces, encoding = compress_body(pieces, accept_encoding)
            if encoding is not None:
                headers.append(("Content-Encoding", encoding.decode()))
        trace = response.trace
        if trace is not None:
            trace.stamp("HTTP_SEND_START")
        body = b"".join(pieces)
        if trace is not None:
            trace.stamp("HTTP_SEND_END")
            trace.finish()
        content_type = response.content_type.decode() if response.content_type else None
        return HttpAnswer(response.status, headers, content_type, body, response.stream)

    async def infer(self, model_name: str, inputs: Mapping[str, Any], outputs: Sequence[str] | None = None,
                    parameters: Mapping[str, Any] | None = None, model_version: int = -1,
                    request_id: str = "") -> InferenceResponse:
        """One inference with numpy inputs (runs on tritium's loop: ``await engine.call(engine.infer(...))``)."""
        request = InferenceRequest(
            model_name, model_version, request_id, to_tensors(inputs),
            list(outputs) if outputs is not None else None, dict(parameters or {}))
        api = self.api
        model = api.model(model_name, model_version)
        api.require_unary(model, "Ray Serve handle")
        return await api.infer(request, model)


async def _next(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def _close(stream: AsyncIterator[bytes]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


class HttpAnswer(NamedTuple):
    """An HTTP answer for an ingress to send: ``stream`` (Server-Sent Events of ``generate_stream``) follows
    ``body`` and is iterated on tritium's loop (:meth:`EmbeddedServer.relay`)."""

    status: int
    headers: list[tuple[str, str]]
    content_type: str | None
    body: bytes
    stream: AsyncIterator[bytes] | None


def to_tensors(inputs: Mapping[str, Any]) -> list[Tensor]:
    """numpy arrays (or anything ``np.asarray`` takes) by input name -> tensors; strings and bytes become BYTES
    (object arrays of ``bytes``, as the BYTES codec keeps them)."""
    tensors = []
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"input names must be strings, got {type(name).__name__}")
        array = np.asarray(value)
        if array.dtype.kind in ("U", "S", "O"):
            array = _to_bytes_array(name, array)
            tensors.append(Tensor(name, DataType.BYTES, array))
            continue
        try:
            datatype = DataType.from_numpy(array.dtype)
        except InvalidArgumentError:
            raise InvalidArgumentError(f"input '{name}': unsupported numpy dtype '{array.dtype}'") from None
        tensors.append(Tensor(name, datatype, array))
    return tensors


def _to_bytes_array(name: str, array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1)):
        if isinstance(item, str):
            flat[i] = item.encode()
        elif isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
            flat[i] = bytes(item)
        else:
            raise InvalidArgumentError(
                f"input '{name}': a BYTES element must be str or bytes, got {type(item).__name__}")
    return out


def outputs_of(response: InferenceResponse) -> dict[str, np.ndarray]:
    """A response's outputs by name (BYTES outputs stay object arrays of ``bytes``)."""
    return {tensor.name: tensor.data for tensor in response.outputs}


__all__ = ["EmbeddedServer", "HttpAnswer", "outputs_of", "to_tensors"]
