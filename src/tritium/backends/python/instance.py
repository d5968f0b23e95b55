"""One instance of a Python-backend model, server side: its stub's lifecycle and the execute path.

An execution writes the batch's inputs into a free arena of the instance's pool and sends one
``messages.Execute``; the stub writes outputs after the inputs in that same arena (an output that is a view
of an input stays where it is), and the responses' arrays are views of it, not copies: the arena is busy
until they are gone, and the next execution takes another one.  On the serving path
(:meth:`PythonInstanceState.execute_async`) the reply is read by the event loop itself: the control
socket's reader is registered once and stays (far cheaper than one per execution: ARCHITECTURE.md,
decisions), so no thread is woken per request; :meth:`PythonInstanceState.execute` blocks instead.  What does
not follow execute's rhythm comes on the event socket (:mod:`.events`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tritium.core import shared_memory
from tritium.core.custom_metrics import CustomMetrics
from tritium.core.errors import InternalError, InvalidArgumentError, Status, TritiumError, UnavailableError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from ..base import InstanceSpec, ModelInstanceState
from . import launcher, protocol
from .events import EventReader, Streams
from .launcher import StubProcess
from .messages import Kind, Location, Outcome
from .protocol import INCOMPLETE, Arena

if TYPE_CHECKING:
    from .backend import PythonModelState

log = logging.getLogger(__name__)

_SEQUENCE_PARAMETERS = frozenset(("sequence_id", "sequence_start", "sequence_end"))
#: Inputs this big that lie in a shared-memory block are read there by the stub; smaller ones are
#: copied into the arena with the rest (a copy is cheaper than the look-up).
_IN_PLACE_BYTES = 4096
#: While it waits for a stub's reply, the event loop polls for it only as long as its turns come sooner
#: than this apart: a longer gap means it has other work, and its reader of the socket will do.
_BUSY_GAP_S = 50e-6
_clock = time.perf_counter
#: The execute path's message constants, as globals (one lookup, not a global and an attribute).
_EXECUTE, _CANCEL = Kind.EXECUTE, Kind.CANCEL
_OK, _ERROR = Outcome.OK, Outcome.ERROR
_IN_ARENA, _BLOCK = Location.IN_ARENA, Location.BLOCK


class PythonInstanceState(ModelInstanceState):
    #: execute waits on the stub, which may call back into the server (BLS) through the event loop.
    may_run_inline = False
    #: The serving path sends the batch from the event loop and reads the reply there (execute_async).
    executes_async = True

    def __init__(self, spec: InstanceSpec, model: PythonModelState) -> None:
        super().__init__(spec)
        self.model = model
        ctx = model.ctx
        self.ctx = ctx
        self.settings = model.settings
        self._stub: StubProcess | None = None
        self._dead_reason = ""
        self._keys = itertools.count()
        #: Requests of a decoupled model whose final response has not come yet.
        self._streams = Streams()
        #: What the model sees as requested when a request names no outputs (Triton: all of them).
        self._all_outputs = [o.name for o in ctx.config.output]
        #: ``sequence_batching { iterative_sequence: true }``: the model may reschedule requests.
        self._iterative = ctx.config.sequence_batching.iterative_sequence
        handle = ctx.inference
        #: Where this instance's model-defined metrics go (shown by the metrics frontend).
        self._metrics: CustomMetrics = getattr(handle, "metrics", None) or CustomMetrics()
        self._events = EventReader(ctx, spec.name, self._streams, self._metrics, self._events_ended)

    # -- process lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        ctx, spec, settings = self.ctx, self.spec, self.settings
        in_arena = Arena.create(settings.shm_prefix, settings.shm_default)
        out_arena = Arena.create(settings.shm_prefix, settings.shm_default)
        try:
            control, events, handoff, popen = launcher.spawn(self.model.python)
            in_arena.ident = 0
            stub = StubProcess(control, events, handoff, popen, in_arena, out_arena,
                         protocol.BlsArena(settings.shm_prefix, settings.shm_default, settings.shm_growth))
            # read events from the start: initialize() may already call the server (metrics, model management)
            self._events.start(stub)
            control.send(launcher.start_message(ctx, spec, settings, self.model.decoupled, self.model.config_json,
                                                in_arena, out_arena))
            try:
                _, ok, payload = launcher.recv_or_exit(control, popen, f"instance '{spec.name}' of model '{ctx.name}'")
            except TritiumError:
                stub.stopping = True
                stub.close_sockets()
                self._metrics.release(stub)
                raise
        finally:
            protocol.unlink_quietly(in_arena.path)
            protocol.unlink_quietly(out_arena.path)
        if not ok:
            stub.stopping = True
            stub.close_sockets()
            launcher.reap(popen, 10.0)
            self._metrics.release(stub)
            raise InternalError(payload)
        self._stub = stub
        self._dead_reason = ""

    def _died(self, stub: StubProcess, during: str) -> UnavailableError:
        """Record that ``stub`` is gone; its open streams fail; the next execute starts a new one."""
        code = launcher.reap(stub.popen, 5.0)
        error = UnavailableError(
            f"the stub process of model instance '{self.spec.name}' of model '{self.ctx.name}' exited unexpectedly "
            f"({launcher.exit_text(code)}) {during}; the instance is restarted for the next request")
        if self._stub is stub:
            self._stub = None
            self._dead_reason = error.message
            log.error("%s", error.message)
        stub.handoff.close()
        stub.replies.close()
        if stub.watched_by is None:
            stub.control.close()
        self._metrics.release(stub)
        self._streams.fail_all(error)
        return error

    def _events_ended(self, stub: StubProcess) -> None:
        """The event socket of ``stub`` ended while it was not being stopped: it died."""
        if self._stub is stub:  # (a failed start reports itself)
            self._died(stub, "")

    def _ensure_stub(self) -> StubProcess:
        stub = self._stub
        if stub is None:
            log.info("restarting the stub process of model instance '%s'", self.spec.name)
            try:
                self.start()
            except TritiumError as e:
                raise UnavailableError(f"model instance '{self.spec.name}' of model '{self.ctx.name}' is "
                                       f"unavailable: {self._dead_reason or ''} restart failed: {e}") from None
            stub = self._stub
            assert stub is not None
        return stub

    def _unwatch(self, stub: StubProcess) -> None:
        """Take the event loop's reader off ``control`` before this thread reads it (finalize, execute)."""
        loop = stub.watched_by
        if loop is None:
            return
        stub.watched_by = None
        fd = stub.control.fileno()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.remove_reader(fd)
            return
        removed = threading.Event()

        def remove() -> None:
            loop.remove_reader(fd)
            removed.set()

        try:
            loop.call_soon_threadsafe(remove)
        except RuntimeError:  # the loop is closed: nothing watches any more
            return
        if loop.is_running():
            removed.wait(5.0)

    def finalize(self) -> None:
        stub, self._stub = self._stub, None
        if stub is None:
            return
        stub.stopping = True
        self._unwatch(stub)
        try:
            stub.control.send((Kind.FINALIZE,))
            if stub.control.poll(self.settings.stub_timeout):
                _, error = stub.control.recv()
                if error:
                    log.error("finalize of model instance '%s' failed: %s", self.spec.name, error)
            else:
                log.error("model instance '%s' did not finalize within %ss; killing it", self.spec.name,
                          self.settings.stub_timeout)
        except (EOFError, OSError):
            pass
        stub.close_sockets()
        launcher.reap(stub.popen, self.settings.stub_timeout)
        self._metrics.release(stub)
        self._streams.fail_all(UnavailableError(f"model '{self.ctx.name}' was unloaded"))

    # -- execute -----------------------------------------------------------------------------------

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        stub = self._ensure_stub()
        self._unwatch(stub)
        message, state = self._prepare(stub, requests)
        try:
            self._send(stub, message, state)
            reply = stub.control.recv()
        except (EOFError, OSError):
            self._abandon(state)
            raise self._died(stub, "while executing") from None
        return self._finish(stub, requests, state, reply)

    def execute_async(self, requests: Sequence[InferenceRequest], loop: asyncio.AbstractEventLoop,
                      done: Callable[[list | None, TritiumError | None], None]) -> bool:
        """Send the batch and return; ``done(responses, error)`` is called on ``loop`` when the reply is read
        there.  ``False`` (nothing done) when the stub must first be (re)started: the caller runs
        :meth:`execute` on a thread instead, as a start blocks."""
        stub = self._stub
        if stub is None:
            return False
        try:
            message, state = self._prepare(stub, requests)
        except TritiumError as e:
            done(None, e)
            return True
        try:
            self._send(stub, message, state)
            stub.pending = pending = (requests, state, done)
            if stub.watched_by is None:
                loop.add_reader(stub.control.fileno(), self._on_reply, stub, loop)
                stub.watched_by = loop
            spin = self.settings.reply_spin_s
            if spin:
                now = _clock()
                stub.sent_at = now
                if stub.reply_s < spin:  # replies lately came within the spin: poll for this one
                    loop.call_soon(self._poll_reply, stub, loop, pending, now + spin, now)
        except (OSError, ValueError):
            stub.pending = None
            self._abandon(state)
            done(None, self._died(stub, "while executing"))
        return True

    def _poll_reply(self, stub: StubProcess, loop: asyncio.AbstractEventLoop, pending: tuple, deadline: float,
                    last: float) -> None:
        """One poll for the reply to ``pending``, then another on the loop's next turn, until the reply came,
        ``deadline`` passed, or the loop had other work in between (``last``: when this poll was scheduled).
        Each poll yields the CPU, to the stub or the clients if they share it."""
        if stub.pending is not pending:
            return
        now = _clock()
        if now - last > _BUSY_GAP_S:
            return  # the loop has other work: the reader completes this one
        if stub.control.readable():
            self._on_reply(stub, loop)
        if stub.pending is pending and now < deadline:
            os.sched_yield()
            loop.call_soon(self._poll_reply, stub, loop, pending, deadline, _clock())

    def _on_reply(self, stub: StubProcess, loop: asyncio.AbstractEventLoop) -> None:
        """The control socket's reader: completes the execution in flight with the stub's reply."""
        try:
            reply = stub.control.recv_nowait()
            if reply is INCOMPLETE:
                return
        except EOFError:
            reply = None
        pending, stub.pending = stub.pending, None
        if stub.sent_at:
            stub.reply_s += (_clock() - stub.sent_at - stub.reply_s) * 0.25
        if reply is None:  # the stub is gone: only this reader may close the socket it watches
            loop.remove_reader(stub.control.fileno())
            stub.watched_by = None
            stub.control.close()
            if pending is not None:
                self._abandon(pending[1])
                pending[2](None, self._died(stub, "while executing"))
            return
        if pending is None:
            log.error("model instance '%s': a reply from the stub with no execution waiting", self.spec.name)
            return
        requests, state, done = pending
        try:
            responses = self._finish(stub, requests, state, reply)
        except TritiumError as e:
            done(None, e)
            return
        except Exception as e:  # a bug here must fail the batch, not the loop
            log.exception("model instance '%s': bad reply from the stub", self.spec.name)
            done(None, InternalError(f"{type(e).__name__}: {e}"))
            return
        done(responses, None)

    def _free_arena(self, stub: StubProcess, needed: int) -> Arena | None:
        """A pool arena no response views any more: the first big enough, else any free one."""
        fallback = None
        for arena in stub.arenas:
            holder = arena.holder
            if holder is None or holder() is None:
                if arena.size >= needed:
                    return arena
                fallback = fallback or arena
        return fallback

    def _prepare(self, stub: StubProcess, requests: Sequence[InferenceRequest]) -> tuple[tuple, tuple]:
        """Inputs into a free arena, except those that already lie in shared memory (big HTTP bodies are
        received there: ``core.shared_memory``); the message for the stub and what :meth:`_finish` needs."""
        arrays = []
        counts = []
        needed = 0
        #: per input, its meta when it stays in a shared block, else None (written into the arena)
        placed: list[tuple | None] = []
        handed: list[shared_memory.Block] = []
        pooled = shared_memory.any_blocks()
        for request in requests:
            inputs = request.inputs
            counts.append(len(inputs))
            for t in inputs:
                data = t.data
                if pooled and data.nbytes >= _IN_PLACE_BYTES:
                    meta = _in_block(stub, t.name, data, handed)
                    if meta is not None:
                        placed.append(meta)
                        continue
                placed.append(None)
                arrays.append((t.name, data))
                needed += data.nbytes + protocol.ALIGN
        settings = self.settings
        free = self._free_arena(stub, needed)
        created: list[Arena] = []

        def create(size: int) -> Arena:
            # room for outputs as big as the inputs after them; grown in shm-growth-byte-size steps
            current = free.size if free is not None else settings.shm_default
            arena = Arena.create(settings.shm_prefix, protocol.grown_size(current, 2 * size, settings.shm_growth))
            if free is not None:
                arena.ident = free.ident
                stub.arenas[free.ident] = arena
            else:
                arena.ident = len(stub.arenas)
                stub.arenas.append(arena)
            created.append(arena)
            return arena

        arena, metas = protocol.write_tensors(free, arrays, create)
        arena.holder = None
        new = (arena.path, arena.size) if created else None
        used = metas[-1][3] + metas[-1][4] if metas else 0
        if len(metas) != len(placed):  # some inputs stay where they are
            written = iter(metas)
            metas = [meta if meta is not None else next(written) for meta in placed]
        blocks = [(block.ident, block.size) for block in handed] if handed else None
        batch = []
        keys = []
        position = 0
        decoupled = self.model.decoupled
        for request, count in zip(requests, counts, strict=False):
            key = request.backend_state
            if key is None:
                key = next(self._keys)
            if decoupled and request.response_stream is not None:
                if request.backend_state is None:  # a rescheduled request keeps its key, stream and cancel hook
                    self._streams.add(key, request)
                    request.response_stream.on_cancel(functools.partial(stub.send_event, (_CANCEL, key)))
                    if self._iterative:
                        request.backend_state = key
                keys.append(key)
            elif not decoupled:  # a caller that stops waiting (gRPC cancel or deadline) reaches is_cancelled()
                request.on_cancel = functools.partial(stub.send_event, (_CANCEL, key))
            params = request.parameters
            flags = 0
            correlation_id = 0
            if params and not _SEQUENCE_PARAMETERS.isdisjoint(params):
                # Triton gives these to the model as correlation_id() and flags(), not as parameters
                flags = (1 if params.get("sequence_start") else 0) | (2 if params.get("sequence_end") else 0)
                correlation_id = params.get("sequence_id", 0)
                params = {k: v for k, v in params.items() if k not in _SEQUENCE_PARAMETERS}
            requested = request.requested_outputs or self._all_outputs
            batch.append((key, request.id, correlation_id, flags, params, requested,
                          metas[position : position + count]))
            position += count
        return (_EXECUTE, arena.ident, new, used, blocks, batch), (arena, created, keys, handed)

    @staticmethod
    def _send(stub: StubProcess, message: tuple, state: tuple) -> None:
        """The execute message, after the file descriptors of the blocks it names for the first time."""
        handed = state[3]
        if handed:
            socket.send_fds(stub.handoff, [b"b"], [block.fd for block in handed])
            stub.blocks.update(block.ident for block in handed)
        stub.control.send(message)

    def _abandon(self, state: tuple) -> None:
        for arena in state[1]:
            protocol.unlink_quietly(arena.path)

    def _finish(self, stub: StubProcess, requests: Sequence[InferenceRequest], state: tuple,
                reply: tuple) -> list[InferenceResponse | TritiumError]:
        arena, created, keys, _ = state
        for new in created:  # the stub has mapped it by now
            protocol.unlink_quietly(new.path)
        _, new_out, results, error = reply
        if new_out is not None:
            path, size = new_out
            stub.out_arena = Arena.attach(path, size, unlink=True)
        if error is not None:
            if keys:
                self._streams.drop(keys)
            raise InternalError(f"Failed to process the request(s) for model '{self.spec.name}', "
                                f"message: {error}")
        if self.model.decoupled:
            return [InferenceResponse(self.ctx.name, self.ctx.version, r.id) if result[0] == _OK
                    else self._reschedule(r) for r, result in zip(requests, results, strict=False)]
        holder: list[np.ndarray] = []
        response = self._response
        return [response(stub, arena, holder, request, result)
                for request, result in zip(requests, results, strict=False)]

    def _response(self, stub: StubProcess, arena: Arena, holder: list[np.ndarray], request: InferenceRequest,
                  result: tuple) -> InferenceResponse | TritiumError:
        if result[0] != _OK:
            if result[0] == _ERROR:
                return TritiumError(result[2], Status[result[1]])
            return self._reschedule(request)
        outputs = []
        for name, kind, shape, offset, nbytes, location, block in result[1]:
            if location == _BLOCK:  # a view of an input where the server received it
                base = self._block_array(block)
                array = np.ndarray(shape, protocol.NUMPY_TYPES[kind], base, offset)
            elif kind == "BYTES":  # parsed into new objects: nothing keeps the arena
                memory = arena.mm if location == _IN_ARENA else stub.out_arena.mm
                array = protocol.view(memory, kind, shape, offset, nbytes)
            elif location == _IN_ARENA:
                # A view of the arena: the arena stays busy while ``holder`` (base of every view) lives.
                if not holder:
                    holder.append(np.frombuffer(arena.mm, np.uint8))
                    arena.holder = weakref.ref(holder[0])
                array = np.ndarray(shape, protocol.NUMPY_TYPES[kind], holder[0], offset)
            else:
                array = protocol.view(stub.out_arena.mm, kind, shape, offset, nbytes).copy()  # reused next time
            outputs.append(Tensor(name, DataType.from_wire(kind), array))
        return InferenceResponse(self.ctx.name, self.ctx.version, request.id, outputs)

    def _reschedule(self, request: InferenceRequest) -> InferenceResponse | TritiumError:
        """The model released ``request`` with ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``: the sequence batcher
        of an iterative-sequence model runs it again; any other model cannot (Triton logs that and never
        answers the client; here the client gets the error)."""
        if self._iterative:
            request.rescheduled = True
            return InferenceResponse(self.ctx.name, self.ctx.version, request.id)
        message = ("Request is released with TRITONSERVER_REQUEST_RELEASE_RESCHEDULE, while the model is not "
                   "configured to handle such a flag.")
        log.error("model '%s': %s", self.ctx.name, message)
        if request.backend_state is None and request.response_stream is not None:
            self._streams.forget(request)  # no final response comes for it any more
        return InvalidArgumentError(message)

    @staticmethod
    def _block_array(ident: int) -> np.ndarray:
        block = shared_memory.block(ident)
        base = block.array() if block is not None else None
        if base is None:  # the request's input that lies there keeps it in use: this is a bug
            raise InternalError(f"an output names shared-memory block {ident}, which is not in use")
        return base


def _in_block(stub: StubProcess, name: str, data: np.ndarray, handed: list[shared_memory.Block]) -> tuple | None:
    """The ``TensorMeta`` of an input that lies in a shared-memory block, read there by the stub (the block
    joins ``handed`` when the stub has not been handed it yet); None when it lies elsewhere."""
    found = shared_memory.locate(data)
    if found is None:
        return None
    block, offset = found
    if block.ident not in stub.blocks and block not in handed:
        handed.append(block)
    return (name, protocol.wire_type(data), data.shape, offset, data.nbytes, Location.BLOCK, block.ident)
