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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run tritium in a child process, so a ResourceWarning in the test process is about the
    test's own clients (tritonclient keeps its connections until ``close()`` or garbage collection, and most
    tests leave that to the collector); tritium's own leaks show in the unit tests, which keep it an error."""
    e2e = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")
    for item in items:
        if str(item.path).startswith(e2e + os.sep):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
