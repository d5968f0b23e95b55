"""What the server and a stub process exchange: small pickled control messages over a socket
(:class:`Channel`: one length-prefixed write per message, usually one read), tensor data in
shared-memory arenas.

Each direction of the execute path has its own arena (a file in ``/dev/shm`` mapped by both sides):
the server writes the inputs of a batch into the *input* arena, the stub writes outputs into the
*output* arena.  An arena only grows (``shm-growth-byte-size`` steps); the side that writes it
creates the bigger file and names it in its next message, the reader maps it and unlinks the name,
so nothing is left in ``/dev/shm`` even when a process is killed later.

Imports only the standard library and numpy: a stub may run under another interpreter
(``EXECUTION_ENV_PATH``).

A tensor of an execute travels as a ``messages.TensorMeta``: an input lies in the input arena or where
the server received it, in a shared-memory block of its request bodies (``tritium.core.shared_memory``),
whose file descriptor the server hands the stub once, over the *hand-off* socket, before the first
execute that uses it; an output lies in either arena or in such a block (an output that is a view of an
input, as in identity models, is not copied by the stub).  What the messages are: ``messages``.  In
decoupled responses and BLS calls, which are not on the execute path, a
tensor's offset is ``-1``: its bytes are the next item of the message's ``data`` list; except that the
tensors of a BLS call or response of 64 KiB or more lie in the writer's :class:`BlsArena`, at that offset.
"""

from __future__ import annotations

import mmap
import os
import pickle
import select
import socket
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .messages import Location

ALIGN = 64
_LEN = struct.Struct("<I")

#: wire datatype -> numpy dtype (BYTES is an object array, BF16 needs ml_dtypes)
NUMPY_TYPES: dict[str, Any] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
try:  # pragma: no branch
    import ml_dtypes

    NUMPY_TYPES["BF16"] = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - only under a foreign interpreter
    pass
WIRE_TYPES: dict[Any, str] = {dtype: name for name, dtype in NUMPY_TYPES.items()}


def wire_type(array: np.ndarray) -> str:
    """The wire datatype of a numpy array (str/bytes arrays are BYTES)."""
    name = WIRE_TYPES.get(array.dtype)
    if name is None:
        if array.dtype.kind in ("S", "U", "O"):
            return "BYTES"
        raise TypeError(f"unsupported numpy dtype '{array.dtype}'")
    return name


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES layout: a 4-byte little-endian length before each element."""
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in array.reshape(-1):
        if isinstance(item, np.ndarray):
            item = item.item()
        if isinstance(item, str):
            item = item.encode("utf-8")
        elif not isinstance(item, (bytes, bytearray)):
            item = str(item).encode("utf-8")
        parts.append(pack(len(item)))
        parts.append(bytes(item))
    return b"".join(parts)


def deserialize_bytes(buffer: Any, count: int) -> np.ndarray:
    view = memoryview(buffer)
    out = np.empty(count, dtype=object)
    offset = 0
    unpack = _LEN.unpack_from
    for i in range(count):
        (length,) = unpack(view, offset)
        offset += 4
        out[i] = bytes(view[offset : offset + length])
        offset += length
    return out


#: What :meth:`Channel.recv_nowait` returns while a message is incomplete.
INCOMPLETE = object()
#: A message's header: the bytes after it, and how many out-of-band buffers those end with.
_HEAD = struct.Struct("<II")
_SIZE = struct.Struct("<Q")
#: How long :meth:`Channel.recv` polls back to back before it naps between polls.
_HOT_S = 10e-6
#: A message longer than this is received straight into its own memory (see :meth:`Channel._take`).
_BIG = 1 << 16


class Channel:
    """Pickled messages over a stream socket, framed by a length.

    Lighter than ``multiprocessing.connection.Connection`` (no ``ForkingPickler`` per message, one
    ``send`` and usually one ``recv`` syscall per message): this is the hot path of every execute.
    :meth:`recv_nowait` lets an event loop read it without blocking.

    Tensor data in a message (decoupled responses, BLS calls; the execute path uses shared memory)
    travels out of band: pickled as :class:`pickle.PickleBuffer`, it is not copied into the pickle but
    sent from the array's own memory (one ``sendmsg``), and received into the memory that the arrays
    of the decoded message view (in band, a big tensor was copied several times: ARCHITECTURE.md, decisions).
    A message is ``[bytes after the header, buffer count][buffer sizes][pickle][buffers]``.
    """

    def __init__(self, sock: socket.socket, allocate: Callable[[int], Any] | None = None) -> None:
        self.sock = sock
        #: Memory for a big message (a writable buffer of the size asked, or None for a ``bytearray``): the
        #: server receives BLS tensors into shared memory, where the model they are for reads them in place.
        self._allocate = allocate
        self._buffer = bytearray()
        #: A big message being received: its memory, how much of it has arrived, its buffer count.
        self._pending: Any = None
        self._filled = 0
        self._count = 0
        self._poller: Any = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: Any) -> None:
        buffers: list[pickle.PickleBuffer] = []
        data = pickle.dumps(message, 5, buffer_callback=buffers.append)
        if not buffers:
            self.sock.sendall(_HEAD.pack(len(data), 0) + data)
            return
        raws = [buffer.raw() for buffer in buffers]
        sizes = b"".join(_SIZE.pack(raw.nbytes) for raw in raws)
        total = len(sizes) + len(data) + sum(raw.nbytes for raw in raws)
        parts = [memoryview(_HEAD.pack(total, len(raws)) + sizes + data), *raws]
        while parts:  # sendmsg may send less than all of it
            sent = self.sock.sendmsg(parts)
            while parts and sent >= parts[0].nbytes:
                sent -= parts[0].nbytes
                parts.pop(0)
            if sent:
                parts[0] = parts[0][sent:]

    def recv(self, spin_s: float = 0.0, nap_s: float = 0.0) -> Any:
        """The next message, blocking; with ``spin_s``, poll that long first, which spares this process
        going to sleep on the socket (and the peer's wake-up of it, tens of µs of both processes' CPU on a
        VM) when the message comes within it.  The first ``_HOT_S`` of it poll back to back, each poll
        yielding the CPU; then, with ``nap_s``, each poll is followed by a nap of that long (a timer wakes
        this process, not the peer: its send finds no sleeper to wake), which costs a fraction of the CPU of
        polling back to back, for a few µs more latency."""
        if spin_s > 0:
            clock = time.perf_counter
            now = clock()
            deadline = now + spin_s
            hot = now + (min(spin_s, _HOT_S) if nap_s else spin_s)
            read = self._read
            ready = self.readable
            yield_cpu = os.sched_yield
            nap = time.sleep
            while True:
                if ready():
                    message = read(socket.MSG_DONTWAIT)
                    if message is not INCOMPLETE:
                        return message
                now = clock()
                if now > deadline:
                    break
                if now < hot:
                    yield_cpu()
                else:
                    nap(nap_s)
        while True:
            message = self._read(0)
            if message is not INCOMPLETE:
                return message

    def readable(self) -> bool:
        """Whether a read may find something: data buffered or on the socket.  A ``poll(2)`` of
        nothing costs a third of a ``recv`` that fails (Python raises and formats an ``OSError`` for it)."""
        if self._buffer or self._pending is not None:
            return True
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def recv_nowait(self) -> Any:
        """The next message, or :data:`INCOMPLETE` when not all of it has arrived yet."""
        return self._read(socket.MSG_DONTWAIT)

    def _read(self, flags: int) -> Any:
        if self._pending is not None:
            return self._fill(flags)
        buffer = self._buffer
        if len(buffer) >= _HEAD.size:  # a message left over from an earlier read
            message = self._take()
            if message is not INCOMPLETE:
                return message
            if self._pending is not None:
                return self._fill(flags)
        try:
            chunk = self.sock.recv(_BIG, flags)
        except BlockingIOError:
            return INCOMPLETE
        except OSError as e:
            raise EOFError(str(e)) from None
        if not chunk:
            raise EOFError("the peer closed the channel")
        if not buffer and len(chunk) >= _HEAD.size:
            total, count = _HEAD.unpack_from(chunk)
            if not count and total + _HEAD.size == len(chunk):
                return pickle.loads(memoryview(chunk)[_HEAD.size :])  # the common case: exactly one message
        buffer += chunk
        message = self._take()
        if message is INCOMPLETE and self._pending is not None:
            return self._fill(flags)
        return message

    def _take(self) -> Any:
        """The first message in the buffer, or INCOMPLETE; a big incomplete one moves to its own memory,
        where the rest of it is received (:meth:`_fill`)."""
        buffer = self._buffer
        if len(buffer) < _HEAD.size:
            return INCOMPLETE
        total, count = _HEAD.unpack_from(buffer)
        end = _HEAD.size + total
        if len(buffer) < end:
            if total > _BIG:
                body = self._allocate(total) if self._allocate is not None else None
                if body is None:
                    body = bytearray(total)
                have = len(buffer) - _HEAD.size
                body[:have] = memoryview(buffer)[_HEAD.size :]
                buffer.clear()
                self._pending, self._filled, self._count = body, have, count
            return INCOMPLETE
        body = buffer[_HEAD.size : end]  # a copy: the arrays of the message may view it
        del buffer[:end]
        return _decode(body, count)

    def _fill(self, flags: int) -> Any:
        body = self._pending
        assert body is not None
        try:
            received = self.sock.recv_into(memoryview(body)[self._filled :], 0, flags)
        except BlockingIOError:
            return INCOMPLETE
        except OSError as e:
            raise EOFError(str(e)) from None
        if not received:
            raise EOFError("the peer closed the channel")
        self._filled += received
        if self._filled < len(body):
            return INCOMPLETE
        self._pending = None
        return _decode(body, self._count)

    def poll(self, timeout: float) -> bool:
        """Whether a message (or its start) can be read within ``timeout`` seconds.  ``poll(2)``, not
        ``select(2)``: a server with many connections and shared-memory blocks holds descriptors past
        ``FD_SETSIZE`` (1024), which ``select`` refuses."""
        if self._pending is None and len(self._buffer) >= _HEAD.size:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))

    def close(self) -> None:
        self.sock.close()


def _decode(body: Any, count: int) -> Any:
    """A message from its bytes after the header; its out-of-band buffers become views of ``body``."""
    if not count:
        return pickle.loads(body)
    view = memoryview(body)
    sizes = [_SIZE.unpack_from(view, _SIZE.size * i)[0] for i in range(count)]
    start = _SIZE.size * count
    offset = len(body) - sum(sizes)
    buffers = []
    for size in sizes:
        buffers.append(view[offset : offset + size])
        offset += size
    return pickle.loads(view[start : len(body) - sum(sizes)], buffers=buffers)


class Arena:
    """A shared-memory file mapped into this process."""

    def __init__(self, path: str, size: int, mm: mmap.mmap) -> None:
        self.path = path
        self.size = size
        self.mm = mm
        #: The whole arena as bytes, for writing tensors into it.
        self.u8 = np.frombuffer(mm, np.uint8) if size else np.empty(0, np.uint8)
        #: Server side: its number in the instance's pool.
        self.ident = -1
        #: Server side: a weak reference to the array that every response view of this arena derives from.
        self.holder: Any = None
        self.address = self.u8.__array_interface__["data"][0] if size else 0

    @classmethod
    def create(cls, prefix: str, size: int) -> Arena:
        size = max(ALIGN, size)
        path = f"/dev/shm/{prefix}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(path, size, mm)

    @classmethod
    def attach(cls, path: str, size: int, unlink: bool = False) -> Arena:
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if unlink:
            unlink_quietly(path)
        return cls(path, size, mm)

    def contains(self, array: np.ndarray) -> int:
        """Offset of ``array``'s data in this arena, or -1 when it lives elsewhere (or is not contiguous)."""
        if not self.size or not array.flags.c_contiguous or array.dtype.kind == "O":
            return -1
        start = array.__array_interface__["data"][0] - self.address
        if 0 <= start and start + array.nbytes <= self.size:
            return start
        return -1


#: BLS calls and responses whose tensors come to this many bytes carry them in a :class:`BlsArena`.
SHARED_BLS_BYTES = 1 << 16


class BlsArena:
    """The writing side's shared memory for the big tensors of BLS calls: the stub writes a call's inputs into
    its own, the server a response's outputs into one per stub.  Through the event socket they cost two copies
    in chunked syscalls, on a reader thread that needs the GIL for every chunk, ten times the one copy into
    here (ARCHITECTURE.md, decisions); the reader views them in place.

    Each call or response takes one region (first fit) until the reader is done with it: the stub frees a
    response's region (``("bls_free", [starts])``) once no view of its tensors is left (it reads them in
    place), and its own call's region when the final response to the call comes.  What does not fit beside the
    regions still taken goes inline instead (:meth:`place` returns ``None``); with none taken, a bigger arena
    replaces a small one.  The reader maps an arena when a message first names it (``(path, size)``) and
    unlinks the name.
    """

    def __init__(self, prefix: str, minimum: int, growth: int) -> None:
        self._prefix = prefix
        self._minimum = minimum
        self._growth = growth
        self._lock = threading.Lock()
        self._arena: Arena | None = None
        #: The regions taken, start -> end.
        self._taken: dict[int, int] = {}
        #: Every file made, unlinked by :meth:`close` in case the reader never mapped (and unlinked) one.
        self._paths: list[str] = []

    def place(self, arrays: list[tuple[str, np.ndarray]]) -> tuple[list[tuple], tuple[str, int] | None] | None:
        """Write ``(name, array)`` pairs into one region: their metas (offsets into the arena; the region starts
        at the smallest, which is what frees it) and the arena's ``(path, size)`` when the reader must map a new
        one first; ``None`` when there is no room now (or no new arena could be made).  Who sends the messages
        must place and send under one lock: a message naming a new arena goes first."""
        prepared = []
        total = 0
        for name, array in arrays:
            kind, data = encoded(array)
            nbytes = len(data) if isinstance(data, bytes) else data.nbytes
            prepared.append((name, kind, tuple(array.shape), data, nbytes, total))
            total += aligned(nbytes)
        total = max(total, ALIGN)  # every region has a start of its own
        new = None
        with self._lock:
            arena = self._arena
            base = self._gap(total, arena.size) if arena is not None else None
            if base is None:
                if self._taken:  # no gap beside the regions still taken: the tensors go inline
                    return None
                # Nothing taken: a new, bigger arena, with room for two such regions (a model commonly still
                # holds the last response when the next comes).
                current = arena.size if arena is not None else self._minimum
                try:
                    arena = Arena.create(self._prefix, grown_size(current, 2 * total, self._growth))
                except OSError:  # e.g. /dev/shm is full: the tensors go inline
                    return None
                self._arena = arena
                self._paths.append(arena.path)
                new = (arena.path, arena.size)
                base = 0
            self._taken[base] = base + total
        assert arena is not None  # (made above when there was none)
        metas = []
        for name, kind, shape, data, nbytes, offset in prepared:  # the region is ours: written outside the lock
            at = base + offset
            if isinstance(data, bytes):
                arena.mm[at : at + nbytes] = data
            elif nbytes:
                arena.u8[at : at + nbytes] = data.reshape(-1).view(np.uint8)
            metas.append((name, kind, shape, at, nbytes))
        return metas, new

    def carry(self, arrays: list[tuple[str, np.ndarray]]) -> tuple[list[tuple], list[Any], tuple[str, int] | None]:
        """A message's ``(metas, data, arena)`` for ``(name, array)`` pairs: in a region of this arena when they
        come to :data:`SHARED_BLS_BYTES` or more and there is room (their ``data`` items are ``None``; ``arena``
        names a new arena to map first, else ``None``), otherwise inline."""
        if sum(array.nbytes for _, array in arrays) >= SHARED_BLS_BYTES:
            placed = self.place(arrays)
            if placed is not None:
                return placed[0], [None] * len(placed[0]), placed[1]
        metas, data = inline_tensors(arrays)
        return metas, data, None

    def _gap(self, total: int, size: int) -> int | None:
        """The first free stretch of ``total`` bytes (first fit; a handful of regions are taken at most)."""
        position = 0
        for start in sorted(self._taken):
            if start - position >= total:
                return position
            position = max(position, self._taken[start])
        return position if size - position >= total else None

    def free(self, starts: list[int]) -> None:
        """The reader is done with the regions that start at ``starts``."""
        with self._lock:
            for start in starts:
                self._taken.pop(start, None)

    def close(self) -> None:
        for path in self._paths:
            unlink_quietly(path)
        self._paths.clear()


def region_start(metas: list[tuple]) -> int | None:
    """Where the region of a message's tensors in a :class:`BlsArena` starts (what frees it); ``None`` when
    they all travel inline."""
    return min((meta[3] for meta in metas if meta[3] >= 0), default=None)


def read_tensors(metas: list[tuple], data: list[Any], arena: Arena | None,
                 release: Callable[[int], None] | None = None) -> list[tuple[str, str, np.ndarray]]:
    """The tensors of a BLS message: inline ones view ``data``; those at an offset into ``arena`` (written by
    a :class:`BlsArena`) view it where they lie.  With ``release``, ``release(start)`` is called once no view of
    those is left, ``start`` being their region's (it may then be reused): all of them derive from one array
    over that region, whose finalizer it is; BYTES are parsed into new objects and keep nothing."""
    start = region_start(metas)
    origin = 0 if start is None else start
    region: np.ndarray | None = None
    if start is not None:
        if arena is None:
            name = next(meta[0] for meta in metas if meta[3] >= 0)
            raise ValueError(f"tensor '{name}' names a shared-memory arena that was never sent")
        end = max(meta[3] + meta[4] for meta in metas if meta[3] >= 0)
        region = np.frombuffer(arena.mm, np.uint8, end - start, start)
    out = []
    for (name, kind, shape, offset, nbytes), raw in zip(metas, data, strict=False):
        if offset < 0:
            out.append((name, kind, view(raw, kind, shape, 0, nbytes)))
        else:
            out.append((name, kind, view(region, kind, shape, offset - origin, nbytes)))
    if region is not None and release is not None:  # only once all were read: a failure above releases nothing
        weakref.finalize(region, release, origin)
    return out


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def grown_size(current: int, needed: int, growth: int) -> int:
    """The next arena size: at least ``needed``, in ``growth`` steps."""
    growth = max(growth, ALIGN)
    size = max(current, growth)
    while size < needed:
        size += growth
    return size


def aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def encoded(array: np.ndarray) -> tuple[str, Any]:
    """Wire type and the raw bytes (BYTES serialized) of an array."""
    kind = wire_type(array)
    if kind == "BYTES":
        return kind, serialize_bytes(array)
    return kind, np.ascontiguousarray(array)


def view(buffer: Any, datatype: str, shape: tuple[int, ...], offset: int, nbytes: int) -> np.ndarray:
    """A numpy array over ``buffer`` (a view for fixed-size types; BYTES are parsed)."""
    count = 1
    for d in shape:
        count *= d
    if datatype == "BYTES":
        return deserialize_bytes(memoryview(buffer)[offset : offset + nbytes], count).reshape(shape)
    dtype = NUMPY_TYPES[datatype]
    return np.frombuffer(buffer, dtype, count, offset).reshape(shape)


def write_tensors(arena: Arena | None, arrays: list[tuple[str, np.ndarray]], create: Any) -> tuple[Arena, list[tuple]]:
    """Write ``(name, array)`` pairs into ``arena`` (grown through ``create(size)`` when too small).

    Returns the arena used and one ``messages.TensorMeta`` tuple (in the input arena) per tensor.
    """
    prepared = []
    total = 0
    for name, array in arrays:
        kind, data = encoded(array)
        nbytes = len(data) if isinstance(data, bytes) else data.nbytes
        prepared.append((name, kind, array.shape, data, nbytes, total))
        total += aligned(nbytes)
    if arena is None or arena.size < total:
        arena = create(total)
    mm = arena.mm
    in_arena = Location.IN_ARENA
    metas = []
    for name, kind, shape, data, nbytes, offset in prepared:
        if nbytes:  # bytes, or a C-contiguous array (encoded): one memcpy, a fifth of numpy's slice assignment
            mm[offset : offset + nbytes] = data
        metas.append((name, kind, shape, offset, nbytes, in_arena, -1))
    return arena, metas


def inline_tensors(arrays: list[tuple[str, np.ndarray]]) -> tuple[list[tuple], list[Any]]:
    """Tensors carried in the message itself (decoupled responses, BLS): metadata plus raw buffers."""
    metas, data = [], []
    for name, array in arrays:
        kind, raw = encoded(array)
        nbytes = len(raw) if isinstance(raw, bytes) else raw.nbytes
        metas.append((name, kind, tuple(array.shape), -1, nbytes))
        data.append(pickle.PickleBuffer(raw))  # out of band: sent from the array's memory (Channel)
    return metas, data


def read_inline(metas: list[tuple], data: list[Any]) -> list[tuple[str, str, np.ndarray]]:
    out = []
    for (name, kind, shape, _, nbytes), raw in zip(metas, data, strict=False):
        out.append((name, kind, view(raw, kind, shape, 0, nbytes)))
    return out
