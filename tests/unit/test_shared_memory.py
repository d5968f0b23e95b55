"""The pool of shared-memory blocks that big request bodies are received into."""

from __future__ import annotations

import gc
import mmap
import os

import numpy as np
import pytest

from tritium.core import shared_memory


def test_small_bodies_are_not_pooled() -> None:
    assert shared_memory.take(shared_memory.MIN_BYTES - 1) is None


def test_views_of_a_body_are_located_while_it_lives() -> None:
    body = shared_memory.take(100_000)
    assert body is not None and body.nbytes == 100_000
    tensor = np.frombuffer(memoryview(body)[64:64 + 4000], np.float32)  # as the HTTP codec views a body
    found = shared_memory.locate(tensor)
    assert found is not None
    block, offset = found
    assert offset == 64 and block.size >= 100_000
    assert shared_memory.block(block.ident) is block
    assert shared_memory.locate(np.zeros(1000, np.float32)) is None  # private memory
    assert shared_memory.locate(tensor[::2]) is None  # not contiguous: not readable as one range
    # another process sees the same bytes through the block's file descriptor
    tensor[:] = 7.5
    other = mmap.mmap(os.dup(block.fd), block.size)
    assert np.frombuffer(other, np.float32, 1000, 64).tolist() == [7.5] * 1000
    other.close()


def test_a_block_is_reused_only_when_nothing_views_it() -> None:
    first = shared_memory.take(70_000)
    assert first is not None
    view = np.frombuffer(memoryview(first), np.uint8)[10:20]
    ident = shared_memory.locate(view)[0].ident  # type: ignore[index]
    del first
    gc.collect()
    second = shared_memory.take(70_000)  # the view keeps the first block busy
    assert second is not None and shared_memory.locate(second)[0].ident != ident  # type: ignore[index]
    del view
    gc.collect()
    third = shared_memory.take(70_000)
    assert third is not None and shared_memory.locate(third)[0].ident == ident  # type: ignore[index]


def test_pool_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_memory, "MAX_TOTAL_BYTES", shared_memory.pooled_bytes() + (1 << 20))
    held = [shared_memory.take(1 << 20)]
    assert held[0] is not None
    assert shared_memory.take(1 << 20) is None  # the pool is full: the caller uses ordinary memory


def test_free_blocks_give_their_memory_back_beyond_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_memory, "KEEP_FREE_BYTES", shared_memory.free_resident_bytes() + (256 << 10))
    bodies = [shared_memory.take(200 << 10) for _ in range(4)]  # four 256 KiB blocks
    blocks = [shared_memory.locate(b)[0] for b in bodies]  # type: ignore[arg-type, index]
    for body in bodies:
        body[:] = 1  # the pages now hold memory
    del body
    bodies.clear()  # all four fall free: one stays resident, three give their pages back
    gc.collect()
    assert [b.resident for b in blocks].count(False) == 3
    assert shared_memory.free_resident_bytes() <= shared_memory.KEEP_FREE_BYTES
    given_back = next(b for b in blocks if not b.resident)
    assert not np.frombuffer(given_back.mm, np.uint8).any()  # its pages are gone: they read as zeros
    again = shared_memory.take(200 << 10)  # and it is still usable
    assert again is not None
    again[:] = 3
    assert again.sum() == 3 * (200 << 10)


def test_pool_holds_a_bounded_number_of_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # each block holds a file descriptor: a burst of bodies must not use up the process's descriptors
    monkeypatch.setattr(shared_memory, "MAX_BLOCKS", shared_memory._pool.count + 2)
    held = [shared_memory.take(3 << 20) for _ in range(2)]  # a size class no other test uses
    assert all(h is not None for h in held)
    assert shared_memory.take(3 << 20) is None
