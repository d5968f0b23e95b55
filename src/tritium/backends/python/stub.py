"""The process that runs one instance of a Python-backend model (Triton's ``triton_python_backend_stub``).

Started by the server as ``python -m tritium.backends.python.stub <control fd> <event fd> <hand-off fd>``.
The control socket carries the strictly request/reply traffic (start, execute, finalize); the event socket
carries what may happen at any time: responses of decoupled models, BLS calls and their answers, calls,
metrics, log lines (every message: ``messages``); the hand-off socket, shared-memory blocks' descriptors.
When the server goes away (even by SIGKILL) both sockets reach EOF and the stub exits.
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import inspect
import itertools
import mmap
import os
import queue
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any

import numpy as np

from . import pb_utils, protocol
from .messages import Kind, Location, Outcome
from .protocol import Arena, Channel

#: Where ``_frames`` stops: frames of this file are the stub's, not the model's.
_THIS_FILE = os.path.abspath(__file__)


def format_exception(error: BaseException) -> str:
    """Triton's form: ``Type: message`` then the model's frames, innermost first."""
    if isinstance(error, pb_utils.TritonModelException):
        head = str(error)
    else:
        head = f"{type(error).__name__}: {error}"
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) != _THIS_FILE]
    if all(f.filename.startswith("<frozen importlib") for f in frames):
        # only the importer's own frames (a SyntaxError in model.py): Python's import leaves them out too
        return head
    return head + "\n\nAt:\n" + "".join(f"  {_shown(f.filename)}({f.lineno}): {f.name}\n" for f in reversed(frames))


#: The model's folder, set at start: error texts name the model's files relative to it.
_model_dir = ""


def _shown(filename: str) -> str:
    """A source file as error texts (which reach clients) show it: relative to the model folder, or to the
    import path entry it was found under (``numpy/...``); never an absolute path of the server."""
    if not os.path.isabs(filename):
        return filename
    roots = [_model_dir] if _model_dir else []
    roots += sorted((p for p in sys.path if p and os.path.isabs(p)), key=len, reverse=True)
    for root in roots:
        prefix = root.rstrip(os.sep) + os.sep
        if filename.startswith(prefix):
            return filename[len(prefix):]
    return os.path.basename(filename)


def _error_tuple(error: pb_utils.TritonError | None) -> tuple[str, str] | None:
    if error is None:
        return None
    code = error.code()
    name = pb_utils.CODE_NAMES[code] if 0 <= code < len(pb_utils.CODE_NAMES) else "INTERNAL"
    return (name, error.message())


def _response_arrays(response: Any) -> list[tuple[str, np.ndarray]]:
    if not isinstance(response, pb_utils.InferenceResponse):
        raise pb_utils.TritonModelException(
            f"Expected an InferenceResponse object in the execute function return list, found type "
            f"'{type(response).__name__}'.")
    return [(t.name(), t.as_numpy()) for t in response.output_tensors()]


#: A request's result when the model rescheduled it (``set_release_flags(TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``).
_RESCHEDULED = (Outcome.RESCHEDULED,)


class Runtime:
    """What ``pb_utils`` calls to reach the server; owns the event socket of this stub."""

    def __init__(self, events: Channel, decoupled: bool) -> None:
        self.decoupled = decoupled
        self._events = events
        self._lock = threading.Lock()
        self._pending: dict[int, Any] = {}
        self._ids = itertools.count()
        #: Keys of requests whose client went away (``is_cancelled``); the server says so by an event.
        self.cancelled: set[int] = set()
        #: For Triton's wording of errors from the server.
        self.instance_name = ""
        #: The server's arena of big BLS response tensors (its ``protocol.BlsArena``), once it has named one;
        #: responses view their tensors there, and each whose views are all gone adds to ``_freed``.
        self._replies: protocol.Arena | None = None
        self._freed: collections.deque[int] = collections.deque()
        #: Where this process writes the big input tensors of its BLS calls (set up by :class:`Stub`), and the
        #: calls that hold a region of it until their final response (call -> the region's start).
        self.calls_arena: protocol.BlsArena | None = None
        self._holding: dict[int, int] = {}

    def send(self, message: tuple) -> None:
        with self._lock:
            self._flush_frees()
            self._events.send(message)

    def _released(self, start: int) -> None:
        """The last view of a BLS response's tensors in the server's reply arena is gone.  This runs as a
        finalizer, on whatever thread dropped it, possibly inside a garbage collection in the middle of a send:
        it only notes the region; the next message this process sends is preceded by the news
        (:meth:`_flush_frees`)."""
        self._freed.append(start)

    def _flush_frees(self) -> None:
        """Under ``_lock``: tell the server which reply regions it may reuse."""
        freed = self._freed
        starts = []
        while freed:
            starts.append(freed.popleft())
        if starts:
            self._events.send((Kind.BLS_FREE, starts))

    def send_response(self, key: int, response: pb_utils.InferenceResponse | None, final: bool) -> None:
        metas: list = []
        data: list = []
        error = None
        if response is not None:
            error = _error_tuple(response.error())
            metas, data = protocol.inline_tensors(_response_arrays(response))
        self.send((Kind.RESPONSE, key, metas, data, final, error, response is not None))
        if final:
            self.cancelled.discard(key)

    def call(self, op: str, *args: Any) -> Any:
        """Ask the server (metrics, model management) and wait for its answer; raises ``_CallError``."""
        ident = next(self._ids)
        waiter: Future = Future()
        self._pending[ident] = waiter
        self.send((Kind.CALL, ident, op, args))
        error, result = waiter.result()
        if error is not None:
            raise pb_utils._CallError(error)
        return result

    def bls(self, request: pb_utils.InferenceRequest, decoupled: bool) -> Any:
        ident = next(self._ids)
        waiter: Any = queue.SimpleQueue() if decoupled else Future()
        self._pending[ident] = waiter
        arrays = [(t.name(), t.as_numpy()) for t in request.inputs()]
        with self._lock:  # placed and sent in one step: a message that names a new arena goes out first
            self._flush_frees()
            if self.calls_arena is not None:
                metas, data, arena = self.calls_arena.carry(arrays)
                start = protocol.region_start(metas)
                if start is not None:
                    self._holding[ident] = start
            else:
                (metas, data), arena = protocol.inline_tensors(arrays), None
            self._events.send((Kind.BLS_CALL, ident, request.model_name, int(request.model_version),
                               request.request_id(), request._parameters, request._requested or None, metas, data,
                               decoupled, request.timeout(), request.correlation_id(), request.flags(), arena))
        return ident, waiter

    def log(self, level: int, message: str) -> None:
        self.send((Kind.LOG, level, message))

    def read_events(self) -> None:
        """Answers to BLS calls; EOF means the server is gone, so this process ends too."""
        while True:
            try:
                message = self._events.recv()
            except (EOFError, OSError):
                os._exit(0)
            kind = message[0]
            if kind == Kind.CANCEL:
                self.cancelled.add(message[1])
                continue
            if kind == Kind.CALL_RESPONSE:
                waiter = self._pending.pop(message[1], None)
                if waiter is not None:
                    waiter.set_result((message[2], message[3]))
                continue
            self._bls_response(*message[1:])  # a messages.BlsResponse

    def _bls_response(self, ident: int, metas: list, data: list, error: tuple[str, str] | None, final: bool,
                      has_response: bool, arena: tuple[str, int] | None) -> None:
        """A response to a BLS call of this process: to the waiter of the call."""
        if has_response and error is None:
            try:
                if arena is not None:  # the server's reply arena, new or grown: map it (the name goes at once)
                    self._replies = protocol.Arena.attach(*arena, unlink=True)
                # Views of the reply arena: its region stays the model's until they are all gone.
                tensors = [pb_utils.Tensor(n, a)
                           for n, _, a in protocol.read_tensors(metas, data, self._replies, self._released)]
            except (OSError, ValueError) as e:
                has_response, error = False, ("INTERNAL", f"the BLS response could not be read: {e}")
                start = protocol.region_start(metas)
                if start is not None:  # its region is lost to the model: free again
                    self.send((Kind.BLS_FREE, [start]))
        response: pb_utils.InferenceResponse | None = None
        if error is not None:
            code = pb_utils.CODE_NAMES.index(error[0]) if error[0] in pb_utils.CODE_NAMES else 1
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(error[1], code))
        elif has_response:
            response = pb_utils.InferenceResponse(tensors)
        if final and ident in self._holding:  # the server is done with the call's inputs
            self.calls_arena.free([self._holding.pop(ident)])  # type: ignore[union-attr]
        waiter = self._pending.get(ident)
        if isinstance(waiter, Future):
            del self._pending[ident]
            waiter.set_result(response or pb_utils.InferenceResponse())
        elif waiter is not None:
            if response is None and final:
                response = pb_utils.InferenceResponse()  # Triton yields the final flag as an empty response
            if response is not None:
                waiter.put(response)
            if final:
                del self._pending[ident]
                waiter.put(None)


def _import_model(model_file: str, version_dir: str) -> Any:
    global _model_dir
    _model_dir = os.path.dirname(version_dir.rstrip(os.sep))
    if not os.path.exists(model_file):
        raise FileNotFoundError(f"Python model file not found in '{_shown(model_file)}'")
    if version_dir not in sys.path:
        sys.path.append(version_dir)
    spec = importlib.util.spec_from_file_location("model", model_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["model"] = module
    spec.loader.exec_module(module)
    cls = getattr(module, "TritonPythonModel", None)
    if cls is None:
        # Triton's words: it imports the file as module <version>.<file name>
        module_name = f"{os.path.basename(version_dir.rstrip('/'))}.{os.path.splitext(os.path.basename(model_file))[0]}"
        raise AttributeError(f"module '{module_name}' has no attribute 'TritonPythonModel'")
    return cls


class WaitPolicy:
    """How long a stub polls for its next execute after a reply before it sleeps in ``recv``.

    It polls (up to ``spin_s``, the backend's ``stub-spin-microseconds``) only while executes come crowded:
    most of the recent ones held several requests (the server's queue fills while one runs) and came soon
    after the reply before.  With one request in flight every execute holds one request and comes a client
    round trip later: then the stub sleeps at once, and the server's send wakes it, often on the CPU the
    server's loop is about to leave idle, which costs less CPU than polling or napping through the client's
    round trip, for the same latency (ARCHITECTURE.md, decisions)."""

    def __init__(self, spin_s: float) -> None:
        self.spin_s = spin_s
        #: Moving averages: seconds from a reply to the next execute, and the share of executes of several requests.
        self.gap_s = 1.0
        self.crowded = 0.0

    def next(self, gap_s: float, requests: int) -> float:
        """The poll before the execute after this one, from this one's gap and number of requests."""
        self.gap_s += (gap_s - self.gap_s) * 0.25
        self.crowded += ((1.0 if requests > 1 else 0.0) - self.crowded) * 0.25
        return self.spin_s if self.crowded > 0.5 and self.gap_s < self.spin_s else 0.0


class Stub:
    def __init__(self, control: Channel, handoff: socket.socket, runtime: Runtime, init: dict) -> None:
        self.control = control
        #: Where the server hands over the file descriptors of its shared-memory blocks.
        self.handoff = handoff
        #: The server's shared-memory blocks (request bodies) by number, mapped here.
        self.blocks: dict[int, Arena] = {}
        self.runtime = runtime
        self.init = init
        self.model: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The server's input arenas by number; it names a new (or grown) one in the execute that first uses it.
        self.arenas: dict[int, Arena] = {}
        self.in_used = 0
        #: id(input array) -> (array, datatype, offset, nbytes, location, block): outputs that are inputs need
        #: no search
        self.inputs: dict[int, tuple] = {}
        #: The blocks this batch's inputs lie in.
        self.used_blocks: set[int] = set()
        self.in_arena = self._attach(*init["in_arena"])
        self.out_arena = Arena.attach(*init["out_arena"])
        self.growth = int(init["growth"])
        self.shm_prefix = init["shm_prefix"]
        runtime.calls_arena = protocol.BlsArena(self.shm_prefix, int(init["shm_default"]), self.growth)
        #: The longest it polls for the next execute before it sleeps (the backend's ``stub-spin-microseconds``).
        self.spin_s = float(init["spin_s"])
        #: Between those polls, after the first few, it naps this long (the backend's ``stub-nap-microseconds``).
        self.nap_s = float(init.get("nap_s", 0.0))

    def _call(self, function: Any, *args: Any) -> Any:
        result = function(*args)
        if result is not None and not isinstance(result, list) and inspect.isawaitable(result):
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
            result = self.loop.run_until_complete(result)
        return result

    def start(self) -> None:
        cls = _import_model(self.init["model_file"], self.init["version_dir"])
        self.model = cls()
        if hasattr(self.model, "initialize"):
            self._call(self.model.initialize, self.init["args"])

    def serve(self) -> None:
        control = self.control
        clock = time.perf_counter
        spin_s = self.spin_s
        nap_s = self.nap_s
        if nap_s:
            _precise_timers()
        policy = WaitPolicy(spin_s)
        poll_s = 0.0
        while True:
            replied = clock()
            try:
                message = control.recv(poll_s, nap_s)
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == Kind.EXECUTE:
                poll_s = policy.next(clock() - replied, len(message[5]))  # a messages.Execute: its batch
                control.send(self.execute(*message[1:]))
            elif kind == Kind.FINALIZE:
                error = None
                if hasattr(self.model, "finalize"):
                    try:
                        self._call(self.model.finalize)
                    except Exception as e:
                        error = format_exception(e)
                control.send((Kind.FINALIZED, error))
                return

    def _attach(self, ident: int, path: str, size: int) -> Arena:
        arena = Arena.attach(path, size)
        arena.ident = ident
        self.arenas[ident] = arena
        return arena

    def _map_blocks(self, blocks: list[tuple[int, int]]) -> None:
        _, fds, _, _ = socket.recv_fds(self.handoff, 16, len(blocks))
        for (ident, size), fd in zip(blocks, fds, strict=False):
            try:
                self.blocks[ident] = Arena("", size, mmap.mmap(fd, size))
            finally:
                os.close(fd)

    def execute(self, ident: int, new_arena: tuple[str, int] | None, used: int, blocks: list[tuple[int, int]] | None,
                batch: list[tuple]) -> tuple:
        """Run one batch whose inputs lie in arena ``ident`` (its first ``used`` bytes) or in the server's
        shared blocks; the rest of that arena is free for this batch's outputs."""
        arena = self._attach(ident, *new_arena) if new_arena is not None else self.arenas[ident]
        if blocks:
            self._map_blocks(blocks)
        self.in_arena = arena
        self.in_used = used
        requests = []
        self.inputs = inputs = {}
        self.used_blocks = used_blocks = set()
        mm = arena.mm
        view = protocol.view
        wrap = pb_utils.Tensor._wrap
        incoming = pb_utils.InferenceRequest._incoming
        block_location = Location.BLOCK
        for key, request_id, correlation_id, flags, parameters, requested, metas in batch:
            tensors = []
            for name, kind, shape, offset, nbytes, location, block in metas:
                if location == block_location:
                    buffer = self.blocks[block].mm
                    used_blocks.add(block)
                else:
                    buffer = mm
                array = view(buffer, kind, shape, offset, nbytes)
                inputs[id(array)] = (array, kind, offset, nbytes, location, block)
                tensors.append(wrap(name, array))
            requests.append(incoming(key, tensors, requested, request_id, correlation_id, flags, parameters))
        try:
            responses = self._call(self.model.execute, requests)
        except Exception as e:
            return (Kind.EXECUTED, None, None, format_exception(e))
        finally:
            if self.runtime.cancelled and not self.runtime.decoupled:  # these requests are answered now
                self.runtime.cancelled.difference_update(entry[0] for entry in batch)
        if self.runtime.decoupled:
            if responses is not None:
                return (Kind.EXECUTED, None, None, f"Python model '{self.runtime.instance_name}' is using the "
                                                   "decoupled mode and the execute function must return None.")
            return (Kind.EXECUTED, None, [_RESCHEDULED if r._rescheduled() else (Outcome.OK, []) for r in requests],
                    None)
        if responses is None or len(responses) != len(requests):
            got = "None" if responses is None else str(len(responses))
            return (Kind.EXECUTED, None, None,
                    f"Number of InferenceResponse objects do not match number of InferenceRequest objects. "
                    f"InferenceRequest(s) size is:{len(requests)}, and InferenceResponse(s) size is:{got}\n")
        for request, response in zip(requests, responses, strict=False):
            if response is not None and request._rescheduled():
                return (Kind.EXECUTED, None, None, "Expected a None object in the execute function return list for "
                                            f"reschduled request, found type '{type(response)}'.")
        try:
            return self._write_outputs(responses, requests)
        except Exception as e:
            return (Kind.EXECUTED, None, None, format_exception(e))
        finally:
            self.inputs = {}

    def _locate(self, array: np.ndarray) -> tuple[int, int, int]:
        """Where an output that views an input's memory lies: (location, block, offset), offset -1 when
        elsewhere."""
        offset = self.in_arena.contains(array)
        if offset >= 0:
            return Location.IN_ARENA, -1, offset
        for ident in self.used_blocks:  # only this batch's: the others may be reused by now
            offset = self.blocks[ident].contains(array)
            if offset >= 0:
                return Location.BLOCK, ident, offset
        return Location.OUT_ARENA, -1, -1

    def _write_outputs(self, responses: list[Any], requests: list[Any]) -> tuple:
        """Outputs that are views of this batch's input arena stay where they are; the others are written
        into that arena after the inputs (which the server hands out without copying) or, when they do not
        fit there, into the output arena (which the server copies from)."""
        results: list[Any] = []
        #: Outputs to copy: (their request's metas, index there, name, datatype, shape, data, offset, nbytes);
        #: their metas are made once it is known which arena they go to.
        pending: list[tuple[list, int, str, str, tuple, Any, int, int]] = []
        total = 0
        in_arena = self.in_arena
        inputs = self.inputs
        for response, request in zip(responses, requests, strict=False):
            if response is None and request._rescheduled():
                results.append(_RESCHEDULED)
                continue
            if response.has_error():
                results.append((Outcome.ERROR, *_error_tuple(response.error())))  # type: ignore[misc]
                continue
            metas: list[Any] = []
            for name, array in _response_arrays(response):
                same = inputs.get(id(array))
                if same is not None and same[0] is array and same[1] != "BYTES":
                    metas.append((name, same[1], array.shape, same[2], same[3], same[4], same[5]))
                    continue
                location, block, offset = self._locate(array)
                if offset >= 0:
                    metas.append((name, protocol.wire_type(array), array.shape, offset, array.nbytes, location, block))
                    continue
                kind, data = protocol.encoded(array)
                nbytes = len(data) if isinstance(data, bytes) else data.nbytes
                pending.append((metas, len(metas), name, kind, array.shape, data, total, nbytes))
                metas.append(None)
                total += protocol.aligned(nbytes)
            results.append((Outcome.OK, metas))
        new_arena = None
        base = protocol.aligned(self.in_used)
        if pending and base + total <= in_arena.size:  # into the input arena, after the inputs
            location, mm = Location.IN_ARENA, in_arena.mm
        else:
            base, location = 0, Location.OUT_ARENA
            if total > self.out_arena.size:
                size = protocol.grown_size(self.out_arena.size, total, self.growth)
                self.out_arena = Arena.create(self.shm_prefix, size)
                new_arena = (self.out_arena.path, size)
            mm = self.out_arena.mm
        for metas, index, name, kind, shape, data, offset, nbytes in pending:
            at = base + offset
            metas[index] = (name, kind, shape, at, nbytes, location, -1)
            if nbytes:  # bytes, or a C-contiguous array (protocol.encoded): one memcpy
                mm[at : at + nbytes] = data
        return (Kind.EXECUTED, new_arena, results, None)


def _precise_timers() -> None:
    """Naps of this thread as long as asked: Linux lets a thread's timers fire up to 50 µs late by default
    (its timer slack), longer than the naps between polls for work.  Only where ``prctl`` is at hand."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 µs
    except (OSError, AttributeError, ImportError):
        pass


def auto_complete(init: dict) -> dict:
    cls = _import_model(init["model_file"], init["version_dir"])
    config = pb_utils.ModelConfig(init["config"])
    hook = getattr(cls, "auto_complete_config", None)
    if hook is None:
        return config.as_dict()
    result = hook(config)
    return (result if result is not None else config).as_dict()


def main() -> None:
    control = Channel(socket.socket(fileno=int(sys.argv[1])))
    events = Channel(socket.socket(fileno=int(sys.argv[2])))
    handoff = socket.socket(fileno=int(sys.argv[3]))
    sys.modules["triton_python_backend_utils"] = pb_utils
    init = control.recv()
    runtime = Runtime(events, bool(init.get("decoupled")))
    runtime.instance_name = init.get("args", {}).get("model_instance_name", "")
    pb_utils._runtime = runtime
    threading.Thread(target=runtime.read_events, name="events", daemon=True).start()
    if init["mode"] == "autocomplete":
        try:
            control.send((Kind.STARTED, True, auto_complete(init)))
        except Exception as e:
            control.send((Kind.STARTED, False, format_exception(e)))
        return
    try:
        stub = Stub(control, handoff, runtime, init)
        stub.start()
    except Exception as e:
        control.send((Kind.STARTED, False, format_exception(e)))
        return
    control.send((Kind.STARTED, True, None))
    profile = os.environ.get("TRITIUM_STUB_PROFILE")
    if not profile:
        stub.serve()
        return
    # Where a stub's time goes (benchmarks/python_backend.py's docstring): cProfile of its serve loop, written
    # to this path plus the stub's pid when it finalizes.
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        stub.serve()
    finally:
        profiler.disable()
        profiler.dump_stats(f"{profile}.{os.getpid()}")


if __name__ == "__main__":
    main()
