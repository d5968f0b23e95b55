"""Memory that model processes can map: big request bodies are received into it, so that a Python-backend
stub reads their tensors where they lie instead of a copy of them.

A :class:`Block` is an anonymous memory file (``memfd_create``): nothing is ever left in ``/dev/shm``, even
after a SIGKILL, and a process that should see a block is handed its file descriptor (``SCM_RIGHTS``).
Blocks are pooled and reused: a block is busy while the array :func:`take` returned for it, or anything
derived from it (a ``memoryview``, a numpy view, a tensor of a request or response), is alive.

Frontends call :func:`take` for request bodies of at least :data:`MIN_BYTES`; backends that run models in
other processes call :func:`locate` to learn whether an array lies in a block.  Neither knows the other.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import mmap
import os
import threading
import weakref

import numpy as np

#: Smaller bodies are cheaper to copy than to look up: they are not pooled.
MIN_BYTES = 64 << 10
#: Pooled blocks, all together, stay under this; beyond it bodies are ordinary memory.
MAX_TOTAL_BYTES = 512 << 20
#: At most this many pooled blocks: each holds a file descriptor (to hand to model processes), and a burst of
#: concurrent bodies must not use up the process's descriptors, which connections need too.
MAX_BLOCKS = 256
#: Free blocks keep their memory up to this much in all: a block that falls free beyond it gives its pages
#: back (to every process that maps it), so a burst of big requests does not hold memory for good.
KEEP_FREE_BYTES = 64 << 20

_AVAILABLE = hasattr(os, "memfd_create")


class Block:
    """One anonymous shared-memory file of the pool, mapped here.  Only the server holds it (and the model
    processes it hands it to), so no one else can shrink it under a mapping.  Client regions are never
    blocks: they are copied in and out (``core.shm_regions``)."""

    __slots__ = ("ident", "fd", "size", "mm", "address", "holder", "resident", "__weakref__")

    def __init__(self, ident: int, size: int) -> None:
        self.ident = ident
        fd = os.memfd_create(f"tritium-body-{ident}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd
        self.mm = mm
        self.size = size
        self.address = np.frombuffer(self.mm, np.uint8, 1).__array_interface__["data"][0]
        #: A weak reference to the array that every view of this block's current use derives from.
        self.holder: weakref.ref[np.ndarray] | None = None
        #: Whether its pages may hold memory (they do once written, until given back).
        self.resident = False

    def busy(self) -> bool:
        return self.holder is not None and self.holder() is not None

    def array(self) -> np.ndarray | None:
        """The array of the block's current use (the base to derive more views from), if it is in use."""
        return self.holder() if self.holder is not None else None


class _Pool:
    def __init__(self) -> None:
        # re-entrant: a release (a weakref callback) may run wherever the last view of a body dies
        self.lock = threading.RLock()
        #: Blocks by size (powers of two).
        self.classes: dict[int, list[Block]] = {}
        #: Blocks by start address, for :meth:`locate`.
        self.starts: list[int] = []
        self.by_address: list[Block] = []
        self.by_ident: dict[int, Block] = {}
        self.total = 0
        self.idents = itertools.count()
        self.count = 0
        #: Bytes of free blocks whose pages still hold memory.
        self.free_resident = 0

    def take(self, nbytes: int) -> np.ndarray | None:
        size = max(MIN_BYTES, 1 << (nbytes - 1).bit_length())  # size classes: powers of two
        with self.lock:
            blocks = self.classes.setdefault(size, [])
            for block in blocks:
                if not block.busy():
                    return self._use(block, nbytes)
            if self.total + size > MAX_TOTAL_BYTES or self.count >= MAX_BLOCKS:
                return None
            try:
                block = Block(next(self.idents), size)
            except OSError:
                return None
            blocks.append(block)
            self._index(block)
            self.total += size
            self.count += 1
            return self._use(block, nbytes)

    def _index(self, block: Block) -> None:
        self.by_ident[block.ident] = block
        index = bisect.bisect(self.starts, block.address)
        self.starts.insert(index, block.address)
        self.by_address.insert(index, block)

    def _use(self, block: Block, nbytes: int) -> np.ndarray:
        array = np.frombuffer(block.mm, np.uint8, nbytes)
        block.holder = weakref.ref(array, functools.partial(self._released, block))
        if block.resident:
            self.free_resident -= block.size
        block.resident = True
        return array

    def _released(self, block: Block, _: object) -> None:
        """The last view of a block's body is gone: it is free; its pages go back if free ones hold enough."""
        try:
            with self.lock:
                self.free_resident += block.size
                if self.free_resident > KEEP_FREE_BYTES and not block.busy():
                    block.mm.madvise(mmap.MADV_REMOVE)
                    block.resident = False
                    self.free_resident -= block.size
        except Exception:  # pragma: no cover - at interpreter exit; never raise out of a weakref callback
            pass

    def locate(self, array: np.ndarray) -> tuple[Block, int] | None:
        starts = self.starts
        if not starts or not array.flags.c_contiguous or array.dtype.kind == "O":
            return None
        address = array.__array_interface__["data"][0]
        with self.lock:
            index = bisect.bisect(starts, address) - 1
            if index < 0:
                return None
            block = self.by_address[index]
        offset = address - block.address
        if 0 <= offset and offset + array.nbytes <= block.size and block.busy():
            return block, offset
        return None


_pool = _Pool()


def take(nbytes: int) -> np.ndarray | None:
    """A ``uint8`` array of ``nbytes`` in shared memory, or None (too small to be worth it, the pool is full,
    or this system has no ``memfd_create``).  The block is reused once this array and every view of it are gone."""
    if nbytes < MIN_BYTES or not _AVAILABLE:
        return None
    return _pool.take(nbytes)


def locate(array: np.ndarray) -> tuple[Block, int] | None:
    """The block ``array``'s data lies in and its offset there, or None (ordinary memory, or not contiguous)."""
    return _pool.locate(array)


def block(ident: int) -> Block | None:
    return _pool.by_ident.get(ident)


def pooled_bytes() -> int:
    """How big the pool's blocks are in all (for tests and statistics)."""
    return _pool.total


def free_resident_bytes() -> int:
    """How much memory free blocks hold (at most :data:`KEEP_FREE_BYTES` after a release)."""
    return _pool.free_resident


def any_blocks() -> bool:
    """Whether any block exists yet: :func:`locate` is skipped until then."""
    return bool(_pool.starts)

