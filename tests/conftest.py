import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402


@pytest.fixture()
def regions():  # type: ignore[no-untyped-def]
    """Makes POSIX shared-memory regions (keys ``/tritium_test_<pid>_<tag>``) as a client of the system
    shared-memory extension does; destroys them after the test."""
    import tritonclient.utils.shared_memory as shm

    made = []

    def make(tag: str, size: int):  # type: ignore[no-untyped-def]
        key = f"/tritium_test_{os.getpid()}_{tag}"
        handle = shm.create_shared_memory_region(tag, key, size)
        made.append(handle)
        return key, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)
