"""One worker thread per model instance.

A worker owns its :class:`ModelInstanceState` and runs ``execute`` on its own
thread (ONNX Runtime and torch release the GIL while they compute, so instances
truly run at the same time).  The result comes back to the event loop with one
``call_soon_threadsafe``: a single thread hop each way, no executor machinery.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence

from tritium.backends.base import ModelInstanceState
from tritium.core.errors import InternalError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse

log = logging.getLogger(__name__)

#: Called on the event loop with the batch and either its responses or the error that failed it.
Done = Callable[[Sequence[InferenceRequest], "list[InferenceResponse] | None", "TritiumError | None"], None]

_STOP = object()


class InstanceWorker:
    """Runs batches on one instance, one at a time, off the event loop."""

    def __init__(self, instance: ModelInstanceState, loop: asyncio.AbstractEventLoop) -> None:
        self.instance = instance
        self.name = instance.spec.name
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"instance-{self.name}", daemon=True)
        self._thread.start()

    def submit(self, batch: Sequence[InferenceRequest], done: Done) -> None:
        self._queue.put((batch, done))

    def stop(self) -> None:
        self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        call_back = self._loop.call_soon_threadsafe
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, done = item  # type: ignore[misc]
            try:
                responses = self.instance.execute(batch)
                if len(responses) != len(batch):
                    raise InternalError(
                        f"instance {self.name} returned {len(responses)} responses for {len(batch)} requests"
                    )
                error = None
            except TritiumError as e:
                responses, error = None, e
            except Exception as e:  # a backend bug must fail the batch, not kill the worker
                log.exception("instance %s failed", self.name)
                responses, error = None, InternalError(f"{type(e).__name__}: {e}")
            try:
                call_back(done, batch, responses, error)
            except RuntimeError:  # loop closed during shutdown
                return
