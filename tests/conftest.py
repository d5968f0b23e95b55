import gc
import os
import sys
import warnings

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


E2E_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "e2e")


def _in_e2e(path: object) -> bool:
    return str(path).startswith(E2E_DIR + os.sep)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run tritium in a child process, so a ResourceWarning in the test process is about the
    test's own clients (tritonclient keeps its connections until ``close()`` or garbage collection, and most
    tests leave that to the collector); tritium's own leaks show in the unit tests, which keep it an error."""
    for item in items:
        if _in_e2e(item.path):
            item.add_marker(pytest.mark.filterwarnings("ignore::ResourceWarning"))
            # tritonclient.http's client, collected on another thread than its own, fails in its __del__
            # (gevent's thread-local has no loop there): the test's client, not the server, so not an error here
            item.add_marker(pytest.mark.filterwarnings(
                r"ignore:Exception ignored in. <function InferenceServerClient\.__del__"
                ":pytest.PytestUnraisableExceptionWarning"))


@pytest.fixture(autouse=True, scope="module")
def _collect_e2e_clients(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Collect an end-to-end module's forgotten clients as it ends, while its ResourceWarnings are ignored, so
    that the collector does not find them later, during a unit test or at exit, where they are errors."""
    yield
    if _in_e2e(request.path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
