"""The server side of the Python backend: one stub process per instance, tensors through shared memory.

An execution writes the batch's inputs into a free arena of the instance's pool and sends one small
message; the stub writes outputs after the inputs in that same arena (an output that is a view of an
input stays where it is), and the responses' arrays are views of it, not copies: the arena is busy
until they are gone, and the next execution takes another one.  On the serving path
(:meth:`PythonInstanceState.execute_async`) the reply is read by the event loop itself: the control
socket's reader is registered once and stays (registering one per execution cost more than a quarter of
the loop's time per request at 8 connections), so no thread is woken per request and no reader is made
per request; :meth:`PythonInstanceState.execute` blocks instead.  A second
socket per instance, read by a thread here, carries what does not follow execute's rhythm: responses
of decoupled models (into ``request.response_stream``), BLS calls (run on the event loop through
``ModelContext.inference``) and log lines.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.parse import config_to_dict
from tritium.core import shared_memory, shm_regions
from tritium.core.custom_metrics import CustomMetrics
from tritium.core.errors import (
    InternalError,
    InvalidArgumentError,
    ModelConfigError,
    Status,
    TritiumError,
    UnavailableError,
    UnsupportedError,
)
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from ..base import ALL_INSTANCE_KINDS, Backend, InstanceSpec, ModelContext, ModelInstanceState, ModelState
from . import protocol
from .environments import Environments, activated
from .protocol import INCOMPLETE, Arena, Channel

log = logging.getLogger(__name__)
model_log = logging.getLogger("tritium.python_model")
_LOG_LEVELS = [logging.INFO, logging.WARNING, logging.ERROR, logging.DEBUG]

#: The directory holding the ``tritium`` package, put on the stub's PYTHONPATH (any interpreter finds it).
_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_MIB = 1 << 20
_SEQUENCE_PARAMETERS = frozenset(("sequence_id", "sequence_start", "sequence_end"))
#: Inputs this big that lie in a shared-memory block are read there by the stub; smaller ones are
#: copied into the arena with the rest (a copy is cheaper than the look-up).
_IN_PLACE_BYTES = 4096
#: While it waits for a stub's reply, the event loop polls for it only as long as its turns come sooner
#: than this apart: a longer gap means it has other work, and its reader of the socket will do.
_BUSY_GAP_S = 50e-6
_clock = time.perf_counter
#: Socket buffers of the event channel, which carries the tensors of decoupled responses and BLS calls.
_EVENT_BUFFER_BYTES = 4 << 20


#: How long a stub polls for its next execute before it sleeps (``stub-spin-microseconds``).  Waking a
#: sleeping process costs tens of µs, and on a virtual machine whose idle CPUs halt it costs more than
#: the identity model's whole execute: at 1 HTTP connection, 150 µs here served 1,570 req/s and 1,000 µs
#: 2,500 (``benchmarks/python_backend.py``).  The stub polls only while its executes have lately come
#: sooner than this, and yields the CPU on every poll, so an idle or slowly fed instance sleeps at once.
DEFAULT_STUB_SPIN_US = 1000
#: How long the server's event loop polls for a stub's reply while it has nothing else to do
#: (``reply-spin-microseconds``), for the same reason from the other side: the loop asleep in epoll takes
#: tens of µs to wake.  The identity model.py's round trip on the loop fell from 172 to 80 µs median, and
#: 1 HTTP connection served 1.31x the requests/s; at 8 and 32 connections, where the loop is busy and does
#: not poll, 0.95x and 1.00x (noise).  It polls only while replies have lately come sooner than this.
DEFAULT_REPLY_SPIN_US = 500


class Settings:
    """``--backend-config=python,<key>=<value>`` values this backend honours."""

    def __init__(self, config: Mapping[str, str]) -> None:
        def whole(key: str, default: int, unit: str, minimum: int = 1) -> int:
            value = config.get(key)
            if value is None:
                return default
            try:
                number = int(value)
            except ValueError:
                raise ModelConfigError(f"python backend: '{key}' must be a number of {unit}, got '{value}'") from None
            if number < minimum:
                bound = "positive" if minimum == 1 else f"{minimum} or more"
                raise ModelConfigError(f"python backend: '{key}' must be {bound}, got '{value}'")
            return number

        self.stub_spin_us = whole("stub-spin-microseconds", DEFAULT_STUB_SPIN_US, "microseconds", minimum=0)
        self.reply_spin_s = whole("reply-spin-microseconds", DEFAULT_REPLY_SPIN_US, "microseconds", minimum=0) / 1e6
        self.shm_default = whole("shm-default-byte-size", _MIB, "bytes")
        self.shm_growth = whole("shm-growth-byte-size", _MIB, "bytes")
        self.stub_timeout = float(whole("stub-timeout-seconds", 30, "seconds"))
        self.shm_prefix = config.get("shm-region-prefix-name", "").replace("/", "_") or "tritium_python_"
        # clients may see the arenas' names in /dev/shm: they must not register them as their regions
        shm_regions.reserve_prefix(self.shm_prefix)


class PythonBackend(Backend):
    name = "python"
    #: Triton's Python backend takes every kind and leaves devices to the model code.
    instance_kinds = ALL_INSTANCE_KINDS
    decoupled = True

    def __init__(self) -> None:
        self.settings = Settings({})
        self.environments = Environments()

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self.settings = Settings(backend_config)

    def finalize(self) -> None:
        self.environments.close()

    def interpreter(self, ctx: ModelContext) -> str:
        """The Python that runs the model's processes: the server's own, or the one of ``EXECUTION_ENV_PATH``."""
        return self.environments.interpreter(ctx.name, ctx.model_dir, ctx.parameter("EXECUTION_ENV_PATH"),
                                             ctx.config_from_client)

    def auto_complete_config(self, ctx: ModelContext) -> None:
        """Run the model's static ``auto_complete_config`` in a throw-away stub, as Triton does."""
        path = ctx.model_path
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if "auto_complete_config" not in f.read():
                    return  # nothing to run: spare a process start
        except OSError:
            return  # model_initialize reports the missing file
        config = ctx.config
        control, events, handoff, popen = _spawn(self.interpreter(ctx))
        handoff.close()
        try:
            control.send({"mode": "autocomplete", "model_file": path, "version_dir": ctx.import_dir,
                          "config": json.dumps(config_to_dict(config))})
            status, payload = _recv_or_exit(control, popen, f"auto-complete of model '{ctx.name}'")
        finally:
            control.close()
            events.close()
            _reap(popen, 10.0)
        if status != "ok":
            raise InternalError(payload)  # the model's own exception, as Triton reports it
        _merge_auto_complete(config, payload, ctx.name)

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        if not os.path.exists(ctx.model_path):
            raise ModelConfigError(f"Failed to preinitialize Python stub: Python model file not found in "
                                   f"'{os.path.relpath(ctx.model_path, ctx.model_dir)}'")
        return PythonModelState(ctx, self.settings, self.interpreter(ctx))


def _merge_auto_complete(config: mc.ModelConfig, result: dict, name: str) -> None:
    """Take what auto-complete may change: batching, inputs, outputs, transaction policy."""
    try:
        config.max_batch_size = int(result.get("max_batch_size", config.max_batch_size))
        for field in ("input", "output"):
            tensors = result.get(field, [])
            del getattr(config, field)[:]
            for tensor in tensors:
                json_format.ParseDict(tensor, getattr(config, field).add(), ignore_unknown_fields=True)
        if "dynamic_batching" in result and not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()
            json_format.ParseDict(result["dynamic_batching"], config.dynamic_batching, ignore_unknown_fields=True)
        if "model_transaction_policy" in result:
            config.model_transaction_policy.SetInParent()
            json_format.ParseDict(result["model_transaction_policy"], config.model_transaction_policy,
                                  ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise ModelConfigError(f"auto-complete of model '{name}' returned an invalid configuration: {e}") from None


def _spawn(python: str) -> tuple[Channel, Channel, socket.socket, subprocess.Popen[bytes]]:
    """Start a stub; returns the server's ends of its control, event and hand-off sockets (the last passes
    the file descriptors of shared-memory blocks, ``core.shared_memory``, that inputs lie in)."""
    control_here, control_there = socket.socketpair()
    events_here, events_there = socket.socketpair()
    handoff_here, handoff_there = socket.socketpair()
    for sock in (events_here, events_there):
        # Tensors of decoupled responses and BLS calls cross here: room for a few MiB in flight spares the
        # sender waiting on the reader every 200 KiB (the kernel caps it at net.core.wmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _EVENT_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _EVENT_BUFFER_BYTES)
    env = activated(dict(os.environ), python)
    env["PYTHONPATH"] = _SRC_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    fds = (control_there.fileno(), events_there.fileno(), handoff_there.fileno())
    try:
        popen = subprocess.Popen(
            [python, "-m", "tritium.backends.python.stub", *map(str, fds)],
            pass_fds=fds, stdin=subprocess.DEVNULL, env=env,
        )
    finally:
        control_there.close()
        events_there.close()
        handoff_there.close()
    # big messages from the stub (BLS tensors) are received into shared memory: a Python model they go to
    # reads them there
    return Channel(control_here), Channel(events_here, shared_memory.take), handoff_here, popen


def _recv_or_exit(control: Channel, popen: subprocess.Popen[bytes], what: str) -> Any:
    try:
        return control.recv()
    except (EOFError, OSError):
        code = _reap(popen, 5.0)
        raise UnavailableError(f"{what}: the stub process exited ({_exit_text(code)})") from None


def _reap(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        return popen.wait()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class PythonModelState(ModelState):
    def __init__(self, ctx: ModelContext, settings: Settings, python: str) -> None:
        super().__init__(ctx)
        self.settings = settings
        self.python = python
        self.config_json = json.dumps(config_to_dict(ctx.config))
        self.decoupled = ctx.config.model_transaction_policy.decoupled

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        instance = PythonInstanceState(spec, self)
        instance.start()
        return instance


class _Stub:
    """One running stub process and what the server holds for it."""

    def __init__(self, control: Channel, events: Channel, handoff: socket.socket, popen: subprocess.Popen[bytes],
                 in_arena: Arena, out_arena: Arena, replies: protocol.BlsArena) -> None:
        self.control = control
        self.events = events
        self.handoff = handoff
        #: Shared-memory blocks (``core.shared_memory``) whose file descriptors this stub has been handed.
        self.blocks: set[int] = set()
        #: When the execution in flight was sent, and a moving average of how long replies take (s).
        self.sent_at = 0.0
        self.reply_s = 0.0
        self.popen = popen
        #: Input arenas by number; one is free when no response array views it any more.
        self.arenas = [in_arena]
        self.out_arena = out_arena
        self.send_lock = threading.Lock()
        self.stopping = False
        #: The event loop whose reader watches ``control`` (registered by the first execute_async); while
        #: it is set, only that reader may close ``control`` (an fd closed under a registered reader
        #: could be reused by the next stub's socket).
        self.watched_by: asyncio.AbstractEventLoop | None = None
        #: What the reader completes with the next reply: (requests, state, done) of the execution in flight.
        self.pending: tuple | None = None
        #: BLS calls in progress by id, so model code can cancel them (``ResponseIterator.cancel``).
        self.bls_calls: dict[int, Any] = {}
        #: Where the big tensors of BLS responses go to this stub.
        self.replies = replies
        #: The stub's arena of big BLS input tensors, mapped when a call first names it (read in place).
        self.calls_arena: Arena | None = None

    def close_sockets(self) -> None:
        self.control.close()
        self.events.close()
        self.handoff.close()
        self.replies.close()

    def send_event(self, message: tuple) -> None:
        with self.send_lock:
            try:
                self.events.send(message)
            except OSError:
                pass  # the stub is gone; its death is reported elsewhere


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
        self._stub: _Stub | None = None
        self._dead_reason = ""
        self._keys = itertools.count()
        #: key -> request, for requests of a decoupled model whose final response has not come yet
        self._streams: dict[int, InferenceRequest] = {}
        self._streams_lock = threading.Lock()
        #: What the model sees as requested when a request names no outputs (Triton: all of them).
        self._all_outputs = [o.name for o in ctx.config.output]
        #: ``sequence_batching { iterative_sequence: true }``: the model may reschedule requests.
        self._iterative = ctx.config.sequence_batching.iterative_sequence
        handle = ctx.inference
        #: Where this instance's model-defined metrics go (shown by the metrics frontend).
        self._metrics: CustomMetrics = getattr(handle, "metrics", None) or CustomMetrics()

    # -- process lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        ctx, spec, settings = self.ctx, self.spec, self.settings
        in_arena = Arena.create(settings.shm_prefix, settings.shm_default)
        out_arena = Arena.create(settings.shm_prefix, settings.shm_default)
        try:
            control, events, handoff, popen = _spawn(self.model.python)
            in_arena.ident = 0
            stub = _Stub(control, events, handoff, popen, in_arena, out_arena,
                         protocol.BlsArena(settings.shm_prefix, settings.shm_default, settings.shm_growth))
            # read events from the start: initialize() may already call the server (metrics, model management)
            threading.Thread(target=self._read_events, args=(stub,), name=f"python-events-{spec.name}",
                             daemon=True).start()
            control.send({
                "mode": "model",
                "model_file": ctx.model_path,
                "version_dir": ctx.import_dir,
                "decoupled": self.model.decoupled,
                "in_arena": (0, in_arena.path, in_arena.size),
                "out_arena": (out_arena.path, out_arena.size),
                "growth": settings.shm_growth,
                "shm_default": settings.shm_default,
                "shm_prefix": settings.shm_prefix,
                "spin_s": settings.stub_spin_us / 1e6,
                "args": {
                    "model_config": self.model.config_json,
                    "model_instance_kind": spec.kind.removeprefix("KIND_"),
                    "model_instance_name": spec.name,
                    "model_instance_device_id": str(spec.device_id),
                    "model_repository": ctx.model_dir,
                    "model_version": str(ctx.version),
                    "model_name": ctx.name,
                },
            })
            try:
                status, payload = _recv_or_exit(control, popen, f"instance '{spec.name}' of model '{ctx.name}'")
            except TritiumError:
                stub.stopping = True
                stub.close_sockets()
                self._metrics.release(stub)
                raise
        finally:
            protocol.unlink_quietly(in_arena.path)
            protocol.unlink_quietly(out_arena.path)
        if status != "ok":
            stub.stopping = True
            stub.close_sockets()
            _reap(popen, 10.0)
            self._metrics.release(stub)
            raise InternalError(payload)
        self._stub = stub
        self._dead_reason = ""

    def _died(self, stub: _Stub, during: str) -> UnavailableError:
        """Record that ``stub`` is gone; its open streams fail; the next execute starts a new one."""
        code = _reap(stub.popen, 5.0)
        error = UnavailableError(
            f"the stub process of model instance '{self.spec.name}' of model '{self.ctx.name}' exited unexpectedly "
            f"({_exit_text(code)}) {during}; the instance is restarted for the next request")
        if self._stub is stub:
            self._stub = None
            self._dead_reason = error.message
            log.error("%s", error.message)
        stub.handoff.close()
        stub.replies.close()
        if stub.watched_by is None:
            stub.control.close()
        self._metrics.release(stub)
        self._fail_streams(error)
        return error

    def _fail_streams(self, error: TritiumError) -> None:
        with self._streams_lock:
            streams, self._streams = self._streams, {}
        for request in streams.values():
            if request.response_stream is not None:
                request.response_stream.fail(error)

    def _ensure_stub(self) -> _Stub:
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

    def _unwatch(self, stub: _Stub) -> None:
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
            stub.control.send(("finalize",))
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
        _reap(stub.popen, self.settings.stub_timeout)
        self._metrics.release(stub)
        self._fail_streams(UnavailableError(f"model '{self.ctx.name}' was unloaded"))

    # -- execute -----------------------------------------------------------------------------------

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:  # type: ignore[override]
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

    def _poll_reply(self, stub: _Stub, loop: asyncio.AbstractEventLoop, pending: tuple, deadline: float,
                    last: float) -> None:
        """One poll for the reply to ``pending``, then another on the loop's next turn, until the reply came,
        ``deadline`` passed, or the loop had other work in between (``last``: when this poll was scheduled).
        Each poll yields the CPU, to the stub or the clients if they share it."""
        if stub.pending is not pending:
            return
        now = _clock()
        if now - last > _BUSY_GAP_S:
            return  # the loop has other work: the reader completes this one
        self._on_reply(stub, loop)
        if stub.pending is pending and now < deadline:
            os.sched_yield()
            loop.call_soon(self._poll_reply, stub, loop, pending, deadline, _clock())

    def _on_reply(self, stub: _Stub, loop: asyncio.AbstractEventLoop) -> None:
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

    def _free_arena(self, stub: _Stub, needed: int) -> Arena | None:
        """A pool arena no response views any more: the first big enough, else any free one."""
        fallback = None
        for arena in stub.arenas:
            holder = arena.holder
            if holder is None or holder() is None:
                if arena.size >= needed:
                    return arena
                fallback = fallback or arena
        return fallback

    def _prepare(self, stub: _Stub, requests: Sequence[InferenceRequest]) -> tuple[tuple, tuple]:
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
                    found = shared_memory.locate(data)
                    if found is not None:
                        block, offset = found
                        if block.ident not in stub.blocks and block not in handed:
                            handed.append(block)
                        placed.append((t.name, protocol.wire_type(data), data.shape, offset, data.nbytes, block.ident))
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
        for request, count in zip(requests, counts):
            key = request.backend_state
            if key is None:
                key = next(self._keys)
            if decoupled and request.response_stream is not None:
                if request.backend_state is None:  # a rescheduled request keeps its key, stream and cancel hook
                    with self._streams_lock:
                        self._streams[key] = request
                    request.response_stream.on_cancel(functools.partial(stub.send_event, ("cancel", key)))
                    if self._iterative:
                        request.backend_state = key
                keys.append(key)
            elif not decoupled:  # a caller that stops waiting (gRPC cancel or deadline) reaches is_cancelled()
                request.on_cancel = functools.partial(stub.send_event, ("cancel", key))
            params = request.parameters
            flags = 0
            correlation_id = 0
            if params and not _SEQUENCE_PARAMETERS.isdisjoint(params):
                # Triton gives these to the model as correlation_id() and flags(), not as parameters
                flags = (1 if params.get("sequence_start") else 0) | (2 if params.get("sequence_end") else 0)
                correlation_id = params.get("sequence_id", 0)
                params = {k: v for k, v in params.items() if k not in _SEQUENCE_PARAMETERS}
            requested = request.requested_outputs or self._all_outputs
            batch.append((key, request.id, correlation_id, flags, params, requested, metas[position : position + count]))
            position += count
        return ("exec", arena.ident, new, used, blocks, batch), (arena, created, keys, handed)

    @staticmethod
    def _send(stub: _Stub, message: tuple, state: tuple) -> None:
        """The execute message, after the file descriptors of the blocks it names for the first time."""
        handed = state[3]
        if handed:
            socket.send_fds(stub.handoff, [b"b"], [block.fd for block in handed])
            stub.blocks.update(block.ident for block in handed)
        stub.control.send(message)

    def _abandon(self, state: tuple) -> None:
        for arena in state[1]:
            protocol.unlink_quietly(arena.path)

    def _finish(self, stub: _Stub, requests: Sequence[InferenceRequest], state: tuple,
                reply: tuple) -> list[InferenceResponse | TritiumError]:
        arena, created, keys, _ = state
        for new in created:  # the stub has mapped it by now
            protocol.unlink_quietly(new.path)
        _, new_out, results, error = reply
        if new_out is not None:
            stub.out_arena = Arena.attach(*new_out, unlink=True)
        if error is not None:
            if keys:
                with self._streams_lock:
                    for key in keys:
                        self._streams.pop(key, None)
            raise InternalError(f"Failed to process the request(s) for model '{self.spec.name}', "
                                f"message: {error}")
        if self.model.decoupled:
            return [InferenceResponse(self.ctx.name, self.ctx.version, r.id) if result[0] == "ok"
                    else self._reschedule(r) for r, result in zip(requests, results)]
        holder: list[np.ndarray] = []
        response = self._response
        return [response(stub, arena, holder, request, result) for request, result in zip(requests, results)]

    def _response(self, stub: _Stub, arena: Arena, holder: list[np.ndarray], request: InferenceRequest,
                  result: tuple) -> InferenceResponse | TritiumError:
        if result[0] != "ok":
            return TritiumError(result[2], Status[result[1]]) if result[0] == "err" else self._reschedule(request)
        outputs = []
        for name, kind, shape, offset, nbytes, where in result[1]:
            if where >= protocol.BLOCK:  # a view of an input where the server received it
                base = self._block_array(where - protocol.BLOCK)
                array = np.ndarray(shape, protocol.NUMPY_TYPES[kind], base, offset)
            elif kind == "BYTES":  # parsed into new objects: nothing keeps the arena
                array = protocol.view(arena.mm if where else stub.out_arena.mm, kind, shape, offset, nbytes)
            elif where:
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
            with self._streams_lock:  # no final response comes for it any more
                for key, known in list(self._streams.items()):
                    if known is request:
                        del self._streams[key]
        return InvalidArgumentError(message)

    @staticmethod
    def _block_array(ident: int) -> np.ndarray:
        block = shared_memory.block(ident)
        base = block.array() if block is not None else None
        if base is None:  # the request's input that lies there keeps it in use: this is a bug
            raise InternalError(f"an output names shared-memory block {ident}, which is not in use")
        return base

    # -- events: decoupled responses, BLS, logs ---------------------------------------------------------

    def _read_events(self, stub: _Stub) -> None:
        while True:
            try:
                message = stub.events.recv()
            except (EOFError, OSError, TypeError):  # TypeError: closed here by finalize
                if not stub.stopping and self._stub is stub:  # (a failed start reports itself)
                    self._died(stub, "")
                return
            kind = message[0]
            try:
                if kind == "resp":
                    self._stream_response(*message[1:])
                elif kind == "bls":
                    self._start_bls(stub, message[1:])
                elif kind == "bls_free":
                    stub.replies.free(message[1])
                elif kind == "bls_cancel":
                    call = stub.bls_calls.get(message[1])
                    if call is not None:
                        call.cancel()
                elif kind == "metric_update":
                    self._metrics.update(*message[1:])
                elif kind == "call":
                    self._call(stub, *message[1:])
                elif kind == "metric_family_del":
                    self._metrics.delete_family(stub, message[1])
                elif kind == "log":
                    model_log.log(_LOG_LEVELS[message[1] if 0 <= message[1] < 4 else 0], "%s", message[2])
            except Exception:  # a bad message must not end the reader
                log.exception("model instance '%s': bad message from the stub", self.spec.name)

    def _stream_response(self, key: int, metas: list, data: list, final: bool, error: Any, has_response: bool) -> None:
        with self._streams_lock:
            request = self._streams.pop(key, None) if final else self._streams.get(key)
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

    def _call(self, stub: _Stub, ident: int, op: str, args: tuple) -> None:
        """A call from model code that waits for its answer: metrics here, model management on the loop."""
        def answer(error: TritiumError | None, result: Any = None) -> None:
            stub.send_event(("call_resp", ident, error.message if error is not None else None, result))

        try:
            if op == "metric_family":
                self._metrics.create_family(stub, *args)
                return answer(None)
            if op == "metric":
                self._metrics.create_metric(*args)
                return answer(None)
            if op == "metric_value":
                return answer(None, self._metrics.value(*args))
            handle = self.ctx.inference
            if handle is None:
                raise UnavailableError("model management is not available in this server")
            if op == "is_model_ready":
                future = asyncio.run_coroutine_threadsafe(_ready(handle, *args), handle.loop)
            elif op == "load_model":
                future = asyncio.run_coroutine_threadsafe(handle.load_model(*args), handle.loop)
            elif op == "unload_model":
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

    def _start_bls(self, stub: _Stub, message: tuple) -> None:
        handle = self.ctx.inference
        ident = message[0]
        arena = message[-1]
        error = None
        if arena is not None:  # the stub's arena of call inputs, new or grown: mapped before the call is read
            try:
                stub.calls_arena = Arena.attach(*arena, unlink=True)
            except OSError as e:
                protocol.unlink_quietly(arena[0])
                error = ("INTERNAL", f"the BLS request's inputs could not be read: {e}")
        if handle is None:
            error = ("UNAVAILABLE", "BLS is not available in this server")
        if error is not None:
            stub.send_event(("bls_resp", ident, [], [], error, True, False, None))
            return
        call = asyncio.run_coroutine_threadsafe(self._bls(handle, stub, stub.calls_arena, *message[:-1]), handle.loop)
        stub.bls_calls[ident] = call
        call.add_done_callback(lambda _: stub.bls_calls.pop(ident, None))
        if call.done():  # finished before it was recorded
            stub.bls_calls.pop(ident, None)

    async def _bls(self, handle: Any, stub: _Stub, calls_arena: Arena | None, ident: int, model: str, version: int,
                   request_id: str, parameters: dict, requested: list[str] | None, metas: list, data: list,
                   decoupled: bool, timeout_us: int, correlation_id: Any, flags: int) -> None:
        def reply(response: InferenceResponse | None, final: bool, error: tuple[str, str] | None = None) -> None:
            metas, data, arena = stub.replies.carry([(t.name, t.data) for t in response.outputs]) if response \
                else ([], [], None)
            stub.send_event(("bls_resp", ident, metas, data, error, final, response is not None, arena))

        try:
            # Inputs in the stub's arena are read in place: the stub keeps their region until the final response.
            # (A callee still running after a timeout or cancellation may then read them overwritten; its result
            # goes nowhere, and the mapping stays valid while any view of it lives.)
            inputs = [Tensor(n, DataType.from_wire(k), a)
                      for n, k, a in protocol.read_tensors(metas, data, calls_arena)]
            params = dict(parameters)
            if correlation_id:
                params.setdefault("sequence_id", correlation_id)
            if timeout_us and timeout_us > 0:
                # As in Triton, the request's own timeout: the called model's queue policy may apply it
                # while the request waits there (allow_timeout_override); it is not a deadline on the call.
                params["timeout"] = timeout_us
            request = InferenceRequest(model, version, request_id, inputs, requested, params)
            if decoupled:
                async for item in handle.stream(request):
                    if item.error is not None:
                        reply(None, item.final, (item.error.status.value, item.error.message))
                        if item.final:
                            return
                        continue
                    reply(item.response, item.final)
                return
            response = await handle.infer(request)
            reply(response, True)
        except asyncio.CancelledError:  # the caller cancelled it: its iteration ends here
            reply(None, True)
            raise
        except TritiumError as e:
            reply(None, True, (e.status.value, e.message))
        except Exception as e:
            log.exception("BLS call to model '%s' failed", model)
            reply(None, True, ("INTERNAL", f"{type(e).__name__}: {e}"))


async def _ready(handle: Any, name: str, version: int) -> bool:
    return bool(handle.model_ready(name, version))


__all__ = ["PythonBackend"]
