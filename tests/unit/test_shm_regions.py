"""core.shm_regions without a server: how a key is opened, what a shrunk file does to reads and writes, and
when a region's descriptor is closed."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

from tritium.core import shared_memory
from tritium.core.errors import InternalError, InvalidArgumentError, NotFoundError
from tritium.core.shm_regions import OutputPlace, SystemSharedMemory, open_region_file


@pytest.fixture()
def shm_file():  # type: ignore[no-untyped-def]
    """A file in /dev/shm of ``size`` bytes (its key and path); removed after the test."""
    made: list[str] = []

    def make(tag: str, size: int, data: bytes = b"") -> tuple[str, str]:
        path = f"/dev/shm/tritium_unit_{os.getpid()}_{tag}"
        with open(path, "wb") as f:
            f.truncate(size)
            f.write(data)
        made.append(path)
        return "/" + os.path.basename(path), path

    yield make
    for path in made:
        if os.path.lexists(path):
            os.unlink(path)


def _open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}


def test_only_regular_files_directly_in_dev_shm_are_opened(shm_file, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key, path = shm_file("plain", 64)
    os.close(open_region_file(key))
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * 64)
    link_key, link = shm_file("link", 0)
    os.unlink(link)
    os.symlink(outside, link)
    fifo_key, fifo = shm_file("fifo", 0)
    os.unlink(fifo)
    os.mkfifo(fifo)
    for bad in (link_key, fifo_key, "/../etc/passwd", "a/b", "/..", "", "/x\0y"):
        with pytest.raises(InternalError, match="Unable to open shared memory region"):
            open_region_file(bad)
    with pytest.raises(InternalError, match="not a regular file"):
        open_region_file(fifo_key)


def test_reads_are_copies_and_a_shrunk_file_fails_the_read(shm_file) -> None:  # type: ignore[no-untyped-def]
    payload = np.arange(1 << 16, dtype=np.uint8).tobytes() * 2  # 128 KiB: read into a pooled block
    key, path = shm_file("read", len(payload), payload)
    regions = SystemSharedMemory()
    regions.register("r", key, 0, len(payload))
    data = regions.read("r", 0, len(payload))
    assert data.tobytes() == payload
    assert shared_memory.locate(data) is not None  # a Python model's stub reads it where it lies
    small = regions.read("r", 16, 32)
    assert small.tobytes() == payload[16:48] and shared_memory.locate(small) is None
    os.truncate(path, 100)
    with pytest.raises(InvalidArgumentError, match="region 'r' is smaller than it was registered: .* holds 100 bytes"):
        regions.read("r", 64, 64)
    assert regions.read("r", 0, 100).tobytes() == payload[:100]  # what is still there is readable
    assert data.tobytes() == payload  # the copy is the server's: the file shrinking does not touch it


def test_writes_check_the_file_first_and_never_grow_it(shm_file) -> None:  # type: ignore[no-untyped-def]
    key, path = shm_file("write", 8192)
    regions = SystemSharedMemory()
    regions.register("w", key, 4096, 4096)
    regions.write_output("OUT", np.full(16, 7, np.float32), OutputPlace("w", 64, 64))
    with open(path, "rb") as f:
        assert np.frombuffer(f.read()[4096 + 64 : 4096 + 128], np.float32).tolist() == [7.0] * 16
    import ml_dtypes  # an array of a dtype without a buffer format of its own is written as its bytes

    regions.write_output("OUT", np.full(4, 1.5, ml_dtypes.bfloat16), OutputPlace("w", 0, 64))
    with open(path, "rb") as f:
        assert np.frombuffer(f.read()[4096 : 4096 + 8], ml_dtypes.bfloat16).tolist() == [1.5] * 4
    with pytest.raises(InternalError, match="should be at least 128 bytes"):
        regions.write_output("OUT", np.zeros(32, np.float32), OutputPlace("w", 0, 64))
    os.truncate(path, 4096)
    with pytest.raises(InvalidArgumentError, match="region 'w' is smaller than it was registered"):
        regions.check("w", 0, 64)
    with pytest.raises(InvalidArgumentError, match="region 'w' is smaller than it was registered"):
        regions.write_output("OUT", np.zeros(16, np.float32), OutputPlace("w", 0, 64))
    assert os.path.getsize(path) == 4096


def test_the_descriptor_lives_while_a_request_holds_the_region(shm_file) -> None:  # type: ignore[no-untyped-def]
    key, path = shm_file("fd", 4096)
    regions = SystemSharedMemory()
    regions.register("f", key, 0, 4096)
    assert path in _open_fds()
    (held,) = regions.status("f")  # as a request between looking the region up and reading it
    regions.unregister("f")
    assert path in _open_fds()
    with pytest.raises(NotFoundError):
        regions.read("f", 0, 16)
    del held
    gc.collect()
    assert path not in _open_fds()


def test_the_python_backends_arena_names_are_refused(shm_file) -> None:  # type: ignore[no-untyped-def]
    """Clients can list /dev/shm: a file named like the Python backend's arenas (the default prefix, or the one
    ``shm-region-prefix-name`` sets) is never registered as a client's region."""
    from tritium.backends.python.backend import Settings

    Settings({})  # the default prefix, as the backend starts with
    Settings({"shm-region-prefix-name": f"custom_{os.getpid()}_"})
    custom = f"/dev/shm/custom_{os.getpid()}_1234_abcdef"
    with open(custom, "wb") as f:
        f.truncate(4096)
    try:
        arena_key, _ = shm_file("x", 4096)  # an ordinary name still works
        os.close(open_region_file(arena_key))
        for key in ("/" + os.path.basename(custom), f"/tritium_python_{os.getpid()}_0123456789ab"):
            if key.startswith("/tritium_python_"):
                with open("/dev/shm" + key, "wb") as f:
                    f.truncate(4096)
            try:
                with pytest.raises(InternalError, match="reserved for the server's own shared memory"):
                    SystemSharedMemory().register("arena", key, 0, 4096)
            finally:
                if key.startswith("/tritium_python_"):
                    os.unlink("/dev/shm" + key)
    finally:
        os.unlink(custom)
