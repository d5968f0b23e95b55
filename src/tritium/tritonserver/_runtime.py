"""The event loop behind an in-process server: one private thread runs it (an
:class:`~tritium.embedded.EmbeddedServer`, as in every Ray Serve replica), so the embedding program needs none.

Every coroutine of tritium's core (loading, scheduling, the Python backend's replies, network frontends when
asked for) runs on this loop; the API's blocking calls hand work to it with ``wait``/``run``, and
inference hands a request over with one ``call_soon_threadsafe`` and receives each response through the
``deliver`` callback, called on the loop: a ``queue.SimpleQueue`` put for ``infer``, a hop onto the caller's
own loop for ``async_infer``.  The caller's thread converts inputs and validates the request against the model
(as Triton's ``InferAsync`` does, so errors raise at the call) and converts responses, keeping the loop free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable

from tritium.core.errors import CancelledError, InternalError, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.embedded import EmbeddedServer
from tritium.logsettings import LogManager
from tritium.options import ServerOptions
from tritium.server import StartupError

log = logging.getLogger(__name__)

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


class Runtime(EmbeddedServer):
    """A started tritium core on its private loop thread (:class:`~tritium.embedded.EmbeddedServer`, the one
    way an embedded server owns its loop), plus the callback-driven inference path of the in-process API; what
    ``Server._server`` holds once started."""

    def __init__(self, options: ServerOptions, logs: LogManager, release_logging: Callable[[], None]) -> None:
        super().__init__(options, logs=logs)
        self._release_logging = release_logging

    def _closed(self) -> None:
        try:
            super()._closed()
        finally:
            self._release_logging()

    def start(self, timeout: float | None = None) -> None:
        """Load the startup models and report ready; raises the core's errors (a failed start is stopped)."""
        try:
            super().start(timeout)
        except StartupError as e:
            raise InternalError(str(e)) from None

    # -- inference ------------------------------------------------------------------------------------------

    def begin(self, model: Model, request: InferenceRequest, deliver: Deliver) -> Call:
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
        self.track(task)


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
