"""gRPC with TLS, mutual TLS and response compression, with certificates this test makes (openssl CLI)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from models import identity_graph, write_model
from server import RunningServer, free_port

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("certs")
    cwd = str(d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=tritium test CA", cwd=cwd)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=cwd)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext", cwd=cwd)
    return {p.name: p.read_bytes() for p in d.iterdir()} | {"dir": d}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("tls_repo"))
    write_model(repo, "identity", identity_graph("FP32", (-1,)), config="""
        backend: "onnxruntime"
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
    """)
    return repo


def _tls_args(certs, mutual=False):
    d = certs["dir"]
    args = [f"--grpc-server-cert={d / 'server.crt'}", f"--grpc-server-key={d / 'server.key'}"]
    if mutual:
        args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={d / 'ca.crt'}"]
    else:
        args += ["--grpc-use-ssl=true"]
    return args


def _infer(client, data):
    inp = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data)
    return client.infer("identity", [inp]).as_numpy("OUTPUT0")


class ByteCountingProxy:
    """A TCP relay counting the bytes the server sends, to see whether responses were compressed."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.from_server = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if count:
                    self.from_server += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()


@pytest.fixture(scope="module")
def tls_server(repo, certs):
    with RunningServer([repo], [*_tls_args(certs), "--grpc-infer-response-compression-level=high"]) as s:
        yield s


def test_tls_infer(tls_server, certs):
    client = grpcclient.InferenceServerClient(tls_server.grpc_url, ssl=True, root_certificates=str(certs["dir"] / "ca.crt"))
    data = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(_infer(client, data), data)
    assert client.get_model_metadata("identity").name == "identity"
    client.close()


def test_plaintext_client_is_refused_by_tls_server(tls_server):
    client = grpcclient.InferenceServerClient(tls_server.grpc_url)
    with pytest.raises(InferenceServerException):
        client.is_server_live()
    client.close()


def test_response_compression(tls_server, certs):
    """With --grpc-infer-response-compression-level=high, 2 MiB of zeros cross the wire compressed."""
    proxy = ByteCountingProxy(tls_server.grpc_port)
    try:
        client = grpcclient.InferenceServerClient(
            f"127.0.0.1:{proxy.port}", ssl=True, root_certificates=str(certs["dir"] / "ca.crt"),
            channel_args=[("grpc.ssl_target_name_override", "localhost")])
        data = np.zeros(1 << 19, dtype=np.float32)
        np.testing.assert_array_equal(_infer(client, data), data)
        client.close()
    finally:
        proxy.close()
    assert 0 < proxy.from_server < data.nbytes // 10, proxy.from_server


@pytest.fixture(scope="module")
def mtls_server(repo, certs):
    with RunningServer([repo], _tls_args(certs, mutual=True)) as s:
        yield s


def test_mutual_tls(mtls_server, certs):
    d = certs["dir"]
    client = grpcclient.InferenceServerClient(mtls_server.grpc_url, ssl=True, root_certificates=str(d / "ca.crt"),
                                              private_key=str(d / "client.key"),
                                              certificate_chain=str(d / "client.crt"))
    data = np.arange(8, dtype=np.float32)
    np.testing.assert_array_equal(_infer(client, data), data)
    client.close()


def test_mutual_tls_refuses_a_client_without_certificate(mtls_server, certs):
    client = grpcclient.InferenceServerClient(mtls_server.grpc_url, ssl=True,
                                              root_certificates=str(certs["dir"] / "ca.crt"))
    with pytest.raises(InferenceServerException):
        client.is_server_live()
    client.close()
