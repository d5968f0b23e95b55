"""A hostile client of the system shared-memory extension, through real sockets: keys that name anything but a
regular file directly in /dev/shm, and regions that their owner shrinks, truncates, or unlinks and recreates
while requests use them.  The server and the Python model's process stay up (a mapping read past a file's
end would raise SIGBUS and kill them), the request that met the shrunk file fails with an error naming its
region, and every other request, of this client and of others, is answered correctly."""

from __future__ import annotations

import os
import stat
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_model
from server import RunningServer

#: The identity model.py; SLOW sleeps first (so that a region can be truncated while the request runs).
IDENTITY_PY = """
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            if {slow}:
                time.sleep(1.0)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
"""

CONFIG = """
    backend: "{backend}"
    max_batch_size: 0
    input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
    output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
    instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

#: Bytes of the regions the races use: big enough that a copy takes a while, small for a loaded machine.
RACE_BYTES = 4 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory):  # type: ignore[no-untyped-def]
    repo = str(tmp_path_factory.mktemp("hostile_shm_repo"))
    write_model(repo, "identity_onnx", identity_graph("FP32", ("n",)), config=CONFIG.format(backend="onnxruntime"))
    for name, slow in (("identity_py", False), ("slow_py", True)):
        model_dir = write_model(repo, name, config=CONFIG.format(backend="python"))
        with open(os.path.join(model_dir, "1", "model.py"), "w") as f:
            f.write(IDENTITY_PY.format(slow=slow))
    with RunningServer([repo], ["--allow-metrics=false", "--allow-client-shm=true"]) as s:
        yield s


@pytest.fixture()
def client(server: RunningServer):  # type: ignore[no-untyped-def]
    c = httpclient.InferenceServerClient(server.url, network_timeout=300, connection_timeout=300)
    yield c
    c.unregister_system_shared_memory()


@pytest.fixture()
def shm_names():  # type: ignore[no-untyped-def]
    """Names for files this test puts in /dev/shm itself (links, fifos, folders); removed after it."""
    made: list[str] = []

    def make(tag: str) -> str:
        path = f"/dev/shm/tritium_test_{os.getpid()}_{tag}"
        made.append(path)
        return path

    yield make
    for path in made:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass


def _path(key: str) -> str:
    return os.path.join("/dev/shm", key.lstrip("/"))


def _stub_pids(server: RunningServer) -> set[int]:
    """The Python-backend model processes of the server (its children running the stub)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server.proc.pid and b"tritium.backends.python.stub" in cmdline:
            pids.add(int(entry))
    return pids


def _identity(client: httpclient.InferenceServerClient, model: str, x: np.ndarray) -> np.ndarray:
    tensor = httpclient.InferInput("INPUT0", [x.size], "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor]).as_numpy("OUTPUT0")


def _assert_serving(server: RunningServer) -> None:
    assert server.proc.poll() is None, server.output()
    c = httpclient.InferenceServerClient(server.url)
    assert c.is_server_live() and c.is_server_ready()
    x = np.arange(1000, dtype=np.float32)
    for model in ("identity_onnx", "identity_py"):
        np.testing.assert_array_equal(_identity(c, model, x), x)


# -- keys: only regular files directly in /dev/shm ------------------------------------------------------


def test_a_key_that_is_a_symlink_to_a_file_outside_is_refused(  # type: ignore[no-untyped-def]
        client, server, shm_names, tmp_path) -> None:
    marker = tmp_path / "marker"
    marker.write_bytes(b"secret outside /dev/shm\n" * 1000)
    before = marker.read_bytes()
    link = shm_names("link_out")
    os.symlink(marker, link)
    key = "/" + os.path.basename(link)
    for register in (client.register_system_shared_memory,
                     grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory):
        with pytest.raises(InferenceServerException, match=f"Unable to open shared memory region: '{key}'"):
            register("link", key, 64)
    assert client.get_system_shared_memory_status() == []
    assert marker.read_bytes() == before
    _assert_serving(server)


def test_a_symlink_to_another_region_is_refused_too(client, regions, shm_names) -> None:  # type: ignore[no-untyped-def]
    """shm_open follows no link at all, not even one to a file in /dev/shm."""
    key, _ = regions("target", 4096)
    link = shm_names("link_in")
    os.symlink(_path(key), link)
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region"):
        client.register_system_shared_memory("link", "/" + os.path.basename(link), 64)


@pytest.mark.parametrize("key", ["/../etc/passwd", "/tritium_x/../../etc/passwd", "//etc/passwd", "/..", "/.",
                                 "/", "", "a/b", "/tritium_\x00x", "/" + "x" * 300])
def test_keys_that_leave_dev_shm_or_are_not_names_are_refused(  # type: ignore[no-untyped-def]
        client, server, key) -> None:
    with pytest.raises(InferenceServerException, match="Unable to open shared memory region") as e:
        client.register_system_shared_memory("bad", key, 64)
    assert e.value.status() == "500"  # Triton's code for a key shm_open refuses
    assert client.get_system_shared_memory_status() == []
    assert server.proc.poll() is None


def test_a_fifo_a_folder_or_a_device_is_refused(client, server, shm_names) -> None:  # type: ignore[no-untyped-def]
    fifo = shm_names("fifo")
    os.mkfifo(fifo)
    folder = shm_names("dir")
    os.mkdir(folder)
    paths = [fifo, folder]
    device = shm_names("dev")
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers (needs root)
        paths.append(device)
    except (PermissionError, OSError):
        pass
    for path in paths:
        key = "/" + os.path.basename(path)
        start = time.monotonic()
        with pytest.raises(InferenceServerException, match=f"Unable to open shared memory region: '{key}'"):
            client.register_system_shared_memory("odd", key, 64)
        assert time.monotonic() - start < 30  # a fifo does not make the server wait for a writer
    assert client.get_system_shared_memory_status() == []
    _assert_serving(server)


def test_the_python_backends_own_shared_memory_cannot_be_registered(client, server) -> None:  # type: ignore[no-untyped-def]
    """The Python backend's arenas (other clients' tensors) live in /dev/shm under a known prefix for a moment;
    a client that lists /dev/shm and registers one would read and write them: such names are refused."""
    path = f"/dev/shm/tritium_python_{os.getpid()}_0123456789ab"
    with open(path, "wb") as f:
        f.truncate(1 << 16)
    try:
        for register in (client.register_system_shared_memory,
                         grpcclient.InferenceServerClient(server.grpc_url).register_system_shared_memory):
            with pytest.raises(InferenceServerException, match="reserved for the server's own shared memory"):
                register("arena", "/" + os.path.basename(path), 1 << 16)
    finally:
        os.unlink(path)
    assert client.get_system_shared_memory_status() == []
    _assert_serving(server)


# -- regions shrunk under their users ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", ["identity_onnx", "identity_py"])
def test_an_input_region_truncated_after_registering_fails_that_request(  # type: ignore[no-untyped-def]
        server, regions, model, protocol) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = (httpclient.InferenceServerClient(server.url, network_timeout=300) if protocol == "http"
              else grpcclient.InferenceServerClient(server.grpc_url))
    key, handle = regions("trunc_in", 1 << 20)
    x = np.random.default_rng(1).random(1 << 18, dtype=np.float32)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory("trunc_in", key, 1 << 20)
    try:
        pids = _stub_pids(server)
        assert pids  # the Python models' processes
        os.truncate(_path(key), 0)
        tensor = module.InferInput("INPUT0", [x.size], "FP32")
        tensor.set_shared_memory("trunc_in", x.nbytes)
        with pytest.raises(InferenceServerException, match="region 'trunc_in' is smaller than it was registered") as e:
            client.infer(model, [tensor])
        assert e.value.status() == ("400" if protocol == "http" else "StatusCode.INVALID_ARGUMENT")
        os.truncate(_path(key), 1 << 20)  # the owner grows it back: the region works again
        shm.set_shared_memory_region(handle, [x])
        np.testing.assert_array_equal(client.infer(model, [tensor]).as_numpy("OUTPUT0"), x)
        assert _stub_pids(server) == pids
    finally:
        client.unregister_system_shared_memory()
    _assert_serving(server)


def test_an_output_region_truncated_before_the_request_fails_it(  # type: ignore[no-untyped-def]
        client, server, regions) -> None:
    key, _ = regions("trunc_out", 1 << 20)
    client.register_system_shared_memory("trunc_out", key, 1 << 20)
    os.truncate(_path(key), 0)
    x = np.ones(1 << 18, np.float32)
    for model in ("identity_onnx", "identity_py"):
        tensor = httpclient.InferInput("INPUT0", [x.size], "FP32").set_data_from_numpy(x)
        out = httpclient.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory("trunc_out", x.nbytes)
        with pytest.raises(InferenceServerException, match="region 'trunc_out' is smaller than it was registered"):
            client.infer(model, [tensor], outputs=[out])
    assert os.stat(_path(key)).st_size == 0  # nothing was written into (or grew) the owner's file
    _assert_serving(server)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_output_region_truncated_while_the_model_runs_fails_that_request(  # type: ignore[no-untyped-def]
        server, regions, protocol) -> None:
    """The region was fine when the request came; the owner truncates it while the (slow) model runs: the
    answer is an error naming the region, the file is not written or grown, the model's process lives on."""
    module = httpclient if protocol == "http" else grpcclient
    client = (httpclient.InferenceServerClient(server.url, network_timeout=300) if protocol == "http"
              else grpcclient.InferenceServerClient(server.grpc_url))
    key, _ = regions(f"late_{protocol}", 1 << 20)
    client.register_system_shared_memory(f"late_{protocol}", key, 1 << 20)
    try:
        pids = _stub_pids(server)
        assert pids  # the Python models' processes
        x = np.ones(1 << 18, np.float32)
        tensor = module.InferInput("INPUT0", [x.size], "FP32")
        tensor.set_data_from_numpy(x)
        out = module.InferRequestedOutput("OUTPUT0")
        out.set_shared_memory(f"late_{protocol}", x.nbytes)
        timer = threading.Timer(0.3, os.truncate, (_path(key), 0))  # the model sleeps 1 s
        timer.start()
        with pytest.raises(InferenceServerException, match=f"region 'late_{protocol}' is smaller than it was"):
            client.infer("slow_py", [tensor], outputs=[out])
        timer.join()
        assert os.stat(_path(key)).st_size == 0
        assert _stub_pids(server) == pids
    finally:
        client.unregister_system_shared_memory()
    _assert_serving(server)


def test_a_region_unlinked_and_recreated_smaller(client, server) -> None:  # type: ignore[no-untyped-def]
    """The server holds the file it opened at registration: the owner unlinking it and making a smaller one
    under the same key changes nothing for the registered region (as Triton, which maps it at registration);
    registering the key again sees the new, too small file."""
    key = f"/tritium_test_{os.getpid()}_recreate"
    old = shm.create_shared_memory_region("old", key, 1 << 20)
    x = np.random.default_rng(2).random(1 << 18, dtype=np.float32)
    shm.set_shared_memory_region(old, [x])
    client.register_system_shared_memory("recreate", key, 1 << 20)
    new = None
    try:
        shm.destroy_shared_memory_region(old)  # unmaps and unlinks
        old = None
        new = shm.create_shared_memory_region("new", key, 4096)
        shm.set_shared_memory_region(new, [np.full(1024, 7, np.float32)])
        tensor = httpclient.InferInput("INPUT0", [x.size], "FP32").set_shared_memory("recreate", x.nbytes)
        for model in ("identity_onnx", "identity_py"):
            out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)
            np.testing.assert_array_equal(client.infer(model, [tensor], outputs=[out]).as_numpy("OUTPUT0"), x)
        client.unregister_system_shared_memory("recreate")
        # too small for the range asked: refused in Triton's words (the key is opened before the range is checked)
        with pytest.raises(InferenceServerException,
                           match="failed to register shared memory region 'recreate': invalid args"):
            client.register_system_shared_memory("recreate", key, 1 << 20)
    finally:
        for handle in (old, new):
            if handle is not None:
                shm.destroy_shared_memory_region(handle)
    _assert_serving(server)


@pytest.mark.parametrize("model", ["identity_onnx", "identity_py"])
@pytest.mark.parametrize("side", ["input", "output"])
def test_a_region_shrunk_and_regrown_during_requests_never_takes_anything_down(  # type: ignore[no-untyped-def]
        server, regions, model, side) -> None:
    """A hostile client toggles its region's size (0, a page, full) from another thread while it sends
    requests that use it; another client calls both models meanwhile.  Every hostile request either succeeds
    or fails naming the region; every other request is answered correctly; the server and the model's
    process stay up (same pid)."""
    key, handle = regions(f"race_{side}", RACE_BYTES)
    hostile = httpclient.InferenceServerClient(server.url, network_timeout=300, connection_timeout=300)
    hostile.register_system_shared_memory("race", key, RACE_BYTES)
    pids = _stub_pids(server)
    assert pids  # the Python models' processes
    x = np.random.default_rng(3).random(RACE_BYTES // 4, dtype=np.float32)
    shm.set_shared_memory_region(handle, [x])
    done = threading.Event()
    failures: list[str] = []
    errors: list[str] = []
    served = [0, 0]

    def toggle() -> None:
        fd = os.open(_path(key), os.O_RDWR)
        try:
            while not done.is_set():
                for size in (0, 4096, RACE_BYTES):
                    os.ftruncate(fd, size)
                    time.sleep(0.0005)
        finally:
            os.ftruncate(fd, RACE_BYTES)
            os.close(fd)

    def bystander() -> None:
        c = httpclient.InferenceServerClient(server.url, network_timeout=300, connection_timeout=300)
        y = np.arange(50000, dtype=np.float32)
        while not done.is_set():
            for name in ("identity_onnx", "identity_py"):
                try:
                    got = _identity(c, name, y)
                    if not np.array_equal(got, y):
                        failures.append(f"{name}: wrong answer")
                    served[1] += 1
                except Exception as e:  # noqa: BLE001 - any failure of a bystander is the bug
                    failures.append(f"{name}: {e}")

    threads = [threading.Thread(target=toggle), threading.Thread(target=bystander)]
    for t in threads:
        t.start()
    try:
        for _ in range(40):
            if side == "input":
                tensor = httpclient.InferInput("INPUT0", [x.size], "FP32").set_shared_memory("race", RACE_BYTES)
                outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True)]
            else:
                tensor = httpclient.InferInput("INPUT0", [x.size], "FP32").set_data_from_numpy(x)
                outputs = [httpclient.InferRequestedOutput("OUTPUT0")]
                outputs[0].set_shared_memory("race", RACE_BYTES)
            try:
                hostile.infer(model, [tensor], outputs=outputs)
                served[0] += 1
            except InferenceServerException as e:
                if "region 'race' is smaller than it was registered" not in e.message() or e.status() != "400":
                    errors.append(f"{e.status()}: {e.message()}")
    finally:
        done.set()
        for t in threads:
            t.join(120)
    assert not errors, errors
    assert not failures, failures
    assert served[1] > 0
    assert os.stat(_path(key)).st_size == RACE_BYTES
    assert _stub_pids(server) == pids
    hostile.unregister_system_shared_memory()
    _assert_serving(server)
