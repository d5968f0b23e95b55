"""A signal to the server's whole process group (Ctrl-C in a terminal, `timeout`, a container runtime that
signals the group) stops the server, and the server stops its Python models: each model's ``finalize`` runs
and no stub is reported as having died or restarted on the way out."""

from __future__ import annotations

import os
import signal
import textwrap

import pytest
import tritonclient.http as httpclient

from models import write_python_model
from server import RunningServer

MODEL = textwrap.dedent("""
    import os
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.marker = os.path.join(os.path.dirname(os.path.dirname(__file__)), "finalized")

        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(
                r, "IN").as_numpy())]) for r in requests]

        def finalize(self):
            with open(self.marker, "a") as f:
                f.write(f"{os.getpid()}\\n")
""")
CONFIG = """
name: "py"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 2 } ]
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_process_group_finalizes_python_models(tmp_path, sig):
    repo = str(tmp_path / "repo")
    model_dir = write_python_model(repo, "py", MODEL, CONFIG)
    with RunningServer([repo], preexec_fn=os.setpgrp) as server:
        client = httpclient.InferenceServerClient(server.url)
        try:
            assert client.is_model_ready("py")
        finally:
            client.close()
        os.killpg(server.proc.pid, sig)
        assert server.wait_exit(60) == 0
        output = server.output()
    with open(os.path.join(model_dir, "finalized")) as f:
        finalized = f.read().split()
    assert len(finalized) == 2, f"finalize ran in {len(finalized)} of 2 instances:\n{output}"
    assert "exited unexpectedly" not in output and "restart" not in output.lower(), output
