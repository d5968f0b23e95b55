"""The event socket, server side: what a stub sends at any time, read by one thread per stub.

Responses of decoupled models (into ``request.response_stream``), BLS calls (:mod:`.bls`), calls that wait
for an answer (custom metrics here, model management on the server's loop), metric updates and log lines.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from tritium.core.custom_metrics import CustomMetrics
from tritium.core.errors import InternalError, Status, TritiumError, UnavailableError, UnsupportedError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from ..base import ModelContext
from . import bls, protocol
from .launcher import StubProcess
from .messages import Kind, Op

log = logging.getLogger(__name__)
model_log = logging.getLogger("tritium.python_model")
#: ``pb_utils.Logger``'s levels, in the order of ``messages.Log.level``.
_LOG_LEVELS = [logging.INFO, logging.WARNING, logging.ERROR, logging.DEBUG]


class Streams:
    """The requests of a decoupled model whose final response has not come yet, by key."""

    def __init__(self) -> None:
        self._by_key: dict[int, InferenceRequest] = {}
        self._lock = threading.Lock()

    def add(self, key: int, request: InferenceRequest) -> None:
        with self._lock:
            self._by_key[key] = request

    def take(self, key: int, final: bool) -> InferenceRequest | None:
        """The request of ``key``; forgotten when this is its final response."""
        with self._lock:
            return self._by_key.pop(key, None) if final else self._by_key.get(key)

    def drop(self, keys: list[int]) -> None:
        with self._lock:
            for key in keys:
                self._by_key.pop(key, None)

    def forget(self, request: InferenceRequest) -> None:
        with self._lock:
            for key, known in list(self._by_key.items()):
                if known is request:
                    del self._by_key[key]

    def fail_all(self, error: TritiumError) -> None:
        with self._lock:
            streams, self._by_key = self._by_key, {}
        for request in streams.values():
            if request.response_stream is not None:
                request.response_stream.fail(error)


class EventReader:
    """Reads one instance's event sockets (one thread per stub) and dispatches by ``messages.Kind``."""

    def __init__(self, ctx: ModelContext, instance_name: str, streams: Streams, metrics: CustomMetrics,
                 gone: Callable[[StubProcess], None]) -> None:
        self.ctx = ctx
        self.instance_name = instance_name
        self.streams = streams
        self.metrics = metrics
        #: Called when a stub's event socket ends while it was not being stopped.
        self._gone = gone

    def start(self, stub: StubProcess) -> None:
        threading.Thread(target=self.read, args=(stub,), name=f"python-events-{self.instance_name}",
                         daemon=True).start()

    def read(self, stub: StubProcess) -> None:
        while True:
            try:
                message = stub.events.recv()
            except (EOFError, OSError, TypeError):  # TypeError: closed here by finalize
                if not stub.stopping:
                    self._gone(stub)
                return
            try:
                self.dispatch(stub, message)
            except Exception:  # a bad message must not end the reader
                log.exception("model instance '%s': bad message from the stub", self.instance_name)

    def dispatch(self, stub: StubProcess, message: tuple) -> None:
        kind = message[0]
        if kind == Kind.RESPONSE:
            self._stream_response(*message[1:])
        elif kind == Kind.BLS_CALL:
            bls.start(self.ctx, stub, message)
        elif kind == Kind.BLS_FREE:
            stub.replies.free(message[1])
        elif kind == Kind.BLS_CANCEL:
            call = stub.bls_calls.get(message[1])
            if call is not None:
                call.cancel()
        elif kind == Kind.METRIC_UPDATE:
            self.metrics.update(*message[1:])
        elif kind == Kind.CALL:
            self._call(stub, *message[1:])
        elif kind == Kind.METRIC_FAMILY_DELETE:
            self.metrics.delete_family(stub, message[1])
        elif kind == Kind.LOG:
            model_log.log(_LOG_LEVELS[message[1] if 0 <= message[1] < 4 else 0], "%s", message[2])

    def _stream_response(self, key: int, metas: list, data: list, final: bool, error: Any, has_response: bool) -> None:
        request = self.streams.take(key, final)
        if request is None or request.response_stream is None:
            return
        stream = request.response_stream
        if error is not None:
            # not final: the stream stays open and later responses still go out, as in Triton
            stream.fail(TritiumError(error[1], Status[error[0]]), final)
            return
        response = None
        if has_response:
            outputs = [Tensor(n, DataType.from_wire(k), a) for n, k, a in protocol.read_inline(metas, data)]
            response = InferenceResponse(self.ctx.name, self.ctx.version, request.id, outputs)
        stream.send(response, final)

    def _call(self, stub: StubProcess, ident: int, op: str, args: tuple) -> None:
        """A call from model code that waits for its answer: metrics here, model management on the loop."""
        def answer(error: TritiumError | None, result: Any = None) -> None:
            stub.send_event((Kind.CALL_RESPONSE, ident, error.message if error is not None else None, result))

        metrics = self.metrics
        try:
            if op == Op.METRIC_FAMILY:
                metrics.create_family(stub, *args)
                return answer(None)
            if op == Op.METRIC:
                metrics.create_metric(*args)
                return answer(None)
            if op == Op.METRIC_VALUE:
                return answer(None, metrics.value(*args))
            handle = self.ctx.inference
            if handle is None:
                raise UnavailableError("model management is not available in this server")
            future: concurrent.futures.Future[Any]
            if op == Op.IS_MODEL_READY:
                future = asyncio.run_coroutine_threadsafe(_ready(handle, *args), handle.loop)
            elif op == Op.LOAD_MODEL:
                future = asyncio.run_coroutine_threadsafe(handle.load_model(*args), handle.loop)
            elif op == Op.UNLOAD_MODEL:
                future = asyncio.run_coroutine_threadsafe(handle.unload_model(*args), handle.loop)
            else:
                raise UnsupportedError(f"unknown call '{op}' from the stub")
        except TritiumError as e:
            return answer(e)

        def done(future: Any) -> None:
            error = future.exception()
            if error is None:
                answer(None, future.result())
            elif isinstance(error, TritiumError):
                answer(error)
            else:
                log.error("'%s' from model '%s' failed: %s", op, self.ctx.name, error)
                answer(InternalError(f"{type(error).__name__}: {error}"))

        future.add_done_callback(done)


async def _ready(handle: Any, name: str, version: int) -> bool:
    return bool(handle.model_ready(name, version))
