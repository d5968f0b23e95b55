"""Triton's system shared-memory extension: POSIX shared-memory regions that clients register by name, so
that request inputs are read from them and outputs written into them instead of travelling in the body.

A client creates ``/dev/shm/<key>`` (``shm_open``), registers ``(name, key, offset, byte_size)``, and then
names the region, an offset in it and a byte size in a tensor's parameters (``shared_memory_region``,
``shared_memory_offset``, ``shared_memory_byte_size``).  Inputs become numpy views of the mapping (no copy);
outputs are copied in once the model answers.  Errors use Triton's words and codes (the frontends map them).
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass, field

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


@dataclass(eq=False)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    #: The region's bytes, ``[offset, offset + byte_size)`` of the file, mapped here.
    data: np.ndarray = field(repr=False)
    #: The file, open while the region is registered (the mapping's owner closes it after).
    fd: int = -1


def _shm_path(key: str) -> str:
    """Where ``shm_open(key)`` puts the file on Linux."""
    return os.path.join("/dev/shm", key.lstrip("/"))


class SystemSharedMemory:
    """The registered regions of one server; ``allowed`` False (``--allow-client-shm=false``) refuses
    registrations, so no region is ever used."""

    def __init__(self, allowed: bool = True) -> None:
        self.allowed = allowed
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not self.allowed:
            raise UnavailableError(
                f"failed to register shared memory region '{name}': client shared memory is disabled; start the "
                "server with --allow-client-shm=true")
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
            if any(r.key == key for r in self._regions.values()):  # Triton maps a key once
                raise InternalError(f"Invalid shared memory region: '{key}'")
        if offset % mmap.ALLOCATIONGRANULARITY or byte_size <= 0:
            # Triton maps from the offset, which must be page-aligned, and at least a byte (its words, mmap's errno)
            raise InvalidArgumentError(
                f"failed to register shared memory region '{name}': unable to process address spaceInvalid argument")
        if "/" in key.lstrip("/") or key.strip("/") in ("", ".", ".."):
            raise InternalError(f"Unable to open shared memory region: '{key}'")
        try:
            fd = os.open(_shm_path(key), os.O_RDWR)
        except (OSError, ValueError):  # ValueError: a NUL in the key
            raise InternalError(f"Unable to open shared memory region: '{key}'") from None
        try:
            end = offset + byte_size
            if offset < 0 or byte_size <= 0 or os.fstat(fd).st_size < end:
                raise InternalError(f"Invalid shared memory region: '{key}'")
            mm = mmap.mmap(fd, end)
        except (OSError, ValueError):
            os.close(fd)
            raise InternalError(f"Invalid shared memory region: '{key}'") from None
        # locatable by backends that run models in other processes (they are handed ``fd``), which read
        # inputs there too; the mapping and ``fd`` go once the region is unregistered and no view is left
        data = shared_memory.adopt(fd, mm)[offset:end]
        with self._lock:
            if name in self._regions:
                raise AlreadyExistsError(f"shared memory region '{name}' already in manager")
            self._regions[name] = Region(name, key, offset, byte_size, data, fd)

    def unregister(self, name: str = "") -> None:
        """One region, or all of them when ``name`` is empty; an unknown name is not an error (as Triton).
        Requests in flight keep the mapping alive through their views of it."""
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

    def view(self, name: str, offset: int, byte_size: int) -> np.ndarray:
        """``byte_size`` bytes at ``offset`` of region ``name``, as a ``uint8`` view (no copy)."""
        region = self._regions.get(name)
        if region is None:
            raise NotFoundError(f"Unable to find shared memory region: '{name}'")
        if offset < 0:
            raise InvalidArgumentError(f"Invalid offset for shared memory region: '{name}'")
        if byte_size <= 0 or offset + byte_size > region.byte_size:
            raise InvalidArgumentError(f"Invalid offset + byte size for shared memory region: '{name}'")
        try:
            size = os.fstat(region.fd).st_size
        except OSError:
            size = -1
        if size < region.offset + offset + byte_size:
            # the client shrank the file after registering it: touching the mapping past its end would
            # kill the server (SIGBUS); this catches it unless the file shrinks between here and the read
            raise InvalidArgumentError(
                f"shared memory region '{name}' is smaller than it was registered: its file '{region.key}' "
                f"holds {max(size, 0)} bytes")
        return region.data[offset : offset + byte_size]

    def write_output(self, output: str, data: bytes | memoryview | np.ndarray, place: OutputPlace) -> None:
        """An output's bytes into the place its request named for it."""
        target = self.view(place.region, place.offset, place.byte_size)
        raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1).view(np.uint8)
        if raw.nbytes > place.byte_size:
            raise InternalError(
                f"shared memory size specified with the request for output '{output}' ({place.byte_size} bytes) "
                f"should be at least {raw.nbytes} bytes to hold the results")
        target[: raw.nbytes] = raw


def tensor_view(regions: SystemSharedMemory | None, place: OutputPlace, what: str) -> np.ndarray:
    """The bytes a tensor's shared-memory parameters name (``what``: "inputs" or "outputs"), checked as both
    frontends check them: an unknown region or a bad range fails here, before inference.  ``regions`` None:
    the caller serves no shared memory."""
    if regions is None:
        raise UnsupportedError(f"shared memory {what} are not supported here")
    return regions.view(place.region, place.offset, place.byte_size)


def cuda_status(name: str = "") -> list[Region]:
    """The CUDA shared-memory extension is not implemented: it has no regions, as Triton answers when none
    is registered (a named one is not found)."""
    if name:
        raise NotFoundError(f"Unable to find cuda shared memory region: '{name}'")
    return []


@dataclass(frozen=True, slots=True)
class OutputPlace:
    """Where a requested output goes: a region, an offset in it, and the room there."""

    region: str
    offset: int
    byte_size: int
