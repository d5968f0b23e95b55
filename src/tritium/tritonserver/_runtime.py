"""The event loop behind an in-process server: one private thread runs it, so the embedding program needs none.

Every coroutine of tritium's core (loading, scheduling, the Python backend's replies, network frontends when
asked for) runs on this loop; the API's blocking calls hand work to it with ``call``/``run`` and wait, and
inference hands a request over with one ``call_soon_threadsafe`` and receives each response through the
``deliver`` callback, called on the loop: a ``queue.SimpleQueue`` put for ``infer``, a hop onto the caller's
own loop for ``async_infer``.  The caller's thread converts inputs and validates the request against the model
(as Triton's ``InferAsync`` does, so errors raise at the call) and converts responses, keeping the loop free.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from tritium.app import Frontend, event_loop_factory
from tritium.core.errors import CancelledError, InternalError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.frontends.limits import raise_descriptor_limit
from tritium.logsettings import LogManager
from tritium.options import ServerOptions
from tritium.server import Server, StartupError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: ``deliver(response, error, final)``: called on the loop for each response of a request.
Deliver = Callable[[InferenceResponse | None, TritiumError | None, bool], None]


class Call:
    """One request in flight; ``cancel`` may be called from any thread."""

    __slots__ = ("_runtime", "task", "cancelled")

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.task: asyncio.Task[None] | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing is running any more
            self._runtime.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Handle:
    """What the API's objects (a started ``Server``, its ``Model`` objects) hold: the server runs while any of
    them is alive, and stops (as ``Server.stop``) when the last one is collected or the interpreter exits, as
    Triton's server object does.  Code on the loop never holds one, so that is never where the last one goes."""

    __slots__ = ("runtime", "__weakref__")

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        weakref.finalize(self, runtime.stop)


class Runtime:
    """A started tritium core on its private loop thread; what ``Server._server`` holds once started."""

    def __init__(self, options: ServerOptions, logs: LogManager, release_logging: Callable[[], None]) -> None:
        self.options = options
        self.logs = logs
        self._release_logging = release_logging
        factory = event_loop_factory(options.event_loop)
        self.loop: asyncio.AbstractEventLoop = factory() if factory is not None else asyncio.new_event_loop()
        self.core = Server(options, logs)
        self._tasks: set[asyncio.Task[None]] = set()
        self.frontends: list[Frontend] = []
        self._stopped = False
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="tritium-server-loop", daemon=True)
        self.thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()
            self.logs.close()
            self._release_logging()

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the startup models and report ready; raises the core's errors (a failed start is stopped)."""
        raise_descriptor_limit()  # before model processes start: they inherit it
        try:
            self.call(self.core.start())
            self.run(self.core.open)
        except StartupError as e:
            self.stop()
            raise InternalError(str(e)) from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Close any frontends, unload every model (bounded by ``exit_timeout``), end the loop thread."""
        if self._stopped:
            return
        self._stopped = True
        if threading.current_thread() is self.thread:  # dropped on our own loop: finish there, do not wait
            self.loop.create_task(self._shutdown())
            return
        try:
            self.call(self._shutdown(), timeout=self.options.exit_timeout_secs + 30)
        except Exception:
            log.exception("the in-process server did not stop cleanly")
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)

    async def _shutdown(self) -> None:
        await self.core.quiesce()
        for frontend in reversed(self.frontends):
            try:
                await asyncio.wait_for(frontend.stop(), timeout=self.options.exit_timeout_secs)
            except Exception:
                log.exception("frontend failed to stop cleanly")
        self.frontends.clear()
        for task in list(self._tasks):
            task.cancel()
        await self.core.stop()
        self.loop.call_soon(self.loop.stop)

    @property
    def stopped(self) -> bool:
        return self._stopped

    # -- calls onto the loop --------------------------------------------------------------------------

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the loop and wait for its result (its exception is raised here)."""
        if self.loop.is_closed():
            coroutine.close()
            raise UnavailableError("the server is stopped")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` on the loop (where the core's state changes) and wait for its result."""
        if self.loop.is_closed():
            raise UnavailableError("the server is stopped")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def invoke() -> None:
            try:
                future.set_result(function(*args))
            except BaseException as e:  # handed to the waiting caller
                future.set_exception(e)

        self.loop.call_soon_threadsafe(invoke)
        return future.result()

    # -- frontends ---------------------------------------------------------------------------------------

    def open_frontend(self, make: Callable[[Server, ServerOptions], Frontend], **settings: Any) -> Frontend:
        """Start a network endpoint (HTTP, gRPC, metrics) over this core with ``settings`` as its options."""
        options = replace(self.options, **settings)

        async def start() -> Frontend:
            frontend = make(self.core, options)
            await frontend.start()
            self.frontends.append(frontend)
            return frontend

        return self.call(start())

    def close_frontend(self, frontend: Frontend) -> None:
        async def stop() -> None:
            if frontend in self.frontends:
                self.frontends.remove(frontend)
                await frontend.stop()

        if not self._stopped:
            self.call(stop())

    # -- inference ------------------------------------------------------------------------------------------

    def submit(self, model: Model, request: InferenceRequest, deliver: Deliver) -> Call:
        """Run a validated ``request`` on the loop; ``deliver`` gets each response, the last one final."""
        call = Call(self)
        try:
            self.loop.call_soon_threadsafe(self._begin, call, model, request, deliver)
        except RuntimeError:  # the loop is closed
            raise UnavailableError("the server is stopped") from None
        return call

    def _begin(self, call: Call, model: Model, request: InferenceRequest, deliver: Deliver) -> None:
        if call.cancelled:
            deliver(None, CancelledError("the request was cancelled"), True)
            return
        task = self.loop.create_task(_serve(model, request, deliver))
        call.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _serve(model: Model, request: InferenceRequest, deliver: Deliver) -> None:
    final = False
    try:
        if not model.decoupled:
            response = await model.infer(request, validated=True)
            final = True
            deliver(response, None, True)
            return
        async for item in model.stream(request, validated=True):
            final = item.final
            deliver(item.response, item.error, item.final)
    except TritiumError as e:
        final = True
        deliver(None, e, True)
    except asyncio.CancelledError:
        if not final:
            final = True
            deliver(None, CancelledError("the request was cancelled"), True)
        raise
    except Exception as e:  # a bug below: the caller still gets an answer
        log.exception("inference failed")
        final = True
        deliver(None, InternalError(f"{type(e).__name__}: {e}"), True)
    finally:
        if not final:  # the stream ended without a final flag
            deliver(None, None, True)
