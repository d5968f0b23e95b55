"""Triton's system shared-memory extension: POSIX shared-memory regions that clients register by name, so
that request inputs are read from them and outputs written into them instead of travelling in the body.

A client creates ``/dev/shm/<key>`` (``shm_open``), registers ``(name, key, offset, byte_size)``, and then
names the region, an offset in it and a byte size in a tensor's parameters (``shared_memory_region``,
``shared_memory_offset``, ``shared_memory_byte_size``).  Errors use Triton's words and codes (the frontends
map them).

A region's file belongs to a client, who may shrink it at any time; a mapping touched past the file's end
raises SIGBUS, which kills the whole process (the server, or a model's process).  So client regions are never
mapped, here or in model processes: the file is opened as ``shm_open`` opens it (a regular file directly in
``/dev/shm``, no symbolic link followed) and kept open while registered; inputs are copied out of it with
``preadv`` (into a pooled shared-memory block for big ones, ``core.shared_memory``, which a Python-backend
stub maps without another copy), and outputs copied in with ``pwrite``.  A file shrunk under a request makes
the read come back short, or the size check before a write fail: that request gets an error naming the
region, and nothing else is touched.
"""

from __future__ import annotations

import mmap
import os
import stat
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from . import shared_memory
from .errors import (
    AlreadyExistsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnsupportedError,
)

#: Where ``shm_open`` keeps its files on Linux: the only folder a key can name a file in.
SHM_DIR = "/dev/shm"
#: ``shm_open``'s flags (glibc adds O_NOFOLLOW and O_CLOEXEC); O_NONBLOCK: opening a fifo must not wait.
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
#: Name prefixes of the files in /dev/shm that the server and its model processes use themselves (the Python
#: backend's arenas): a client that reads their names in /dev/shm must not register them and so read or
#: write other clients' tensors (Triton's CVE-2025-23319/23320/23334 class).
_reserved_prefixes: set[str] = set()


def reserve_prefix(prefix: str) -> None:
    """Refuse keys that start with ``prefix`` from now on: a backend names its own shared memory so."""
    if prefix:
        _reserved_prefixes.add(prefix)


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    #: The file, open while the region is registered or a request still holds this object (closed after).
    fd: int = -1


def _shm_path(key: str) -> str:
    """Where ``shm_open(key)`` puts the file on Linux."""
    return os.path.join(SHM_DIR, key.lstrip("/"))


def open_region_file(key: str) -> int:
    """The file descriptor of ``key`` opened as ``shm_open(key, O_RDWR)`` opens it: one name directly in
    ``/dev/shm`` (no other ``/``, not ``.`` or ``..``, no NUL), no symbolic link followed, and only a regular
    file (not a fifo, a device or a folder).  Anything else fails with Triton's words, naming the key."""
    name = key.lstrip("/")
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise InternalError(f"Unable to open shared memory region: '{key}'")
    if any(name.startswith(prefix) for prefix in _reserved_prefixes):
        raise InternalError(
            f"Unable to open shared memory region: '{key}': the name is reserved for the server's own shared memory")
    try:
        fd = os.open(_shm_path(key), _OPEN_FLAGS)
    except (OSError, ValueError):  # ValueError: a name the file system cannot encode
        raise InternalError(f"Unable to open shared memory region: '{key}'") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InternalError(f"Unable to open shared memory region: '{key}': not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


class SystemSharedMemory:
    """The registered regions of one server; ``allowed`` False (``--allow-client-shm=false``) refuses
    registrations, so no region is ever used."""

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def refuse_if_disabled(self, name: str) -> None:
        """``--allow-client-shm=false``: no region may be registered, of either extension."""
        if not self.allowed:
            raise UnavailableError(
                f"failed to register shared memory region '{name}': client shared memory is disabled; start the "
                "server with --allow-client-shm=true")

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        """Checked in Triton's order: the name, the key (opened), the range against the file, then the mapping."""
        self.refuse_if_disabled(name)
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
            if any(r.key == key for r in self._regions.values()):  # Triton maps a key once
                raise InternalError(f"Invalid shared memory region: '{key}'")
        fd = open_region_file(key)
        try:
            end = offset + byte_size
            if offset < 0 or byte_size < 0 or os.fstat(fd).st_size < end:
                raise InvalidArgumentError(f"failed to register shared memory region '{name}': invalid args")
            if offset % mmap.ALLOCATIONGRANULARITY or byte_size == 0:
                # Triton maps from the offset, which must be page-aligned, and at least a byte (its words, mmap's
                # errno); tritium never maps a client's region, but refuses what Triton refuses
                raise InvalidArgumentError(f"failed to register shared memory region '{name}': unable to process "
                                           "address spaceInvalid argument")
        except BaseException:
            os.close(fd)
            raise
        region = Region(name, key, offset, byte_size, fd)
        # closed once unregistered and no request holds the region any more (a request may be between
        # looking it up and reading or writing: the descriptor must not be closed, or reused, under it)
        weakref.finalize(region, os.close, fd)
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
            self._regions[name] = region

    def unregister(self, name: str = "") -> None:
        """One region, or all of them when ``name`` is empty; an unknown name is not an error (as Triton).
        Requests in flight keep the file open through the region they hold."""
        with self._lock:
            if name:
                self._regions.pop(name, None)
            else:
                self._regions.clear()

    def status(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"Unable to find system shared memory region: '{name}'")
        return [region]

    def _find(self, name: str, offset: int, byte_size: int) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"Unable to find shared memory region: '{name}'")
        if offset < 0:
            raise InvalidArgumentError(f"Invalid offset for shared memory region: '{name}'")
        if byte_size <= 0 or offset + byte_size > region.byte_size:
            raise InvalidArgumentError(f"Invalid offset + byte size for shared memory region: '{name}'")
        return region

    @staticmethod
    def _shrunk(region: Region) -> InvalidArgumentError:
        try:
            size = os.fstat(region.fd).st_size
        except OSError:
            size = 0
        return InvalidArgumentError(
            f"shared memory region '{region.name}' is smaller than it was registered: its file '{region.key}' "
            f"holds {size} bytes, the region ends at byte {region.offset + region.byte_size}")

    def check(self, name: str, offset: int, byte_size: int) -> None:
        """That ``byte_size`` bytes at ``offset`` of region ``name`` exist now (an output's place, before
        inference): an unknown region, a bad range or a file shrunk since it was registered fails here."""
        region = self._find(name, offset, byte_size)
        if os.fstat(region.fd).st_size < region.offset + offset + byte_size:
            raise self._shrunk(region)

    def read(self, name: str, offset: int, byte_size: int) -> np.ndarray:
        """A copy of ``byte_size`` bytes at ``offset`` of region ``name``, as a ``uint8`` array: in a pooled
        shared-memory block when big enough (model processes read it there), else in private memory.  The
        file ending before them (shrunk by its owner) fails this request only."""
        region = self._find(name, offset, byte_size)
        data = shared_memory.take(byte_size)
        if data is None:
            data = np.empty(byte_size, np.uint8)
        view = memoryview(data)  # type: ignore[arg-type]  # numpy declares __buffer__ for Python >= 3.12 only
        position = region.offset + offset
        done = 0
        try:
            while done < byte_size:
                got = os.preadv(region.fd, [view[done:]], position + done)
                if got == 0:  # the end of the file: it was shrunk
                    raise self._shrunk(region)
                done += got
        except OSError as e:
            raise InternalError(f"failed to read shared memory region '{name}': {e.strerror}") from None
        return data

    def write_output(self, output: str, data: bytes | memoryview | np.ndarray, place: OutputPlace) -> None:
        """An output's bytes into the place its request named for it.  The file's size is checked first: a
        write past its end would grow the owner's file (never a crash, but the request must fail)."""
        region = self._find(place.region, place.offset, place.byte_size)
        if isinstance(data, np.ndarray):  # as bytes (a dtype such as bfloat16 has no buffer format of its own)
            # numpy declares __buffer__ for Python >= 3.12 only
            view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        else:
            view = memoryview(data).cast("B")
        nbytes = view.nbytes
        if nbytes > place.byte_size:
            raise InternalError(
                f"shared memory size specified with the request for output '{output}' ({place.byte_size} "
                f"bytes) should be at least {nbytes} bytes to hold the results")
        try:
            position = region.offset + place.offset
            if os.fstat(region.fd).st_size < position + place.byte_size:
                raise self._shrunk(region)
            done = 0
            while done < nbytes:
                done += os.pwrite(region.fd, view[done:], position + done)
        except OSError as e:
            raise InternalError(
                f"failed to write output '{output}' into shared memory region '{place.region}': {e.strerror}"
            ) from None


def check_input(regions: SystemSharedMemory | None, place: OutputPlace) -> None:
    """That an input's region and range exist (as both frontends check them), before its size is compared
    with its shape: a mismatch must fail before anything is copied (the range may be the whole region).
    ``regions`` None: the caller serves no shared memory."""
    if regions is None:
        raise UnsupportedError("shared memory inputs are not supported here")
    regions._find(place.region, place.offset, place.byte_size)


def read_input(regions: SystemSharedMemory | None, place: OutputPlace) -> np.ndarray:
    """A copy of the bytes an input's shared-memory parameters name (after :func:`check_input`)."""
    assert regions is not None
    return regions.read(place.region, place.offset, place.byte_size)


def check_output(regions: SystemSharedMemory | None, place: OutputPlace) -> None:
    """That an output's place exists: an unknown region or a bad range fails before inference."""
    if regions is None:
        raise UnsupportedError("shared memory outputs are not supported here")
    regions.check(place.region, place.offset, place.byte_size)


def cuda_status(name: str = "") -> list[Region]:
    """The CUDA shared-memory extension is not implemented: it has no regions, as Triton answers when none
    is registered (a named one is not found).  Unregistering, of one name or all, has nothing to do."""
    if name:
        raise NotFoundError(f"Unable to find cuda shared memory region: '{name}'")
    return []


#: ``sizeof(cudaIpcMemHandle_t)``: what a CUDA register request's ``raw_handle`` holds.
CUDA_IPC_HANDLE_SIZE = 64


def cuda_register(regions: SystemSharedMemory | None, name: str) -> None:
    """Registering a CUDA region fails: this server opens no CUDA IPC handle.  The answer is a GPU-enabled
    Triton's where the handle does not open (no device, or a handle of another machine): INVALID_ARG in its
    words; with client shared memory disabled, that refusal."""
    if regions is not None:
        regions.refuse_if_disabled(name)
    raise InvalidArgumentError("failed to register shared memory region: invalid args")


@dataclass(frozen=True, slots=True)
class OutputPlace:
    """Where a requested output goes: a region, an offset in it, and the room there."""

    region: str
    offset: int
    byte_size: int
