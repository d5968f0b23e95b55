"""tritium inside a program that has its own event loop, or none: :class:`EmbeddedServer`.

The one way an embedded tritium owns its event loop: the server runs on a loop of its own, in one daemon thread,
so the host's loop (a Ray Serve replica's, a notebook's) never runs tritium's schedulers and tritium never waits
on the host.  Calls cross with ``run_coroutine_threadsafe`` or ``call_soon_threadsafe`` (tens of microseconds; a
hop through Ray costs milliseconds).  Two facades build on it: :mod:`tritium.ray` (each Serve replica holds one)
and ``tritium.tritonserver`` (Triton's in-process API: its runtime is a subclass that adds the callback-driven
inference path).  It knows nothing of either.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import numpy as np

from tritium.api import InferenceAPI
from tritium.app import App, Frontend, event_loop_factory, make_frontends
from tritium.core.errors import InvalidArgumentError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor
from tritium.logsettings import LogManager
from tritium.options import ServerOptions
from tritium.server import Server

if TYPE_CHECKING:
    from tritium.frontends.http.routes import HttpApi, HttpRequest

log = logging.getLogger(__name__)

T = TypeVar("T")


class EmbeddedServer:
    """A whole tritium (repository, schedulers with their dynamic batching, backends; frontends only when the
    options allow them) on a private event loop thread.  ``start`` blocks until the startup models are loaded.

    ``logs``: where the server's logs go (the command line's logging setup when None), closed when the loop
    ends.  ``tune_process``: tune the garbage collector and the GIL switch interval as the command line does
    (for a process that is only this server, such as a Ray replica; never for someone else's program).
    """

    def __init__(self, options: ServerOptions, *, logs: LogManager | None = None,
                 tune_process: bool = False) -> None:
        self.options = options
        factory = event_loop_factory(options.event_loop)
        self._loop = factory() if factory is not None else asyncio.new_event_loop()
        self._app = App(options, logs, make_frontends, tune=tune_process)
        self._logs = logs
        self._thread = threading.Thread(target=self._run, name="tritium-loop", daemon=True)
        #: Tasks of requests in flight that ``stop`` cancels before unloading the models (whose reader may be
        #: gone: nobody would drain them).
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._stopped = False

    @property
    def api(self) -> InferenceAPI:
        return self._app.server

    @property
    def core(self) -> Server:
        """The core server (only to be touched on the loop, or for reads that are safe from any thread)."""
        return self._app.server

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @functools.cached_property
    def http(self) -> HttpApi:
        """The KServe v2 HTTP API (with Triton's extensions) without a socket: an ingress hands it requests."""
        from tritium.frontends.http.routes import HttpApi

        return HttpApi(self._app.server, self.options.http_max_input_size, self.options.http_restricted_apis)

    # -- lifecycle -------------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._closed()

    def _closed(self) -> None:
        """The loop has ended (on its thread, or in ``stop`` when it never ran): close it and the logs."""
        self._loop.close()
        if self._logs is not None:
            self._logs.close()

    def start(self, timeout: float | None = None) -> None:
        """Start the loop thread and the server (models, then any frontends the options ask for); raises what
        the start raised (a model failed with ``exit_on_error``, a repository that cannot be read); a failed
        start is stopped."""
        if self._started or self._stopped:
            raise InvalidArgumentError("an embedded server starts once")
        self._thread.start()
        try:
            self.wait(self._app.start(), timeout)
        except BaseException:
            self.stop()
            raise
        self._started = True

    def stop(self, timeout: float | None = None) -> None:
        """Close the frontends, cancel in-flight tracked requests, unload every model (each drains what it
        runs, bounded by ``exit_timeout_secs``), then end the loop and its thread.  From the loop's own thread
        (an object dropped there) the shutdown is scheduled and not waited for."""
        if self._stopped:
            return
        self._stopped = True
        if not self._thread.is_alive():
            if self._thread.ident is None:  # never started: the loop never ran
                self._closed()
            return
        if threading.current_thread() is self._thread:
            self._loop.create_task(self._shutdown())
            return
        try:
            self.wait(self._shutdown(), timeout or self.options.exit_timeout_secs + 30)
        except Exception:
            log.exception("tritium did not stop cleanly")
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    async def _shutdown(self) -> None:
        try:
            await self._app.close_frontends()
            for task in list(self._tasks):
                task.cancel()
            await self._app.server.stop()
        finally:
            self._loop.call_soon(self._loop.stop)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def running(self) -> bool:
        """Started, and the loop thread still runs (a call to a dead loop would never be answered)."""
        return self._started and self._thread.is_alive() and self._loop.is_running()

    # -- calls onto the loop --------------------------------------------------------------------------

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on tritium's loop (from any other thread); UnavailableError once it has ended."""
        if self._loop.is_closed():
            coroutine.close()
            raise UnavailableError("the server is stopped")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Run ``coroutine`` on tritium's loop and await it from the caller's loop."""
        return asyncio.wrap_future(self.submit(coroutine))

    def wait(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on tritium's loop and block for its result (its exception is raised here)."""
        return self.submit(coroutine).result(timeout)

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` on the loop (where the core's state changes) and block for its result."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as e:  # handed to the waiting caller
                future.set_exception(e)

        try:
            self._loop.call_soon_threadsafe(invoke)
        except RuntimeError:  # the loop is closed
            raise UnavailableError("the server is stopped") from None
        return future.result()

    def track(self, task: asyncio.Task[Any]) -> None:
        """Have ``stop`` cancel ``task`` (a request started on the loop) if it still runs (on the loop)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- frontends opened later -------------------------------------------------------------------------

    def open_frontend(self, make: Callable[[Server, ServerOptions], Frontend], **settings: Any) -> Frontend:
        """Start a network endpoint (HTTP, gRPC, metrics) over this server with ``settings`` as its options;
        ``stop`` closes it with the others."""
        options = replace(self.options, **settings)

        async def start() -> Frontend:
            frontend = make(self._app.server, options)
            await frontend.start()
            self._app.frontends.append(frontend)
            return frontend

        return self.wait(start())

    def close_frontend(self, frontend: Frontend) -> None:
        async def stop() -> None:
            if frontend in self._app.frontends:
                self._app.frontends.remove(frontend)
                await frontend.stop()

        if not self._stopped:
            self.wait(stop())

    # -- for an ingress on another loop ------------------------------------------------------------------

    async def relay(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Iterate a stream that lives on tritium's loop from the caller's loop; closing this closes it (the
        model's request is cancelled when the client goes away)."""
        try:
            while (piece := await self.call(_next(stream))) is not None:
                yield piece
        finally:
            if not self._loop.is_closed():
                await self.call(_close(stream))

    async def ready(self) -> bool:
        """Live and ready (on tritium's loop)."""
        return self.api.live() and self.api.ready()

    async def handle_http(self, request: HttpRequest, accept_encoding: str | None = None) -> HttpAnswer:
        """One KServe v2 HTTP request, answered as tritium's own HTTP frontend answers it (on tritium's loop):
        routing, errors, binary tensors, compression as the client accepts; a trace is finished here."""
        from tritium.frontends.http.routes import compress_body

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
