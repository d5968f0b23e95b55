"""Differential tests: the same tritonclient calls against tritium and against real Triton, on one
repository of Python-backend models, expecting the same answers (outputs, status codes, error texts,
metadata, repository index).

Real Triton is the ``tritonserver`` of the ``nvidia-pytriton`` wheel (Python backend only), started by
``scripts/real_triton.sh`` with the interpreter named in ``TRITIUM_TRITON_PYTHON`` (default: the project's
``.venv-triton``, else ``/work/triton-ref/.venv-triton/bin/python``).  Where there is none, the module is
skipped.  ``./scripts/test.sh --differential [pytest args]`` makes ``.venv-triton`` (once) and runs it.

Each case is a function of a :class:`Servers` handle that returns plain data; the test runs it on
both servers and compares.  Where tritium deliberately differs from Triton the case says so and
compares what must still agree.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from unittest import mock

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from models import timed_model, write_python_model
from server import ROOT, RunningServer, ServerProcess, free_port

#: ``TRITIUM_REAL_TRITON_SCRIPT`` overrides where the launcher is.
SCRIPT = os.environ.get("TRITIUM_REAL_TRITON_SCRIPT", os.path.join(ROOT, "scripts", "real_triton.sh"))


def _triton_python() -> str:
    """``TRITIUM_TRITON_PYTHON``, else ``./scripts/test.sh --differential``'s environment, else this lab's one."""
    given = os.environ.get("TRITIUM_TRITON_PYTHON")
    if given:
        return given
    own = os.path.join(ROOT, ".venv-triton", "bin", "python")
    return own if os.path.exists(own) else "/work/triton-ref/.venv-triton/bin/python"


TRITON_PYTHON = _triton_python()

pytestmark = pytest.mark.skipif(
    not (os.path.exists(SCRIPT) and os.path.exists(TRITON_PYTHON)),
    reason="real Triton is not installed: run ./scripts/test.sh --differential (installs nvidia-pytriton into "
           ".venv-triton once), or set TRITIUM_TRITON_PYTHON to an interpreter that has it",
)

ADD_SUB = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            a = pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy()
            b = pb_utils.get_input_tensor_by_name(r, "INPUT1").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", a + b), pb_utils.Tensor("OUTPUT1", a - b)]))
        return out
'''
ADD_SUB_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
            { name: "INPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] },
             { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""

IDENTITY = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())]) for r in requests]
'''
BATCHED_CONFIG = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    dynamic_batching { }
"""

STRINGS = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            y = np.array([v.upper() + b"!" for v in x.reshape(-1)], dtype=np.object_).reshape(x.shape)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", y)]))
        return out
'''
STRINGS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "IN" data_type: TYPE_STRING dims: [ -1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

#: Input 0: an error response; 1: execute raises; anything else: echoed.
FAILS = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            if x[0] == 1:
                raise ValueError("execute gave up on input 1")
            if x[0] == 0:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("input 0 is not welcome")))
            else:
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]))
        return out
'''
ECHO_INT_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    {extra}
"""

#: Decoupled: for input n, n responses counting 0..n-1, then the final flag alone.
REPEAT = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()
            n = int(r.inputs()[0].as_numpy()[0])
            for i in range(n):
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([i], np.int32))]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
'''

#: A decoupled model's edge cases, by input: 1 an error response and more after it, 2 responses sent from a
#: thread after execute returned, 3 an error response that is the final one, 4 execute returns responses.
DECOUPLED_EDGES = '''
import threading
import time
import numpy as np
import triton_python_backend_utils as pb_utils

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL

def response(value):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", np.array([value], np.int32))])

def later(sender):
    time.sleep(0.2)
    sender.send(response(7))
    sender.send(flags=FINAL)

class TritonPythonModel:
    def execute(self, requests):
        for r in requests:
            mode = int(r.inputs()[0].as_numpy()[0])
            sender = r.get_response_sender()
            if mode == 1:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("oops")))
                sender.send(response(1))
                sender.send(flags=FINAL)
            elif mode == 2:
                threading.Thread(target=later, args=(sender,)).start()
            elif mode == 3:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("fatal", pb_utils.TritonError.INVALID_ARG)),
                            flags=FINAL)
            elif mode == 4:
                return [response(4) for _ in requests]
        return None
'''

#: Answers what its instance was told in initialize; executes take 0.2 s so that requests spread over
#: every instance.
INSTANCE_INFO = '''
import json
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        keys = ("model_instance_name", "model_instance_kind", "model_instance_device_id")
        self.info = json.dumps({k: args[k] for k in keys}, sort_keys=True)

    def execute(self, requests):
        time.sleep(0.2)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([self.info.encode()], dtype=np.object_))])
                for _ in requests]
'''

#: Holds its instance for a while, so that requests sent meanwhile wait in the queue: queue policies.
SLOW = '''
import time
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.6)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())]) for r in requests]
'''
#: Sleeps a tenth of a second per unit of its input, then echoes it: executions of different lengths.
SLEEPS = SLOW.replace("time.sleep(0.6)",
                      "time.sleep(sum(float(r.inputs()[0].as_numpy().sum()) for r in requests) / 10)")
TWO_INSTANCES = """
    backend: "python"
    max_batch_size: 1
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    instance_group [ { count: 2 kind: KIND_CPU } ]
    dynamic_batching { {ordering} }
"""

#: Answers, for each request, which requests its execute was given (their first value and shape).
BATCH_REPORT = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        batch = json.dumps([[int(r.inputs()[0].as_numpy().flat[0]), list(r.inputs()[0].as_numpy().shape)]
                            for r in requests])
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
                    "OUT", np.array([[batch.encode()]] * r.inputs()[0].as_numpy().shape[0], dtype=np.object_))])
                for r in requests]
'''

#: auto_complete_config fills a config that names only the backend; the others fail in it.
AUTO_COMPLETE = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.set_max_batch_size(4)
        config.add_input({"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [2]})
        config.add_output({"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [2]})
        config.set_dynamic_batching()
        return config

    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", r.inputs()[0].as_numpy())]) for r in requests]
'''
AUTO_COMPLETE_RAISES = AUTO_COMPLETE.replace("config.set_max_batch_size(4)", "raise RuntimeError('cannot complete')")

#: Answers the request's parameters, id and requested outputs, as JSON in a string tensor.
PARAMS = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            seen = {"parameters": json.loads(r.parameters()), "id": r.request_id(),
                    "requested": sorted(r.requested_output_names()),
                    "requested_type": type(r.requested_output_names()).__name__}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_)),
                pb_utils.Tensor("OTHER", np.array([1], np.int32)),
                pb_utils.Tensor("UNDECLARED", np.array([2], np.int32))]))  # not in the config
        return out
'''
PARAMS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] },
             { name: "OTHER" data_type: TYPE_INT32 dims: [ 1 ] } ]
"""

#: BLS: calls add_sub (or what the request's "target" parameter names) and answers outcome and outputs.
BLS = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            params = json.loads(r.parameters())
            target = params.get("target", "add_sub")
            x = r.inputs()[0].as_numpy()
            if "int" in params:
                x = np.array([params["int"]], np.int32)
            names = params.get("inputs", "INPUT0,INPUT1").split(",")
            call = pb_utils.InferenceRequest(model_name=target, requested_output_names=["OUTPUT0"],
                                             inputs=[pb_utils.Tensor(n, x) for n in names if n])
            decoupled = bool(params.get("decoupled", False))
            responses = list(call.exec(decoupled=True)) if decoupled else [call.exec()]
            seen = []
            for response in responses:
                if response.has_error():
                    seen.append({"error": response.error().message(), "code": int(response.error().code())})
                else:
                    seen.append({"outputs": [(t.name(), t.as_numpy().tolist()) for t in response.output_tensors()]})
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_))]))
        return out
'''
BLS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

#: Fails each request with the error code its input names (an index into pb_utils.TritonError's codes).
CODES = '''
import triton_python_backend_utils as pb_utils

CODES = ["UNKNOWN", "INTERNAL", "NOT_FOUND", "INVALID_ARG", "UNAVAILABLE", "UNSUPPORTED", "ALREADY_EXISTS", "CANCELLED"]

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            name = CODES[int(r.inputs()[0].as_numpy()[0])]
            code = getattr(pb_utils.TritonError, name)
            out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("code " + name, code)))
        return out
'''

#: Answers the sequence id (correlation_id) and flags the model sees.
SEQUENCE = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            seen = {"correlation_id": r.correlation_id(), "flags": r.flags(),
                    "parameters": json.loads(r.parameters())}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_))]))
        return out
'''

#: Two add_sub steps: (a+b, a-b), then their sum and difference (2a, 2b).
ENSEMBLE_CONFIG = """
    platform: "ensemble"
    max_batch_size: 0
    input [ { name: "A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "B" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "TWICE_A" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "TWICE_B" data_type: TYPE_FP32 dims: [ 4 ] } ]
    ensemble_scheduling { step [
      { model_name: "add_sub" model_version: -1
        input_map { key: "INPUT0" value: "A" } input_map { key: "INPUT1" value: "B" }
        output_map { key: "OUTPUT0" value: "sum" } output_map { key: "OUTPUT1" value: "diff" } },
      { model_name: "add_sub" model_version: -1
        input_map { key: "INPUT0" value: "sum" } input_map { key: "INPUT1" value: "diff" }
        output_map { key: "OUTPUT0" value: "TWICE_A" } output_map { key: "OUTPUT1" value: "TWICE_B" } } ] }
"""

#: One step through ``fails``: how a failing step's error reaches the ensemble's client.
FAILING_ENSEMBLE_CONFIG = """
    platform: "ensemble"
    max_batch_size: 0
    input [ { name: "X" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "Y" data_type: TYPE_INT32 dims: [ -1 ] } ]
    ensemble_scheduling { step [
      { model_name: "fails" model_version: -1 input_map { key: "INPUT0" value: "X" } output_map { key: "OUTPUT0" value: "Y" } } ] }
"""

SEQUENCE_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    sequence_batching { max_sequence_idle_microseconds: 5000000 }
"""

#: Answers which inputs came (optional ones may not) and their shapes as the model sees them.
SHAPES = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            seen = {t.name(): list(t.as_numpy().shape) for t in r.inputs()}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_))]))
        return out
'''
SHAPES_CONFIG = """
    backend: "python"
    max_batch_size: 2
    input [ { name: "MAIN" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } },
            { name: "EXTRA" data_type: TYPE_INT32 dims: [ 1 ] optional: true } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""
VERSIONED_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    version_policy: { specific: { versions: [ 1, 3 ] } }
"""
LABELS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 4 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 4 ] label_filename: "labels.txt" } ]
"""

INIT_FAILS = '''
class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("no weights today")

    def execute(self, requests):
        return []
'''

#: Reports ``args`` of initialize (the keys Triton passes and their values, paths made relative).
ARGS = '''
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.seen = {
            "keys": sorted(args),
            "kind": args["model_instance_kind"],
            "instance": args["model_instance_name"],
            "device": args["model_instance_device_id"],
            "version": args["model_version"],
            "name": args["model_name"],
            "repository_tail": args["model_repository"].rstrip("/").split("/")[-1],
            "config_name": config["name"],
            "config_inputs": [(i["name"], i["data_type"], i["dims"]) for i in config["input"]],
            "config_max_batch_size": config["max_batch_size"],
        }

    def execute(self, requests):
        data = np.array([json.dumps(self.seen, sort_keys=True).encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", data)]) for _ in requests]
'''
#: SLOW behind a queue policy.
SLOW_CONFIG = """
    backend: "python"
    max_batch_size: 1
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    dynamic_batching { {policy} }
"""
#: BLS calls with a 100 ms timeout to ``expiring`` (0.6 s executes, whose queue policy lets a request lower its
#: timeout): one while it is idle, then one while it executes another call.  The timeout counts while the
#: request waits in the queue, so the idle call's must leave room for a loaded machine's pickup: with 1 ms,
#: Triton on a slow CI machine expired it before its batcher took it.
BLS_TIMEOUT = '''
import asyncio
import json
import numpy as np
import triton_python_backend_utils as pb_utils

def call(value, **kw):
    return pb_utils.InferenceRequest(model_name="expiring", inputs=[pb_utils.Tensor("INPUT0", np.array([[value]], np.int32))],
                                     requested_output_names=["OUTPUT0"], **kw)

def seen(response):
    if response.has_error():
        return {"error": response.error().message()}
    return {"out": pb_utils.get_output_tensor_by_name(response, "OUTPUT0").as_numpy().tolist()}

async def busy():
    first = call(2).async_exec()
    await asyncio.sleep(0.2)
    queued = seen(await call(3, timeout=100000).async_exec())  # waits ~0.4 s behind the first: expires
    return [seen(await first), queued]

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            idle = seen(call(1, timeout=100000).exec())  # taken at once: well inside its 100 ms
            results = [idle, *asyncio.run(busy())]
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(results, sort_keys=True).encode()], dtype=np.object_))]))
        return out
'''

ARGS_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
"""


# -- models of NVIDIA's examples and QA tests that did not run unchanged (issue 30) ---------------------

#: BLS as NVIDIA's example does it: the model name comes decoded from a BYTES tensor (``bytes``), and bytes go
#: where pb_utils takes other names; each attempt's outcome is answered.
BLS_BYTES_NAMES = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

def attempt(fn):
    try:
        return ["ok", fn()]
    except Exception as e:
        return ["error", type(e).__name__, str(e).split(chr(10))[0]]

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            name = r.inputs()[0].as_numpy().reshape(-1)[0]
            x = np.array([1, 2, 3, 4], np.float32)

            def call():
                request = pb_utils.InferenceRequest(model_name=name, requested_output_names=[b"OUTPUT0"],
                                                    inputs=[pb_utils.Tensor(b"INPUT0", x), pb_utils.Tensor("INPUT1", x)])
                response = request.exec()
                if response.has_error():
                    return {"error": response.error().message()}
                return {t.name(): t.as_numpy().tolist() for t in response.output_tensors()}

            seen = {"type": type(name).__name__, "call": attempt(call),
                    "tensor_name": attempt(lambda: pb_utils.Tensor(b"X", x).name()),
                    "input_by_bytes": attempt(lambda: pb_utils.get_input_tensor_by_name(r, b"NAME") is not None),
                    "ready": attempt(lambda: pb_utils.is_model_ready(name))}
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("OUT", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_))]))
        return out
"""

#: Input 0: waits up to 20 s for ``request.is_cancelled()``; input 1: answers what the last wait saw.
CANCEL_WATCH = """
import time
import numpy as np
import triton_python_backend_utils as pb_utils

def answer(text):
    return pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([text.encode()], dtype=np.object_))])

class TritonPythonModel:
    def initialize(self, args):
        self.last = "none"

    def execute(self, requests):
        out = []
        for r in requests:
            if int(r.inputs()[0].as_numpy()[0]) == 1:
                out.append(answer(self.last))
                continue
            self.last = "waiting"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not r.is_cancelled():
                time.sleep(0.01)
            self.last = "cancelled" if r.is_cancelled() else "never cancelled"
            out.append(answer(self.last))
        return out
"""

#: BF16 through DLPack: the input's capsule as a consumer reads it (ctypes), then the same capsule, and the
#: tensor itself, made tensors again (``from_dlpack``) and answered.
DLPACK_BF16 = """
import ctypes
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]

class DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", Device), ("ndim", ctypes.c_int), ("dtype", DataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]

ctypes.pythonapi.PyCapsule_GetPointer.restype = ctypes.c_void_p
ctypes.pythonapi.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
ctypes.pythonapi.PyCapsule_GetName.restype = ctypes.c_char_p
ctypes.pythonapi.PyCapsule_GetName.argtypes = [ctypes.py_object]

def inspect(capsule):
    name = ctypes.pythonapi.PyCapsule_GetName(capsule)
    t = DLTensor.from_address(ctypes.pythonapi.PyCapsule_GetPointer(capsule, name))
    data = ctypes.string_at(t.data + t.byte_offset, 2 * t.shape[0]).hex()
    return {"name": name.decode(), "code": t.dtype.code, "bits": t.dtype.bits, "lanes": t.dtype.lanes,
            "shape": [t.shape[i] for i in range(t.ndim)], "device": t.device.device_type, "data": data}

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            tensor = r.inputs()[0]
            capsule = tensor.to_dlpack()
            seen = inspect(capsule)
            again = pb_utils.Tensor.from_dlpack("OUT", capsule)
            other = pb_utils.Tensor.from_dlpack("OUT2", tensor)
            seen["shapes"] = [list(again.shape()), list(other.shape())]
            seen["device"] = tensor.__dlpack_device__()
            out.append(pb_utils.InferenceResponse([
                again, other, pb_utils.Tensor("INFO", np.array([json.dumps(seen, sort_keys=True).encode()], dtype=np.object_))]))
        return out
"""
DLPACK_BF16_CONFIG = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_BF16 dims: [ 4 ] } ]
    output [ { name: "OUT" data_type: TYPE_BF16 dims: [ 4 ] }, { name: "OUT2" data_type: TYPE_BF16 dims: [ 4 ] },
             { name: "INFO" data_type: TYPE_STRING dims: [ 1 ] } ]
"""

#: Iterative sequence, decoupled (the Python backend's documented example, state kept per sequence): for input
#: n, a response each execution counting down from n-1, the request rescheduled until the last.  Each response
#: also says the request's flags in that execution.
ITERATIVE_DECOUPLED = """
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.left = {}

    def execute(self, requests):
        for r in requests:
            key = r.correlation_id()
            if key == 0:  # a null request of the direct strategy (an empty slot below a busy one)
                r.get_response_sender().send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            left = self.left.pop(key, None)
            left = (int(r.inputs()[0].as_numpy().flat[0]) if left is None else left) - 1
            response = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([left], np.int32)),
                                                   pb_utils.Tensor("FLAGS", np.array([r.flags()], np.int32))])
            sender = r.get_response_sender()
            if left <= 0:
                sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                self.left[key] = left
                r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                sender.send(response)
        return None
"""
#: Iterative sequence, one response per request: a request runs as many times as its input says (None while
#: rescheduled), then answers the flags of each of its executions.  Input 0 answers something for a
#: rescheduled request (an error); a negative input raises after rescheduling.
ITERATIVE = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.seen = {}
        self.wanted = {}

    def execute(self, requests):
        out = []
        for r in requests:
            if r.correlation_id() == 0:  # a null request of the direct strategy (an empty slot below a busy one)
                out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([b"null"], dtype=np.object_))]))
                continue
            flags = self.seen.setdefault(r.correlation_id(), [])
            if not flags:  # (Triton 2.51 may hand a rescheduled request's inputs over changed: read them once)
                self.wanted[r.correlation_id()] = int(r.inputs()[0].as_numpy().flat[0])
            n = self.wanted[r.correlation_id()]
            flags.append(r.flags())
            done = pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([json.dumps(flags).encode()], dtype=np.object_))])
            if n <= 0 or len(flags) < n:
                r.set_release_flags(pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)
                if n < 0:
                    raise ValueError("gave up after rescheduling")
                out.append(done if n == 0 else None)
            else:
                del self.seen[r.correlation_id()], self.wanted[r.correlation_id()]
                out.append(done)
        return out
"""
ITERATIVE_CONFIG = """
    backend: "python"
    max_batch_size: 4
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_{type} dims: [ 1 ] }{extra_output} ]
    sequence_batching { iterative_sequence: true }
    {extra}
"""


def build_compat_repo(repo: str) -> None:
    """The models of issue 30's cases."""
    write_python_model(repo, "bls_bytes_names", BLS_BYTES_NAMES, """
        backend: "python"
        max_batch_size: 0
        input [ { name: "NAME" data_type: TYPE_STRING dims: [ 1 ] } ]
        output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]""")
    write_python_model(repo, "cancel_watch", CANCEL_WATCH, ARGS_CONFIG + "instance_group [ { count: 1 kind: KIND_CPU } ]")
    write_python_model(repo, "dlpack_bf16", DLPACK_BF16, DLPACK_BF16_CONFIG)
    write_python_model(repo, "iterative", ITERATIVE, ITERATIVE_CONFIG.replace("{type}", "STRING").replace(
        "{extra_output}", "").replace("{extra}", ""))
    write_python_model(repo, "iterative_decoupled", ITERATIVE_DECOUPLED, ITERATIVE_CONFIG.replace("{type}", "INT32").replace(
        "{extra_output}", ', { name: "FLAGS" data_type: TYPE_INT32 dims: [ 1 ] }').replace(
        "{extra}", "model_transaction_policy { decoupled: true }"))


def build_repo(repo: str) -> None:
    """Good models, and models whose load fails in the model's own code (reasons compared)."""
    write_python_model(repo, "add_sub", ADD_SUB, ADD_SUB_CONFIG)
    write_python_model(repo, "batched", IDENTITY, BATCHED_CONFIG)
    write_python_model(repo, "strings", STRINGS, STRINGS_CONFIG)
    write_python_model(repo, "fails", FAILS, ECHO_INT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "repeat", REPEAT,
                       ECHO_INT_CONFIG.replace("{extra}", "model_transaction_policy { decoupled: true }"))
    write_python_model(repo, "params", PARAMS, PARAMS_CONFIG)
    write_python_model(repo, "completed", AUTO_COMPLETE, 'backend: "python"\n')
    write_python_model(repo, "batch_report", BATCH_REPORT, """
        backend: "python"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { max_queue_delay_microseconds: 400000 }""")
    rows_config = """
        backend: "python"
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 2 ] } ]
        output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
        dynamic_batching { {batching} max_queue_delay_microseconds: 400000 }"""
    write_python_model(repo, "preferred_two", BATCH_REPORT, rows_config.replace("{batching}", "preferred_batch_size: [ 2 ]"))
    write_python_model(repo, "up_to_eight", BATCH_REPORT, rows_config.replace("{batching}", ""))
    # executions of 2 s, so that requests queue while the instance is busy
    write_python_model(repo, "delayed_slow", BATCH_REPORT.replace("import json", "import json, time").replace(
        "    def execute(self, requests):\n", "    def execute(self, requests):\n        time.sleep(2.0)\n"),
        rows_config.replace("{batching}", "").replace("400000", "500000"))
    write_python_model(repo, "ordered", SLEEPS, TWO_INSTANCES.replace("{ordering}", "preserve_ordering: true"))
    write_python_model(repo, "unordered", SLEEPS, TWO_INSTANCES.replace("{ordering}", ""))
    write_python_model(repo, "groups", INSTANCE_INFO, ARGS_CONFIG + """
        instance_group [ { count: 2 kind: KIND_CPU }, { name: "extra" count: 1 kind: KIND_CPU },
                         { count: 1 kind: KIND_MODEL } ]""")
    write_python_model(repo, "complete_raises", AUTO_COMPLETE_RAISES, 'backend: "python"\n')
    write_python_model(repo, "complete_conflicts", AUTO_COMPLETE, 'backend: "python"\nmax_batch_size: 8\n')
    write_python_model(repo, "decoupled_edges", DECOUPLED_EDGES,
                       ECHO_INT_CONFIG.replace("{extra}", "model_transaction_policy { decoupled: true }"))
    write_python_model(repo, "init_fails", INIT_FAILS, ECHO_INT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "args", ARGS, ARGS_CONFIG)
    write_python_model(repo, "bls_timeout", BLS_TIMEOUT, ARGS_CONFIG)
    plain = ECHO_INT_CONFIG.replace("{extra}", "")
    write_python_model(repo, "bls", BLS, BLS_CONFIG)
    write_python_model(repo, "codes", CODES, plain)
    write_python_model(repo, "sequence", SEQUENCE, ARGS_CONFIG)
    write_python_model(repo, "stateful", SEQUENCE, SEQUENCE_CONFIG)
    write_python_model(repo, "shapes", SHAPES, SHAPES_CONFIG)
    for version in (1, 2, 3):
        write_python_model(repo, "versioned", IDENTITY.replace("r.inputs()[0].as_numpy()",
                                                               f"r.inputs()[0].as_numpy() * {version}"),
                           VERSIONED_CONFIG, version=version)
    write_python_model(repo, "labelled", IDENTITY, LABELS_CONFIG)
    # fails to load (no usable GPU for either server: tritium's are hidden), never served on CPU
    write_python_model(repo, "on_gpu", IDENTITY,
                       ECHO_INT_CONFIG.replace("{extra}", "instance_group [ { kind: KIND_GPU count: 1 } ]"))
    for name, policy in (
            ("queue_of_one", "default_queue_policy { max_queue_size: 1 }"),
            ("queue_counted", "default_queue_policy { max_queue_size: 1 }"),
            ("expiring", "default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 10000000 "
                         "allow_timeout_override: true }"),
            # no default timeout, which a request's own cannot lower: it never expires
            ("unexpiring", "default_queue_policy { timeout_action: REJECT allow_timeout_override: true }"),
            ("prioritized", "priority_levels: 2 default_priority_level: 2 "
                            "priority_queue_policy { key: 1 value { max_queue_size: 1 } }")):
        write_python_model(repo, name, SLOW, SLOW_CONFIG.replace("{policy}", policy))
    with open(os.path.join(repo, "labelled", "labels.txt"), "w") as f:
        f.write("cat\ndog\nbird\nfish\n")
    for name, config in (("twice", ENSEMBLE_CONFIG), ("through_fails", FAILING_ENSEMBLE_CONFIG)):
        os.makedirs(os.path.join(repo, name, "1"))
        with open(os.path.join(repo, name, "config.pbtxt"), "w") as f:
            f.write(config)
    write_python_model(repo, "bad_syntax", "class TritonPythonModel(:\n    pass\n", plain)
    write_python_model(repo, "no_class", "x = 1\n", plain)
    write_python_model(repo, "import_fails", "import no_such_module_here\n" + IDENTITY, plain)
    build_compat_repo(repo)
    write_python_model(repo, "cache_enabled", IDENTITY, ECHO_INT_CONFIG.replace("{extra}", "response_cache { enable: true }"))
    write_python_model(repo, "bad_config", IDENTITY,
                       BATCHED_CONFIG.replace("dynamic_batching { }", "dynamic_batching { preferred_batch_size: [ 9 ] }"))


class RealTriton(ServerProcess):
    """Real ``tritonserver`` on free ports, started by ``real_triton.sh`` with ``tritonserver``'s flags."""

    def __init__(self, repo: str, workdir: str, args: tuple[str, ...] = (),
                 headers: dict[str, str] | None = None) -> None:
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        command = ["bash", SCRIPT, f"--model-repository={repo}", f"--http-port={http_port}",
                   f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}", "--exit-on-error=false", *args]
        super().__init__(command, os.path.join(workdir, "triton.log"), dict(os.environ, PYTRITON_PYTHON=TRITON_PYTHON),
                         http_port, grpc_port, metrics_port)
        try:
            self.wait_live(180, headers)
        except RuntimeError:
            self.stop()
            raise


class Servers:
    """What a case may use: one server's clients and raw HTTP."""

    def __init__(self, url: str, grpc_url: str, metrics_url: str = "") -> None:
        self.url = url
        self.metrics_url = metrics_url
        self.grpc_url = grpc_url
        self.http = httpclient.InferenceServerClient(url)
        self.grpc = grpcclient.InferenceServerClient(grpc_url)

    def raw(self, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """Status and body (JSON when it parses) of a plain HTTP call."""
        request = urllib.request.Request(f"http://{self.url}{path}", data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode("utf-8", errors="replace")


def start_pair(args: tuple[str, ...] = (), build: Callable[[str], None] | None = None,
               headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """Both servers on one fresh copy of the repository (``build_repo``'s unless ``build``), with the same
    extra flags; ``headers``: what restricted health and repository APIs need while waiting for them."""
    workdir = tempfile.mkdtemp(prefix="tritium-vs-triton-")
    repo = os.path.join(workdir, "repo")
    (build or build_repo)(repo)
    try:
        triton = RealTriton(repo, workdir, args, headers)
    except RuntimeError as e:  # the reference, not tritium, is broken here: nothing to compare with
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"real Triton did not start: {str(e)[-500:]}")
    try:
        # (Triton 2.51 lets clients register shared memory without the flag, which it does not know)
        # (GPUs hidden: the Triton build here has none it can use, so KIND_GPU must fail on both)
        with mock.patch.dict(os.environ, {"TRITIUM_DISABLE_GPUS": "1"}), \
                RunningServer([repo], ["--exit-on-error=false", "--allow-client-shm=true", *args],
                              wait_ready=headers is None) as tritium:
            if headers is not None:
                tritium.wait_live(60, headers)
            for server in (triton, tritium):  # no case starts while either server still loads models
                loaded(server.url, headers=headers)
            yield (Servers(tritium.url, tritium.grpc_url, tritium.metrics_url),
                   Servers(triton.url, triton.grpc_url, triton.metrics_url))
    finally:
        triton.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def loaded(url: str, timeout: float = 180, headers: dict[str, str] | None = None) -> None:
    """Wait until no model of the server at ``url`` is loading (its repository index)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b"{}", method="POST",
                                         headers=headers or {})
        with urllib.request.urlopen(request, timeout=30) as r:
            if not any(m.get("state") == "LOADING" for m in json.loads(r.read())):
                return
        time.sleep(0.2)
    raise AssertionError(f"models of {url} still loading after {timeout} s")


@pytest.fixture(scope="module")
def pair():  # type: ignore[no-untyped-def]
    yield from start_pair()


@pytest.fixture(scope="module")
def explicit_pair():  # type: ignore[no-untyped-def]
    yield from start_pair(("--model-control-mode=explicit", "--load-model=add_sub", "--load-model=batched"))


def outcome(call: Callable[[], Any]) -> Any:
    """The result of a client call, or its error as (status, message) for comparing."""
    try:
        return ("ok", call())
    except InferenceServerException as e:
        return ("error", e.status(), e.message())


def http_inputs(*tensors: tuple[str, np.ndarray, str], binary: bool = True) -> list[httpclient.InferInput]:
    inputs = []
    for name, array, datatype in tensors:
        t = httpclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=binary)
        inputs.append(t)
    return inputs


def grpc_inputs(*tensors: tuple[str, np.ndarray, str]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array, datatype in tensors:
        t = grpcclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    return inputs


A = np.array([1.5, 2, 3, 4], np.float32)
B = np.array([0.5, 1, 1, 1], np.float32)


def as_lists(result: Any, names: list[str]) -> dict[str, Any]:
    return {n: result.as_numpy(n).tolist() for n in names}


# -- cases: each returns plain data, compared between the servers --------------------------------------

def case_add_sub_http_binary(s: Servers) -> Any:
    return outcome(lambda: as_lists(s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32"))),
                                    ["OUTPUT0", "OUTPUT1"]))


def case_add_sub_http_json(s: Servers) -> Any:
    return s.raw("POST", "/v2/models/add_sub/infer", json.dumps({
        "id": "7", "inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": A.tolist()},
                              {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": B.tolist()}],
        "outputs": [{"name": "OUTPUT1"}]}).encode())


def case_add_sub_grpc(s: Servers) -> Any:
    return outcome(lambda: as_lists(s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32"))),
                                    ["OUTPUT0", "OUTPUT1"]))


def case_wrong_input_name(s: Servers) -> Any:
    return (outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("NOPE", B, "FP32")))),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("NOPE", B, "FP32")))))


def case_missing_input(s: Servers) -> Any:
    return (outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32")))),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32")))))


def case_wrong_dtype(s: Servers) -> Any:
    ints = A.astype(np.int32)
    return (outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", ints, "INT32"), ("INPUT1", B, "FP32")))),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", ints, "INT32"), ("INPUT1", B, "FP32")))))


def case_wrong_shape(s: Servers) -> Any:
    five = np.ones(5, np.float32)  # one input wrong: which of two Triton names first is its map's order
    return (outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", five, "FP32")))),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", five, "FP32"), ("INPUT1", B, "FP32")))))


def case_unknown_model_and_version(s: Servers) -> Any:
    return (outcome(lambda: s.http.infer("nope", http_inputs(("INPUT0", A, "FP32")))),
            outcome(lambda: s.grpc.infer("nope", grpc_inputs(("INPUT0", A, "FP32")))),
            outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32")), model_version="9")),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32")), model_version="9")))


def case_batch_too_big(s: Servers) -> Any:
    x = np.arange(10, dtype=np.int32).reshape(5, 2)
    return (outcome(lambda: s.http.infer("batched", http_inputs(("INPUT0", x, "INT32")))),
            outcome(lambda: s.grpc.infer("batched", grpc_inputs(("INPUT0", x, "INT32")))))


def case_batched_ok(s: Servers) -> Any:
    x = np.arange(6, dtype=np.int32).reshape(3, 2)
    return outcome(lambda: s.http.infer("batched", http_inputs(("INPUT0", x, "INT32"))).as_numpy("OUTPUT0").tolist())


def case_strings(s: Servers) -> Any:
    x = np.array([b"abc", b"", "\u00e9t\u00e9".encode()], dtype=np.object_)
    return (outcome(lambda: s.http.infer("strings", http_inputs(("IN", x, "BYTES"))).as_numpy("OUT").tolist()),
            outcome(lambda: s.http.infer("strings", http_inputs(("IN", x, "BYTES"), binary=False)).as_numpy("OUT").tolist()),
            outcome(lambda: s.grpc.infer("strings", grpc_inputs(("IN", x, "BYTES"))).as_numpy("OUT").tolist()))


def case_model_errors(s: Servers) -> Any:
    def call(client: Any, make: Any, value: int) -> Any:
        return outcome(lambda: client.infer("fails", make(("INPUT0", np.array([value], np.int32), "INT32")))
                       .as_numpy("OUTPUT0").tolist())
    return [(call(s.http, http_inputs, v), call(s.grpc, grpc_inputs, v)) for v in (0, 5)]


def case_execute_raises(s: Servers) -> Any:
    """Triton's message ends with the model's traceback (file paths differ): compare its head."""
    def call(client: Any, make: Any) -> Any:
        result = outcome(lambda: client.infer("fails", make(("INPUT0", np.array([1], np.int32), "INT32"))))
        return result[:2] + (result[2].split("\n")[0],)
    return call(s.http, http_inputs), call(s.grpc, grpc_inputs)


def case_decoupled_over_http_and_unary_grpc(s: Servers) -> Any:
    x = np.array([3], np.int32)
    return (outcome(lambda: s.http.infer("repeat", http_inputs(("INPUT0", x, "INT32")))),
            outcome(lambda: s.grpc.infer("repeat", grpc_inputs(("INPUT0", x, "INT32")))))


def case_decoupled_stream(s: Servers) -> Any:
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(s.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        seen = []
        for n in (4, 0, 2):
            client.async_stream_infer("repeat", grpc_inputs(("INPUT0", np.array([n], np.int32), "INT32")),
                                      request_id=f"r{n}", enable_empty_final_response=True)
            while True:
                result, error = results.get(timeout=30)
                assert error is None, error
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                data = result.as_numpy("OUTPUT0").tolist() if response.outputs else None
                seen.append((response.id, data, final))
                if final:
                    break
        return seen
    finally:
        client.stop_stream()


def case_parameters_and_outputs(s: Servers) -> Any:
    x = np.array([1], np.int32)
    outs = [httpclient.InferRequestedOutput("OUT", binary_data=True)]
    with_params = s.http.infer("params", http_inputs(("INPUT0", x, "INT32")), request_id="abc", outputs=outs,
                               parameters={"flag": True, "n": 3, "s": "x"})
    grpc_params = s.grpc.infer("params", grpc_inputs(("INPUT0", x, "INT32")), request_id="g1",
                               parameters={"flag": False, "n": -2, "s": "y"})
    return (json.loads(with_params.as_numpy("OUT")[0]), with_params.get_response().get("id"),
            sorted(o["name"] for o in with_params.get_response()["outputs"]),
            json.loads(grpc_params.as_numpy("OUT")[0]), grpc_params.get_response().id,
            # none asked for: every output of the configuration, not one the model adds
            sorted(o.name for o in grpc_params.get_response().outputs))


def case_reserved_parameter(s: Servers) -> Any:
    x = np.array([1], np.int32)
    return (outcome(lambda: s.http.infer("params", http_inputs(("INPUT0", x, "INT32")), parameters={"priority": 1})),
            outcome(lambda: s.grpc.infer("params", grpc_inputs(("INPUT0", x, "INT32")), parameters={"sequence_id": 1})))


def case_initialize_args(s: Servers) -> Any:
    result = s.http.infer("args", http_inputs(("INPUT0", np.array([1], np.int32), "INT32")))
    return json.loads(result.as_numpy("OUT")[0])


def case_model_metadata(s: Servers) -> Any:
    http = s.http.get_model_metadata("add_sub")
    grpc = s.grpc.get_model_metadata("strings", as_json=True)
    return http, grpc


def case_model_config_core(s: Servers) -> Any:
    """The parts of the config a client reads; Triton fills many more defaults, compared elsewhere."""
    config = s.http.get_model_config("batched")
    keys = ("name", "backend", "max_batch_size", "input", "output", "dynamic_batching", "model_transaction_policy")
    return {k: config.get(k) for k in keys}


def case_model_readiness(s: Servers) -> Any:
    return [(name, s.http.is_model_ready(name), s.grpc.is_model_ready(name))
            for name in ("add_sub", "init_fails", "nope")]


def case_repository_index(s: Servers) -> Any:
    """Reasons compared by their first line (the traceback after it names frames of each server's importer)."""
    index = [m for m in s.http.get_model_repository_index() if m["name"] != "bad_config"]  # see below
    return sorted((m["name"], m.get("version"), m.get("state"), m.get("reason", "").split("\n")[0]) for m in index)


def case_failed_model_calls(s: Servers) -> Any:
    x = np.array([1], np.int32)
    return (outcome(lambda: s.http.infer("init_fails", http_inputs(("INPUT0", x, "INT32")))),
            outcome(lambda: s.grpc.infer("no_class", grpc_inputs(("INPUT0", x, "INT32")))),
            outcome(lambda: s.http.get_model_metadata("bad_syntax")),
            outcome(lambda: s.http.infer("on_gpu", http_inputs(("INPUT0", x, "INT32")))),
            s.raw("POST", "/v2/repository/models/init_fails/load"))


def case_unload_unknown_and_load_unknown(s: Servers) -> Any:
    return (s.raw("POST", "/v2/repository/models/nope/load"),
            s.raw("POST", "/v2/repository/models/nope/unload"))


def json_fault(status_body: tuple[int, Any]) -> tuple[bool, str]:
    """Deliberate difference: a body that is not valid JSON, or whose values are not of the types the protocol
    asks, is the client's fault and tritium answers 400 saying what is wrong; Triton answers 500 (its JSON
    library reports an internal error) in that library's words.  What must agree is the message's head."""
    status, body = status_body
    return status in (400, 500), body["error"].split(":")[0]


def case_http_malformed(s: Servers) -> Any:
    head = json_fault
    return (head(s.raw("POST", "/v2/models/add_sub/infer", b"{not json")),
            head(s.raw("POST", "/v2/models/add_sub/infer", b'{"inputs": 3}')),
            s.raw("GET", "/v2/models/add_sub/infer"),
            s.raw("GET", "/v2/nothing/here"))


def case_health(s: Servers) -> Any:
    return (s.http.is_server_live(), s.http.is_server_ready(), s.grpc.is_server_live(), s.grpc.is_server_ready(),
            s.raw("GET", "/v2/health/live"), s.raw("GET", "/v2/health/ready"))


def case_bls(s: Servers) -> Any:
    def call(parameters: dict[str, Any]) -> Any:
        result = s.http.infer("bls", http_inputs(("INPUT0", A, "FP32")), parameters=parameters)
        return json.loads(result.as_numpy("OUT")[0])
    return (call({}), call({"target": "nope"}), call({"inputs": "INPUT0"}), call({"inputs": "INPUT0,WRONG"}),
            call({"target": "repeat"}), call({"target": "fails", "int": 0, "inputs": "INPUT0"}),
            call({"target": "fails", "int": 1, "inputs": "INPUT0"}),
            call({"target": "repeat", "int": 2, "inputs": "INPUT0", "decoupled": True}),
            call({"target": "fails", "int": 0, "inputs": "INPUT0", "decoupled": True}),
            call({"target": "fails", "int": 1, "inputs": "INPUT0", "decoupled": True}),
            call({"target": "nope", "decoupled": True}))


def case_model_error_codes(s: Servers) -> Any:
    def call(client: Any, make: Any, index: int) -> Any:
        return outcome(lambda: client.infer("codes", make(("INPUT0", np.array([index], np.int32), "INT32"))))
    return [(call(s.http, http_inputs, i), call(s.grpc, grpc_inputs, i)) for i in range(8)]


def case_sequence_id_and_flags(s: Servers) -> Any:
    x = np.array([1], np.int32)
    def seen(client: Any, make: Any, **kwargs: Any) -> Any:
        return json.loads(client.infer("sequence", make(("INPUT0", x, "INT32")), **kwargs).as_numpy("OUT")[0])
    return (seen(s.http, http_inputs, sequence_id=42, sequence_start=True),
            seen(s.http, http_inputs, sequence_id=42, sequence_end=True),
            seen(s.grpc, grpc_inputs, sequence_id=7, sequence_start=True, sequence_end=True),
            seen(s.grpc, grpc_inputs))


def case_request_id_in_errors(s: Servers) -> Any:
    five = np.ones(5, np.float32)
    return (outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", five, "FP32"), ("INPUT1", B, "FP32")),
                                         request_id="my-id")),
            outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32")), request_id="g-id")))


def case_classification(s: Servers) -> Any:
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", class_count=2)]
    result = s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")), outputs=outputs)
    grpc_out = [grpcclient.InferRequestedOutput("OUTPUT1", class_count=3)]
    grpc_result = s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")), outputs=grpc_out)
    return result.as_numpy("OUTPUT0").tolist(), grpc_result.as_numpy("OUTPUT1").tolist()


def case_json_output_types(s: Servers) -> Any:
    """Outputs asked as JSON (binary_data false): strings and floats as JSON values."""
    strings = s.raw("POST", "/v2/models/strings/infer", json.dumps({
        "inputs": [{"name": "IN", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}).encode())
    floats = s.raw("POST", "/v2/models/add_sub/infer", json.dumps({
        "inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": [0.1, 0.2, 1e-8, 3]},
                   {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": [0, 0, 0, 0]}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": False}}]}).encode())
    return strings, floats


def settled_statistics(s: Servers, model: str) -> dict[str, Any]:
    """The model's statistics once they stop changing: Triton records an execution's after its response is
    sent, so a read right after the last answer can miss it (it did on a loaded machine).  Read until two
    reads 0.3 s apart agree."""
    deadline = time.monotonic() + 10
    last = s.http.get_inference_statistics(model)["model_stats"][0]
    while True:
        time.sleep(0.3)
        stats = s.http.get_inference_statistics(model)["model_stats"][0]
        if stats == last or time.monotonic() > deadline:
            return stats
        last = stats


def case_statistics_after_calls(s: Servers) -> Any:
    """Counts after a known number of calls (durations differ, so only whether they are set)."""
    x = np.arange(4, dtype=np.int32).reshape(2, 2)
    before = settled_statistics(s, "batched")
    for _ in range(3):
        s.http.infer("batched", http_inputs(("INPUT0", x, "INT32")))
    after = settled_statistics(s, "batched")
    def shape(stats: dict) -> Any:
        if isinstance(stats, dict):
            return {k: ("ns" if k == "ns" else shape(v)) for k, v in stats.items() if k != "last_inference"}
        if isinstance(stats, list):
            return [shape(v) for v in stats]
        return stats
    counts = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
              for k in after["inference_stats"]}
    return (shape(after).keys(), counts, after["inference_count"] - before["inference_count"],
            after["execution_count"] - before["execution_count"],
            sorted(b["batch_size"] for b in after["batch_stats"]))


def case_response_cache_without_cache_config(s: Servers) -> Any:
    """A model that enables the response cache on a server without --cache-config is served, uncached."""
    x = np.array([4, 2], np.int32)
    answers = [s.http.infer("cache_enabled", http_inputs(("INPUT0", x, "INT32"))).as_numpy("OUTPUT0").tolist()
               for _ in range(3)]
    stats = settled_statistics(s, "cache_enabled")
    counts = {k: v["count"] for k, v in stats["inference_stats"].items()}
    return answers, stats["execution_count"], counts, s.http.get_model_config("cache_enabled")["response_cache"]


def case_model_config_full(s: Servers) -> Any:
    return s.http.get_model_config("add_sub"), s.grpc.get_model_config("batched", as_json=True)["config"]


def case_server_metadata(s: Servers) -> Any:
    """Deliberate difference: tritium has no CUDA shared memory, so it does not list that extension."""
    metadata = s.http.get_server_metadata()
    return sorted(metadata), sorted(set(metadata["extensions"]) - {"cuda_shared_memory"})


def unregistered(call: Callable[[], Any]) -> Any:
    """The outcome of unregistering shared memory, retried for up to 5 s while Triton refuses it as in use
    ("Failed to unregister the following ... regions", seen under load): Triton lets go of the regions a request used only
    after answering it, so on a loaded machine the next call can still find them held.  tritium lets go
    before it answers."""
    deadline = time.monotonic() + 5
    while True:
        result = outcome(call)
        if result[0] == "ok" or not ("Failed to unregister" in result[-1] or "in use" in result[-1]) \
                or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def case_system_shared_memory_keys_that_are_not_regular_files(s: Servers) -> Any:
    """shm_open follows no symbolic link (to a file outside /dev/shm or to another region) and takes one
    name, no path: registering such keys is refused alike."""
    base = f"/dev/shm/tritium_diff_{os.getpid()}"
    target = shm.create_shared_memory_region("target", f"/tritium_diff_{os.getpid()}_target", 4096)
    with tempfile.TemporaryDirectory() as folder:
        marker = os.path.join(folder, "marker")
        with open(marker, "wb") as f:
            f.write(b"x" * 4096)
        os.symlink(marker, base + "_link_out")
        os.symlink(f"/dev/shm/tritium_diff_{os.getpid()}_target", base + "_link_in")
        try:
            keys = [base[len("/dev/shm"):] + "_link_out", base[len("/dev/shm"):] + "_link_in",
                    "/../etc/passwd", "tritium_x/../etc/passwd", "/.."]
            steps = [outcome(lambda key=key: s.http.register_system_shared_memory("k", key, 64)) for key in keys]
            return steps + [outcome(lambda: s.http.get_system_shared_memory_status())]
        finally:
            unregistered(s.http.unregister_system_shared_memory)
            for link in ("_link_out", "_link_in"):
                os.unlink(base + link)
            shm.destroy_shared_memory_region(target)


def case_system_shared_memory_http(s: Servers) -> Any:
    """Register, status, inference with inputs and an output in shared memory, the errors, unregister."""
    key_in, key_out = f"/tritium_diff_{os.getpid()}_in", f"/tritium_diff_{os.getpid()}_out"
    h_in = shm.create_shared_memory_region("in", key_in, 32)
    h_out = shm.create_shared_memory_region("out", key_out, 16)
    try:
        shm.set_shared_memory_region(h_in, [A, B])
        shm.set_shared_memory_region(h_out, [np.zeros(4, np.float32)])
        c = s.http
        steps: list[Any] = [outcome(lambda: c.register_system_shared_memory("in", key_in, 32)),
                            outcome(lambda: c.register_system_shared_memory("out", key_out, 16)),
                            outcome(lambda: c.register_system_shared_memory("in", key_in, 32)),
                            outcome(lambda: c.register_system_shared_memory("x", "/tritium_diff_none", 8)),
                            outcome(lambda: c.register_system_shared_memory("x", key_in, 64)),
                            outcome(lambda: c.get_system_shared_memory_status()),
                            outcome(lambda: c.get_system_shared_memory_status("nosuch"))]

        def infer(size: int = 16, offset: int = 0, region: str = "in", out_size: int = 16) -> Any:
            i0 = httpclient.InferInput("INPUT0", [4], "FP32")
            i0.set_shared_memory(region, size, offset=offset)
            i1 = httpclient.InferInput("INPUT1", [4], "FP32")
            i1.set_shared_memory("in", 16, offset=16)
            o0 = httpclient.InferRequestedOutput("OUTPUT0")
            o0.set_shared_memory("out", out_size)
            result = c.infer("add_sub", [i0, i1], outputs=[o0, httpclient.InferRequestedOutput("OUTPUT1")])
            return (result.get_response()["outputs"], result.as_numpy("OUTPUT1").tolist(),
                    shm.get_contents_as_numpy(h_out, np.float32, [4]).tolist())

        steps += [outcome(infer), outcome(lambda: infer(region="nosuch")), outcome(lambda: infer(offset=24)),
                  outcome(lambda: infer(size=8)), outcome(lambda: infer(out_size=8)),
                  outcome(lambda: c.unregister_system_shared_memory("nosuch")),
                  unregistered(lambda: c.unregister_system_shared_memory("in")),
                  outcome(lambda: c.get_system_shared_memory_status()),
                  unregistered(lambda: c.unregister_system_shared_memory()),
                  outcome(lambda: c.get_system_shared_memory_status()),
                  outcome(lambda: c.get_cuda_shared_memory_status())]
        return steps
    finally:
        unregistered(s.http.unregister_system_shared_memory)
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def case_system_shared_memory_grpc(s: Servers) -> Any:
    """The same over gRPC, with a raw input beside one in shared memory, and all outputs in regions."""
    key_in, key_out = f"/tritium_diff_{os.getpid()}_gin", f"/tritium_diff_{os.getpid()}_gout"
    h_in = shm.create_shared_memory_region("gin", key_in, 32)
    h_out = shm.create_shared_memory_region("gout", key_out, 32)
    try:
        shm.set_shared_memory_region(h_in, [A, B])
        c = s.grpc
        steps: list[Any] = [outcome(lambda: c.register_system_shared_memory("gin", key_in, 32)),
                            outcome(lambda: c.register_system_shared_memory("gout", key_out, 32)),
                            outcome(lambda: c.register_system_shared_memory("gin", key_in, 32)),
                            outcome(lambda: c.register_system_shared_memory("again", key_in, 32)),
                            outcome(lambda: c.register_system_shared_memory("x", "/tritium_diff_none", 8)),
                            outcome(lambda: c.get_system_shared_memory_status(as_json=True)),
                            outcome(lambda: c.get_system_shared_memory_status("nosuch", as_json=True))]

        def infer(size: int = 16, region: str = "gin", raw_second: bool = False, out_size: int = 16) -> Any:
            i0 = grpcclient.InferInput("INPUT0", [4], "FP32")
            i0.set_shared_memory(region, size)
            i1 = grpcclient.InferInput("INPUT1", [4], "FP32")
            if raw_second:
                i1.set_data_from_numpy(B)
            else:
                i1.set_shared_memory("gin", 16, offset=16)
            outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
            outputs[0].set_shared_memory("gout", out_size)
            outputs[1].set_shared_memory("gout", 16, offset=16)
            result = c.infer("add_sub", [i0, i1], outputs=outputs).get_response(as_json=True)
            return result["outputs"], result.get("raw_output_contents"), shm.get_contents_as_numpy(
                h_out, np.float32, [8]).tolist()

        steps += [outcome(infer), outcome(lambda: infer(raw_second=True)), outcome(lambda: infer(region="nosuch")),
                  outcome(lambda: infer(size=8)), outcome(lambda: infer(out_size=8)),
                  unregistered(lambda: c.unregister_system_shared_memory()),
                  outcome(lambda: c.get_system_shared_memory_status(as_json=True)),
                  outcome(lambda: c.get_cuda_shared_memory_status(as_json=True))]
        return steps
    finally:
        unregistered(s.grpc.unregister_system_shared_memory)
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)


def case_output_order_duplicates_and_extra_raw(s: Servers) -> Any:
    """Outputs come once each, in the model's order, whatever order (and repeats) the request asked for; gRPC
    raw contents beyond the inputs' are ignored."""
    def http_run() -> Any:
        outputs = [httpclient.InferRequestedOutput(n) for n in ("OUTPUT1", "OUTPUT0", "OUTPUT1")]
        return s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")),
                            outputs=outputs).get_response()["outputs"]

    def grpc_run() -> Any:
        request = pb.ModelInferRequest(model_name="add_sub")
        for name in ("INPUT0", "INPUT1"):
            tensor = request.inputs.add(name=name, datatype="FP32")
            tensor.shape.extend([4])
        request.raw_input_contents.extend([A.tobytes(), B.tobytes(), B.tobytes()])
        for name in ("OUTPUT1", "OUTPUT0", "OUTPUT1"):
            request.outputs.add(name=name)
        channel = grpc.insecure_channel(s.grpc_url)
        try:
            response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        finally:
            channel.close()
        return [o.name for o in response.outputs], [bytes(r) for r in response.raw_output_contents]

    return outcome(http_run), grpc_run()


def case_ensemble(s: Servers) -> Any:
    def run(client: Any, make: Any, *tensors: Any) -> Any:
        return outcome(lambda: as_lists(client.infer("twice", make(*tensors)), ["TWICE_A", "TWICE_B"]))
    return (run(s.http, http_inputs, ("A", A, "FP32"), ("B", B, "FP32")),
            run(s.grpc, grpc_inputs, ("A", A, "FP32"), ("B", B, "FP32")),
            run(s.http, http_inputs, ("A", A, "FP32")),
            run(s.grpc, grpc_inputs, ("A", A, "FP32"), ("C", B, "FP32")),
            s.http.get_model_metadata("twice"), ensemble_config(s))


def case_ensemble_step_fails(s: Servers) -> Any:
    """A step's error response, and a step whose execute raises, as the ensemble's client sees them.
    Deliberate difference: tritium names the failing step ("in ensemble 'e', step 0 (model 'm') failed:
    <error>"), Triton writes "in ensemble 'e', <error>"; compared without that part."""
    def run(client: Any, make: Any, value: int) -> Any:
        result = outcome(lambda: client.infer("through_fails", make(("X", np.array([value], np.int32), "INT32")))
                         .as_numpy("Y").tolist())
        if result[0] == "error":
            result = result[:2] + (result[2].replace("step 0 (model 'fails') failed: ", ""),)
        return result
    return [run(client, make, value) for client, make in ((s.http, http_inputs), (s.grpc, grpc_inputs))
            for value in (2, 0, 1)]


def ensemble_config(s: Servers) -> dict[str, Any]:
    """Deliberate difference: tritium's model_config.proto has Triton's newer ``max_inflight_requests``
    (after 2.51), which its JSON shows."""
    config = s.http.get_model_config("twice")
    config["ensemble_scheduling"].pop("max_inflight_requests", None)
    return config


def case_sequence_batcher(s: Servers) -> Any:
    x = np.array([1], np.int32)
    def run(client: Any, make: Any, **kwargs: Any) -> Any:
        return outcome(lambda: json.loads(client.infer("stateful", make(("INPUT0", x, "INT32")), **kwargs)
                                          .as_numpy("OUT")[0]))
    return (run(s.http, http_inputs), run(s.grpc, grpc_inputs),
            run(s.http, http_inputs, sequence_id=5, sequence_start=True),
            run(s.grpc, grpc_inputs, sequence_id=5),
            run(s.http, http_inputs, sequence_id=5, sequence_end=True),
            run(s.http, http_inputs, sequence_id=6),
            run(s.grpc, grpc_inputs, sequence_id="text-id", sequence_start=True, sequence_end=True))


def case_metric_families(s: Servers) -> Any:
    """The inference metric families and their labels for one model (values depend on earlier cases)."""
    s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")))
    metrics_url = s.metrics_url
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    families = sorted({line.split()[2] for line in text.splitlines()
                       if line.startswith("# TYPE nv_inference") or line.startswith("# TYPE nv_model")})
    labels = sorted({line.split("{")[1].split("}")[0] for line in text.splitlines()
                     if line.startswith("nv_inference_request_success{") and 'model="add_sub"' in line})
    return families, labels


def case_log_and_trace_settings(s: Servers) -> Any:
    return s.raw("GET", "/v2/logging"), s.raw("GET", "/v2/trace/setting"), s.raw("GET", "/v2/models/add_sub/trace/setting")


def case_repository_index_ready_only(s: Servers) -> Any:
    return sorted(m["name"] for m in s.http.get_model_repository_index() if m.get("state") == "READY"), \
        s.raw("POST", "/v2/repository/index", json.dumps({"ready": True}).encode())[1] is not None


def case_stream_errors_and_plain_models(s: Servers) -> Any:
    """ModelStreamInfer: a request the server refuses comes back on the stream as an error; a model that is
    not decoupled answers once, marked final."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(s.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    seen = []
    try:
        calls = [("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32"))),
                 ("add_sub", grpc_inputs(("INPUT0", A, "FP32"))),
                 ("nope", grpc_inputs(("INPUT0", A, "FP32"))),
                 ("fails", grpc_inputs(("INPUT0", np.array([0], np.int32), "INT32"))),
                 ("repeat", grpc_inputs(("INPUT0", np.array([1.5], np.float32), "FP32")))]
        for model, inputs in calls:
            client.async_stream_infer(model, inputs, request_id=model, enable_empty_final_response=True)
            result, error = results.get(timeout=30)
            if error is not None:
                seen.append(("error", error.status(), error.message()))
            else:
                response = result.get_response()
                seen.append((response.id, [o.name for o in response.outputs],
                             response.parameters["triton_final_response"].bool_param))
        return seen
    finally:
        client.stop_stream()


def case_decoupled_edges(s: Servers) -> Any:
    """What a stream carries, per DECOUPLED_EDGES mode: until the final response, or a second of silence."""
    seen = []
    for mode in (1, 2, 3, 4):
        results: queue.Queue[Any] = queue.Queue()
        client = grpcclient.InferenceServerClient(s.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            client.async_stream_infer("decoupled_edges", grpc_inputs(("INPUT0", np.array([mode], np.int32), "INT32")),
                                      enable_empty_final_response=True)
            got: list[Any] = []
            while True:
                try:
                    result, error = results.get(timeout=1.0)
                except queue.Empty:
                    break
                if error is not None:
                    got.append(("error", error.status(), error.message()))
                    continue
                final = result.get_response().parameters["triton_final_response"].bool_param
                out = result.as_numpy("OUTPUT0")
                got.append((None if out is None else out.tolist(), final))
                if final:
                    break
            seen.append(got)
        finally:
            client.stop_stream()
    return seen


def case_instance_groups(s: Servers) -> Any:
    """Group names as configured or filled in, and every instance's name, kind and device as it is told."""
    groups = [(g["name"], g["kind"], g["count"]) for g in s.http.get_model_config("groups")["instance_group"]]
    answers = sent_apart(s, "groups", [(0, np.array([i], np.int32), {}) for i in range(24)],
                         lambda result: result.as_numpy("OUT")[0])
    return groups, sorted({answer for _, answer in answers})


def case_auto_complete(s: Servers) -> Any:
    config = s.http.get_model_config("completed")
    result = s.http.infer("completed", http_inputs(("INPUT0", np.array([[1, 2]], np.float32), "FP32")))
    return (config["max_batch_size"], config["input"], config["output"], "dynamic_batching" in config,
            result.as_numpy("OUTPUT0").tolist())


def case_compressed_requests_and_responses(s: Servers) -> Any:
    inputs = http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32"))
    out = []
    for algorithm in ("gzip", "deflate"):
        result = s.http.infer("add_sub", inputs, request_compression_algorithm=algorithm,
                              response_compression_algorithm=algorithm)
        out.append(as_lists(result, ["OUTPUT0", "OUTPUT1"]))
    out.append(s.raw("POST", "/v2/models/add_sub/infer", b"xx", headers={"Content-Encoding": "br"}))
    return out


def case_http_body_variants(s: Servers) -> Any:
    """Request bodies a client may build by hand."""
    def post(model: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        status, doc = s.raw("POST", f"/v2/models/{model}/infer", body, headers)
        return status, doc
    doc = {"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": A.tolist()},
                      {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": B.tolist()}]}
    binary_out = dict(doc, parameters={"binary_data_output": True})
    status, raw = s.raw("POST", "/v2/models/add_sub/infer", json.dumps(binary_out).encode())
    ints = np.arange(3, dtype=np.int32)
    return (
        (status, type(raw).__name__),
        post("batched", ints.reshape(1, 3).tobytes(), {"Inference-Header-Content-Length": "0"}),
        json_fault(post("strings", json.dumps({"inputs": [{"name": "IN", "shape": [2], "datatype": "BYTES",
                                                            "data": ["x", 3]}]}).encode())),
        json_fault(post("add_sub", json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32",
                                                            "data": [1, 2, 3]}]}).encode())),
        post("add_sub", json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP16",
                                                 "data": [1, 2, 3, 4]}]}).encode()),
        post("add_sub", json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32",
                                                 "parameters": {"binary_data_size": 16}}]}).encode()),
        post("add_sub", json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP33",
                                                 "data": [1, 2, 3, 4]}]}).encode()),
        post("add_sub", json.dumps(dict(doc, outputs=[{"name": "NOPE"}])).encode()),
    )


def post_text(s: Servers, path: str, doc: Any) -> tuple[int, str | None, str]:
    """Status, content type and body text of a POST (generate answers, Server-Sent Events included)."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    request = urllib.request.Request(f"http://{s.url}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def metric_lines(s: Servers, family: str, model: str) -> dict[str, float]:
    with urllib.request.urlopen(s.metrics_url, timeout=10) as r:
        text = r.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(family + "{") and f'model="{model}"' in line}


def case_failure_accounting(s: Servers) -> Any:
    """What an error response, an exception in execute and a refused request count, in statistics and metrics."""
    before, metrics_before = settled_statistics(s, "fails"), metric_lines(s, "nv_inference_request_failure", "fails")
    success_before = metric_lines(s, "nv_inference_request_success", "fails")
    for value in (0, 1, 5):
        outcome(lambda: s.http.infer("fails", http_inputs(("INPUT0", np.array([value], np.int32), "INT32"))))
    outcome(lambda: s.http.infer("fails", http_inputs(("INPUT0", np.array([1.0], np.float32), "FP32"))))
    after = settled_statistics(s, "fails")
    time.sleep(1.5)  # Triton refreshes some metrics on an interval
    failures = metric_lines(s, "nv_inference_request_failure", "fails")
    successes = metric_lines(s, "nv_inference_request_success", "fails")
    def delta(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
        return {k: v - old.get(k, 0.0) for k, v in new.items()}
    counts = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
              for k in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")}
    batches = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    batches_before = {b["batch_size"]: b["compute_infer"]["count"] for b in before["batch_stats"]}
    return (counts, after["inference_count"] - before["inference_count"],
            after["execution_count"] - before["execution_count"], delta(batches, batches_before),
            delta(failures, metrics_before), delta(successes, success_before))


def case_optional_inputs_and_reshape(s: Servers) -> Any:
    main = np.arange(8, dtype=np.float32).reshape(2, 4)
    def seen(client: Any, make: Any, *tensors: Any) -> Any:
        return outcome(lambda: [json.loads(v) for v in client.infer("shapes", make(*tensors)).as_numpy("OUT")
                                .reshape(-1)])
    return (seen(s.http, http_inputs, ("MAIN", main, "FP32")),
            seen(s.grpc, grpc_inputs, ("MAIN", main, "FP32"), ("EXTRA", np.array([[1], [2]], np.int32), "INT32")),
            s.http.get_model_metadata("shapes"))


def test_a_required_input_cannot_be_replaced_by_an_optional_one(pair: tuple[Servers, Servers]) -> None:
    """Deliberate difference: Triton 2.51 checks only how many inputs came, so an optional input in place of a
    required one reaches the model without it; tritium refuses the request and names the missing input."""
    tritium, triton = pair
    extra_only = ("EXTRA", np.array([[1]], np.int32), "INT32")
    theirs = triton.http.infer("shapes", http_inputs(extra_only)).as_numpy("OUT")
    assert json.loads(theirs.reshape(-1)[0]) == {"EXTRA": [1, 1]}
    with pytest.raises(InferenceServerException, match=r"missing required inputs for model 'shapes'. Got input\(s\) "
                                                       r"\['EXTRA'\], but missing required input\(s\) \['MAIN'\]"):
        tritium.http.infer("shapes", http_inputs(extra_only))


def case_versions(s: Servers) -> Any:
    x = np.array([1, 2], np.int32)
    def run(version: str) -> Any:
        return outcome(lambda: s.http.infer("versioned", http_inputs(("INPUT0", x, "INT32")), model_version=version)
                       .as_numpy("OUTPUT0").tolist())
    return ([run(v) for v in ("", "1", "2", "3", "4")], s.http.get_model_metadata("versioned"),
            [(v, s.http.is_model_ready("versioned", v)) for v in ("1", "2", "3")],
            outcome(lambda: s.grpc.get_model_metadata("versioned", "2", as_json=True)),
            sorted((m["name"], m.get("version"), m.get("state")) for m in s.http.get_model_repository_index()
                   if m["name"] == "versioned"))


def case_classification_labels(s: Servers) -> Any:
    x = np.array([0.5, 3, -1, 2], np.float32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", class_count=3)]
    http = s.http.infer("labelled", http_inputs(("INPUT0", x, "FP32")), outputs=outputs).as_numpy("OUTPUT0").tolist()
    grpc_outputs = [grpcclient.InferRequestedOutput("OUTPUT0", class_count=9)]
    return http, outcome(lambda: s.grpc.infer("labelled", grpc_inputs(("INPUT0", x, "FP32")), outputs=grpc_outputs)
                         .as_numpy("OUTPUT0").tolist())


def case_grpc_admin(s: Servers) -> Any:
    """The gRPC side of metadata, index, statistics and settings (JSON forms, values that do not drift)."""
    metadata = s.grpc.get_server_metadata(as_json=True)
    index = s.grpc.get_model_repository_index(as_json=True)
    stats = s.grpc.get_inference_statistics("strings", as_json=True)["model_stats"][0]
    def keys(doc: dict) -> Any:  # protobuf's JSON leaves out zeros, so only the layout is compared
        return sorted(k for k in doc if k != "last_inference"), sorted(doc["inference_stats"])
    return (sorted(metadata), sorted(set(metadata["extensions"]) - {"system_shared_memory", "cuda_shared_memory"}),
            sorted((m["name"], m.get("version"), m.get("state")) for m in index["models"]
                   if m["name"] != "bad_config"),  # test_a_config_triton_refuses_is_listed_with_its_reason
            keys(stats), s.grpc.get_log_settings(as_json=True), s.grpc.get_trace_settings(as_json=True),
            outcome(lambda: s.grpc.get_model_metadata("nope")), outcome(lambda: s.grpc.get_model_config("nope")),
            outcome(lambda: s.grpc.get_inference_statistics("nope")))


def case_generate(s: Servers) -> Any:
    ones = [1, 1, 1, 1]
    calls = [
        ("add_sub", {"INPUT0": [1, 2, 3, 4], "INPUT1": ones}),
        ("add_sub", {"INPUT0": [1, 2, 3, 4], "INPUT1": ones, "id": "x1", "parameters": {"a": 1}}),
        ("add_sub", {"INPUT0": [1, 2, 3, 4]}),
        ("add_sub", {"INPUT0": [1, 2, 3, 4], "INPUT1": ones, "EXTRA": 3}),
        ("add_sub", {"INPUT0": [[1, 2], [3, 4]], "INPUT1": ones}),
        ("add_sub", {"INPUT0": 5, "INPUT1": ones}),
        ("strings", {"IN": "abc"}),
        ("strings", {"IN": ["abc", "de"]}),
        ("params", {"INPUT0": 3, "parameters": {"x": "y", "n": 2}, "extra_param": 7}),
        ("repeat", {"INPUT0": 3}),
        ("repeat", {"INPUT0": 1}),
        ("fails", {"INPUT0": 0}),
        ("fails", {"INPUT0": 1}),
        ("batched", {"INPUT0": [1, 2]}),
        ("nope", {"INPUT0": [1, 2]}),
    ]
    answers = []
    for model, doc in calls:
        status, content_type, text = post_text(s, f"/v2/models/{model}/generate", doc)
        answers.append((status, content_type, text.split("\n\nAt:")[0]))
    status, _, text = post_text(s, "/v2/models/add_sub/generate", b"{bad")  # the deliberate difference of json_fault
    answers.append(json_fault((status, json.loads(text))))
    status, _, text = post_text(s, "/v2/models/add_sub/generate", b"[1]")  # Triton: "attempt to get members ..."
    answers.append(json_fault((status, json.loads(text)))[0])
    return answers


def case_generate_stream(s: Servers) -> Any:
    calls = [("repeat", {"INPUT0": 3}), ("repeat", {"INPUT0": 0}),
             ("add_sub", {"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1]}),
             ("fails", {"INPUT0": 0}), ("fails", {"INPUT0": 7}), ("add_sub", {"INPUT0": [1, 2, 3, 4]})]
    return [post_text(s, f"/v2/models/{model}/generate_stream", doc) for model, doc in calls]


def sent_apart(s: Servers, model: str, calls: list[tuple[float, np.ndarray, dict[str, Any]]],
               read: Callable[[Any], Any]) -> list[tuple[int, Any]]:
    """Each call ``(wait, INPUT0, infer keyword arguments)``: wait that many seconds, then send it over gRPC
    without waiting for the answer.  ``(index, what read(result) gives, or ("error", status, message))`` of
    each call, in the order in which they came back."""
    done: queue.Queue[tuple[int, Any]] = queue.Queue()
    for i, (wait, array, kwargs) in enumerate(calls):
        time.sleep(wait)

        def callback(result: Any, error: Any, i: int = i) -> None:
            done.put((i, read(result) if error is None else ("error", error.status(), error.message())))

        s.grpc.async_infer(model, grpc_inputs(("INPUT0", array, np_to_triton_dtype(array.dtype))), callback, **kwargs)
    return [done.get(timeout=30) for _ in calls]


def queued_calls(s: Servers, model: str, calls: list[dict[str, Any]]) -> list[Any]:
    """Send ``calls`` (``infer`` keyword arguments, plus ``after``: seconds to wait before sending, 0.1 unless
    given) to a model whose executes take 0.6 s, the i-th with input i; the outcome of each call, in the
    order in which they came back."""
    answers = sent_apart(s, model, [(call.get("after", 0.1), np.array([[i]], np.int32),
                                     {k: v for k, v in call.items() if k != "after"}) for i, call in enumerate(calls)],
                         lambda result: ("ok", result.as_numpy("OUTPUT0").tolist()))
    return [(i, *outcome) for i, outcome in answers]


def reported_batches(s: Servers, model: str, calls: list[tuple[float, np.ndarray]]) -> list[Any]:
    """The batches ``batch_report`` models say they were given, each once, for calls sent apart."""
    answers = sent_apart(s, model, [(wait, array, {}) for wait, array in calls],
                         lambda result: result.as_numpy("OUT")[0][0])
    return sorted({answer for _, answer in answers})


def case_bls_timeout(s: Servers) -> Any:
    # A BLS request's timeout is the request's own (applied by the called model's queue policy while it
    # waits there), not a deadline on the call.
    result = s.http.infer("bls_timeout", http_inputs(("INPUT0", np.array([0], np.int32), "INT32")))
    return json.loads(result.as_numpy("OUT")[0])


def case_preserve_ordering(s: Servers) -> Any:
    """Two instances: a 0.6 s execution, then a 0.1 s one; the second comes back first unless the batcher
    preserves ordering."""
    def order(model: str) -> list[Any]:
        answers = sent_apart(s, model, [(0, np.array([[6]], np.int32), {}), (0.1, np.array([[1]], np.int32), {})],
                             lambda result: int(result.as_numpy("OUTPUT0")[0][0]))
        return [answer for _, answer in answers]
    return order("ordered"), order("unordered")


def case_batches_keep_shapes_apart(s: Servers) -> Any:
    """Requests of 2, 2, 3, 3 and 2 elements within the queue delay: batched in arrival order, a request of
    another shape ending the batch (never reordered past it)."""
    return reported_batches(s, "batch_report", [(0.02 if i else 0, np.full((1, n), i, np.float32))
                                                for i, n in enumerate((2, 2, 3, 3, 2))])


def case_batch_sizes(s: Servers) -> Any:
    """Within one queue delay, to an idle instance: single rows with preferred_batch_size 2 run as 2 at once,
    and the third (sent once those ran) alone when the delay ends; requests of 2, 3, 4 and 1 rows under
    max_batch_size 8 run as 2+3 (the 4 would pass 8) and 4+1."""
    def run(model: str, rows: tuple[int, ...], waits: tuple[float, ...]) -> list[Any]:
        return reported_batches(s, model, [(wait, np.full((n, 2), i, np.float32))
                                           for i, (n, wait) in enumerate(zip(rows, waits))])
    return (run("preferred_two", (1, 1, 1), (0, 0.02, 0.3)),
            run("up_to_eight", (2, 3, 4, 1), (0, 0.02, 0.02, 0.02)))


def case_batches_formed_while_the_instance_is_busy(s: Servers) -> Any:
    """A batch formed while the instance executes another grows until an instance takes it (2 s executions,
    no preferred size, 500 ms delay): the first runs from 0.5 s to 2.5 s; requests sent 1.0, 1.3 and 1.6 s
    after it join the batch that waits for the instance; one sent at 3.0 s, after that batch started, runs
    next, alone.  Margins are 500 ms (a loaded CI machine stretched the 100 ms ones this case had).

    Not compared: a request whose own delay has not expired when the instance frees up.  Sent at 2.4 s, it
    ran alone on Triton when this case ran alone (as on tritium), but joined the batch when it ran after
    the other cases.

    Not compared: the same with ``preferred_batch_size: [2]`` (``tests/unit/test_dynamic_batcher.py``).  Five
    rows sent 20 ms apart while the instance is busy ran on Triton as 3 then 2 when this case ran alone (the
    batch formed at 2 takes one more), as they do on tritium, but as one batch of 5 when it ran after the
    other cases: whether Triton's batcher thread wakes for each arrival depends on its state."""
    model = "delayed_slow"
    assert s.grpc.is_model_ready(model)  # connected first: a first call that arrives late executes later
    return reported_batches(s, model, [(wait, np.full((1, 2), i, np.float32))
                                       for i, wait in enumerate((0, 1.0, 0.3, 0.3, 1.4))])


def case_queue_full(s: Servers) -> Any:
    # the first executes, the second waits, the queue (one) is full for the others: refused at once
    return queued_calls(s, "queue_of_one", [{}, {"after": 0.2}, {"request_id": "third"}, {}])


def case_queue_timeout_override(s: Servers) -> Any:
    # The second lowers the 10 s timeout to 100 ms, which expires while the first executes; the third
    # cannot raise it to 20 s, and waits within the 10 s.  Sorted: tritium answers an expired request
    # when its timeout expires, Triton only once an instance frees up and its batcher looks again.
    lowered = sorted(queued_calls(s, "expiring", [{}, {"after": 0.2, "timeout": 100000}, {"timeout": 20000000}]))
    # Without a default timeout, the request's own is not applied.
    return lowered, queued_calls(s, "unexpiring", [{}, {"after": 0.2, "timeout": 100000}])


def case_priorities(s: Servers) -> Any:
    # level 1 goes before the default level 2, and its queue holds one request
    return queued_calls(s, "prioritized", [{}, {"after": 0.2}, {"priority": 1}, {"priority": 1, "request_id": "x"}])


# -- cases of issue 30: where NVIDIA's examples and QA tests did not run unchanged --------------------------

def case_cuda_shared_memory_without_cuda(s: Servers) -> Any:
    """Status and unregister of CUDA shared memory with nothing registered, and a register that cannot open the
    handle, over both protocols (NVIDIA's gRPC examples unregister CUDA regions while cleaning up)."""
    handle = base64.b64encode(bytes(64))  # what cuda_shared_memory.get_raw_handle gives: a cudaIpcMemHandle_t, base64
    steps = []
    for c, kw in ((s.http, {}), (s.grpc, {"as_json": True})):
        steps += [outcome(lambda: c.get_cuda_shared_memory_status(**kw)),
                  outcome(lambda: c.get_cuda_shared_memory_status("nosuch", **kw)),
                  outcome(lambda: c.register_cuda_shared_memory("r", handle, 0, 16)),
                  outcome(lambda: c.register_cuda_shared_memory("r", handle, 3, 16)),
                  outcome(lambda: c.register_cuda_shared_memory("r", base64.b64encode(bytes(8)), 0, 16)),
                  outcome(lambda: c.unregister_cuda_shared_memory("nosuch")),
                  outcome(lambda: c.unregister_cuda_shared_memory()),
                  outcome(lambda: c.get_cuda_shared_memory_status(**kw))]
    for body in ({}, {"raw_handle": {"b64": "AAAA"}}, {"raw_handle": {"b64": "AAAA"}, "device_id": 0, "byte_size": 16},
                 {"raw_handle": "AAAA", "device_id": 0, "byte_size": 16}, {"raw_handle": {}, "device_id": 0, "byte_size": 16},
                 {"raw_handle": {"b64": handle.decode()}, "device_id": 0, "byte_size": 16},
                 {"raw_handle": {"b64": handle.decode()}, "device_id": -1, "byte_size": 16},
                 {"raw_handle": {"b64": "@@@"}, "device_id": 0, "byte_size": 16}):
        status, answer = s.raw("POST", "/v2/cudasharedmemory/region/r/register", json.dumps(body).encode())
        steps.append(json_fault((status, answer)) if answer["error"].startswith("attempt to access") else (status, answer))
    return steps


def case_bls_with_a_bytes_model_name(s: Servers) -> Any:
    seen = []
    for name in (b"add_sub", b"nope"):
        result = s.grpc.infer("bls_bytes_names", grpc_inputs(("NAME", np.array([name], np.object_), "BYTES")))
        seen.append(json.loads(result.as_numpy("OUT")[0]))
    return seen


def case_cancelled_unary_grpc_infer(s: Servers) -> Any:
    """A unary ModelInfer whose deadline passes, then one the client cancels: the model's
    ``request.is_cancelled()`` turns true (it answers what its last wait saw)."""
    wait, last = (grpc_inputs(("INPUT0", np.array([v], np.int32), "INT32")) for v in (0, 1))
    seen: list[Any] = [outcome(lambda: s.grpc.infer("cancel_watch", wait, client_timeout=1.0)),
                       s.grpc.infer("cancel_watch", last).as_numpy("OUT").tolist()]
    results: queue.Queue[Any] = queue.Queue()
    call = s.grpc.async_infer("cancel_watch", wait, callback=lambda result, error: results.put(error))
    time.sleep(1.0)
    call.cancel()
    error = results.get(timeout=30)
    seen += [None if error is None else (error.status(), error.message()),
             s.grpc.infer("cancel_watch", last).as_numpy("OUT").tolist()]
    return seen


def stream_outcomes(s: Servers, calls: list[tuple[str, list[Any]]], headers: dict[str, str] | None) -> list[Any]:
    """What one stream carries for each call, sent once the previous one's answers stopped (final response,
    error, or a second of silence); ``"closed"`` for a call whose send fails because the stream has ended."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(s.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=headers)
    seen: list[Any] = []
    try:
        for model, inputs in calls:
            try:
                client.async_stream_infer(model, inputs, enable_empty_final_response=True)
            except InferenceServerException as e:
                seen.append(("closed", e.message()))
                continue
            got: list[Any] = []
            while True:
                try:
                    result, error = results.get(timeout=1.0)
                except queue.Empty:
                    break
                if error is not None:
                    got.append(("error", error.status(), error.message().split("\n\nAt:")[0]))
                    continue
                response = result.get_response()
                final = response.parameters["triton_final_response"].bool_param
                got.append(([o.name for o in response.outputs], final))
                if final:
                    break
            seen.append(got)
        return seen
    finally:
        client.stop_stream()


def case_stream_with_triton_grpc_error_header(s: Servers) -> Any:
    """``triton_grpc_error: true``: an error response ends the stream with its gRPC status, and the stream takes no
    more requests; a request refused before it runs is still answered in-band.  (A decoupled model that sends
    more after an error response crashes Triton 2.51 in this mode: tested on tritium alone.)"""
    x = grpc_inputs(("INPUT0", np.array([5], np.int32), "INT32"))
    good = ("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")))
    streams = [[good, ("add_sub", grpc_inputs(("INPUT0", A, "FP32"))), good],
               [good, ("nope", x), good],
               [good, ("fails", grpc_inputs(("INPUT0", np.array([0], np.int32), "INT32"))), good],
               [("fails", grpc_inputs(("INPUT0", np.array([1], np.int32), "INT32"))), good],
               [("repeat", grpc_inputs(("INPUT0", np.array([2], np.int32), "INT32"))), good]]
    return [stream_outcomes(s, calls, {"triton_grpc_error": "true"}) for calls in streams] + \
        [stream_outcomes(s, streams[2], {"triton_grpc_error": "false"})]


def case_dlpack_bf16(s: Servers) -> Any:
    """A BF16 input out through ``to_dlpack`` and back through ``from_dlpack`` (of the capsule, of the tensor)."""
    import ml_dtypes
    x = np.array([1.5, -2, 3.25, 1e20], dtype=ml_dtypes.bfloat16)
    t = grpcclient.InferInput("INPUT0", [4], "BF16")
    t.set_data_from_numpy(x)
    result = s.grpc.infer("dlpack_bf16", [t])
    raw = result.get_response().raw_output_contents
    return json.loads(result.as_numpy("INFO")[0]), [bytes(r).hex() for r in raw[:2]], x.tobytes().hex()


def case_iterative_sequence(s: Servers) -> Any:
    """Request rescheduling (``iterative_sequence``): executions counted by the model, the flags of each, the
    responses of a decoupled model, several requests at once, and rescheduling where it is not allowed."""
    def once(model: str, n: int) -> Any:
        x = np.array([[n]] if model.startswith("iterative") else [n], np.int32)
        return outcome(lambda: s.grpc.infer(model, grpc_inputs(("INPUT0", x, "INT32")),
                                            client_timeout=20).as_numpy("OUT").tolist())

    # (not here: answering for a rescheduled request, or raising after rescheduling it: Triton 2.51 answers the
    # error but keeps rescheduling the request, which then fails every batch it joins; tested on tritium alone)
    seen: list[Any] = [once("iterative", n) for n in (1, 3, 2)]
    seen.append(sorted(map(repr, sent_apart(s, "iterative", [(0, np.array([[n]], np.int32), {}) for n in (4, 2, 3, 1)],
                                            lambda result: result.as_numpy("OUT").tolist()))))
    seen.append(stream_outcomes(s, [("iterative_decoupled", grpc_inputs(("INPUT0", np.array([[3]], np.int32), "INT32")))],
                                None))
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(s.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for n in (3, 1, 2):
            client.async_stream_infer("iterative_decoupled", grpc_inputs(("INPUT0", np.array([[n]], np.int32), "INT32")),
                                      request_id=str(n))
        answers: dict[str, list[Any]] = {}
        for _ in range(6):
            result, error = results.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            answers.setdefault(response.id, []).append(
                (result.as_numpy("OUT").tolist(), response.parameters["triton_final_response"].bool_param))
        seen.append(sorted(answers.items()))
    finally:
        client.stop_stream()
    # (not here: rescheduling in a model without iterative sequence batching, where Triton 2.51 logs its refusal
    # and never answers the client; tritium answers that error: tested on tritium alone)
    return seen


def case_invalid_model_versions(s: Servers) -> Any:
    """Version strings that are not a version number, in URLs and in gRPC requests."""
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": A.tolist()},
                                  {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": B.tolist()}]}).encode()
    seen: list[Any] = []
    for version in ("abc", "-1", "1a", "01", " 1", "99999999999999999999"):
        quoted = urllib.request.quote(version)
        seen += [s.raw("GET", f"/v2/models/add_sub/versions/{quoted}"),
                 s.raw("GET", f"/v2/models/add_sub/versions/{quoted}/ready"),
                 s.raw("GET", f"/v2/models/add_sub/versions/{quoted}/config"),
                 s.raw("GET", f"/v2/models/add_sub/versions/{quoted}/stats")[0],
                 s.raw("POST", f"/v2/models/add_sub/versions/{quoted}/infer", body),
                 outcome(lambda: s.grpc.get_model_metadata("add_sub", version, as_json=True)),
                 outcome(lambda: s.grpc.is_model_ready("add_sub", version)),
                 outcome(lambda: s.grpc.get_model_config("add_sub", version, as_json=True)),
                 outcome(lambda: s.grpc.infer("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")),
                                              model_version=version).as_numpy("OUTPUT0").tolist())]
    return seen


def case_system_shared_memory_register_checks(s: Servers) -> Any:
    """Which fault a register names first when several are wrong (the key is checked before the size)."""
    key = f"/tritium_diff_{os.getpid()}_checks"
    handle = shm.create_shared_memory_region("checks", key, 64)
    try:
        seen: list[Any] = []
        for c in (s.http, s.grpc):
            for args in (("/tritium_no_such_key", 0, 0), ("/tritium_no_such_key", 16, 3), (key, 0, 0), (key, 16, 3),
                         (key, 128, 0), ("", 16, 0), ("/a/b", 16, 0)):
                seen.append(unregistered(lambda: c.register_system_shared_memory("x", args[0], args[1], offset=args[2])))
                unregistered(lambda: c.unregister_system_shared_memory("x"))
        for doc in ({"key": "/tritium_no_such_key", "byte_size": 0}, {"key": 5, "byte_size": 16}, {"byte_size": 16},
                    {"key": key}, {"key": key, "byte_size": -1}, {"key": key, "byte_size": "16"},
                    {"key": key, "byte_size": 16, "offset": -1}, {"key": key, "byte_size": 16, "offset": 2.5}):
            status, answer = s.raw("POST", "/v2/systemsharedmemory/region/y/register", json.dumps(doc).encode())
            seen.append(json_fault((status, answer)) if answer["error"].startswith("attempt to access") else (status, answer))
            s.raw("POST", "/v2/systemsharedmemory/region/y/unregister")
        return seen
    finally:
        unregistered(s.http.unregister_system_shared_memory)
        shm.destroy_shared_memory_region(handle)


def case_generate_validation(s: Servers) -> Any:
    """The generate endpoint's checks: duplicate keys, how many inputs, values that are not strings for a string
    input, ``parameters`` that is not an object."""
    bodies = [
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT0": [1, 1, 1, 1], "INPUT1": [1, 1, 1, 1]}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": {"a": 1, "a": 2}}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "X": 1, "Y": [1, 2]}'),
        ("add_sub", b'{"INPUT1": [1, 1, 1, 1]}'),
        ("add_sub", b'{}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": 5}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": [1]}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": "x"}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": null}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": [1, 1, 1, 1], "parameters": {"n": {"x": 1}}}'),
        ("add_sub", b'{"INPUT0": ["a", 2, 3, 4], "INPUT1": [1, 1, 1, 1]}'),
        ("add_sub", b'{"INPUT0": [1, 2, 3, 4], "INPUT1": {"a": 1}}'),
        ("strings", b'{"IN": 5}'),
        ("strings", b'{"IN": [1, 2]}'),
        ("strings", b'{"IN": true}'),
        ("strings", b'{"IN": null}'),
        ("strings", b'{"IN": {"a": "b"}}'),
        ("strings", b'{"IN": ["a", 5]}'),
        ("strings", b'{"IN": "a", "IN": "b"}'),
    ]
    seen = []
    for model, body in bodies:
        for endpoint in ("generate", "generate_stream"):
            status, content_type, text = post_text(s, f"/v2/models/{model}/{endpoint}", body)
            answer: Any = (status, text.split("\n\nAt:")[0])
            if content_type == "application/json" and status in (400, 500):
                error = json.loads(text)["error"]
                if error.startswith(JSON_FAULT_HEADS):  # the deliberate difference of json_fault
                    answer = json_fault((status, {"error": error}))
            seen.append((endpoint, body.decode(), content_type, answer))
    return seen


#: Heads of the errors that Triton answers 500 for, in its JSON library's words, when a value is not of the type
#: the protocol asks (tritium: 400, same head): see json_fault.
JSON_FAULT_HEADS = ("Expected JSON object for keyword", "Unable to parse 'data'", "Unable to parse JSON bytes array")


CASES = [value for name, value in sorted(globals().items()) if name.startswith("case_")]


#: A source file of a model in Triton's error texts ("At:\n  /tmp/.../repo/fails/1/model.py(10): execute").
_MODEL_FILE = re.compile(r"/[^\s\"']*/repo/[^/\s\"']+/")


def frames_relative(value: Any) -> Any:
    """Deliberate difference: tritium names a model's source files relative to its folder ("1/model.py")
    in the tracebacks of model errors; Triton shows the server's absolute path, which tritium sends no client.
    This turns Triton's answer into that form (strings in nested data)."""
    if isinstance(value, str):
        return _MODEL_FILE.sub("", value)
    if isinstance(value, (list, tuple)):
        return type(value)(frames_relative(v) for v in value)
    if isinstance(value, dict):
        return {k: frames_relative(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[len("case_"):] for c in CASES])
def test_same_answer_as_triton(pair: tuple[Servers, Servers], case: Callable[[Servers], Any]) -> None:
    tritium, triton = pair
    expected = frames_relative(case(triton))
    assert case(tritium) == expected


def test_a_config_triton_refuses_is_listed_with_its_reason(pair: tuple[Servers, Servers]) -> None:
    """Deliberate difference: Triton lists a model whose config fails validation by name only; tritium
    lists it UNAVAILABLE with the reason, which the log alone says in Triton."""
    tritium, triton = pair
    [theirs] = [m for m in triton.http.get_model_repository_index() if m["name"] == "bad_config"]
    [ours] = [m for m in tritium.http.get_model_repository_index() if m["name"] == "bad_config"]
    assert theirs == {"name": "bad_config"}
    assert ours["state"] == "UNAVAILABLE" and "preferred size" in ours["reason"] and "9" in ours["reason"]
    assert not tritium.http.is_model_ready("bad_config") and not triton.http.is_model_ready("bad_config")


def test_queue_full_rejections_count_as_failures(pair: tuple[Servers, Servers]) -> None:
    """Deliberate difference: tritium counts a request refused by a full queue as a failure (statistics
    ``fail``, ``nv_inference_request_failure{reason="REJECTED"}``), as Triton's metrics documentation says
    of REJECTED; Triton 2.51 counts only queue timeouts there.  Both answer the same."""
    counts = []
    for s in pair:
        outcomes = queued_calls(s, "queue_counted", [{}, {"after": 0.2}, {}, {}])
        stats = settled_statistics(s, "queue_counted")["inference_stats"]
        counts.append((sorted(o[1] for o in outcomes), stats["success"]["count"], stats["fail"]["count"]))
    ours, theirs = counts
    assert ours[0] == theirs[0] == ["error", "error", "ok", "ok"]
    assert ours[1] == theirs[1] == 2
    assert (ours[2], theirs[2]) == (2, 0)


def index_rows(s: Servers) -> list[tuple[Any, ...]]:
    return sorted((m["name"], m.get("version"), m.get("state"), m.get("reason", "").split("\n")[0])
                  for m in s.http.get_model_repository_index())


def model_control_story(s: Servers) -> list[Any]:
    """One sequence of load/unload calls in explicit mode, and what each shows."""
    x = np.array([1], np.int32)
    seen: list[Any] = [index_rows(s)]
    seen.append(outcome(lambda: s.http.load_model("nope")))
    seen.append(outcome(lambda: s.grpc.load_model("init_fails")))
    seen.append(s.raw("POST", "/v2/repository/models/bad_syntax/load"))
    seen.append(outcome(lambda: s.http.load_model("strings")))
    seen.append((s.http.is_model_ready("strings"), s.grpc.is_model_ready("strings")))
    seen.append(outcome(lambda: s.http.unload_model("add_sub")))
    seen.append(outcome(lambda: s.http.infer("add_sub", http_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")))))
    seen.append(outcome(lambda: s.grpc.unload_model("nope")))
    seen.append(outcome(lambda: s.http.get_model_metadata("add_sub")))
    override = json.dumps({"backend": "python", "max_batch_size": 0,
                           "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [-1]}],
                           "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [-1]}]})
    seen.append(outcome(lambda: s.http.load_model("fails", config=override)))
    seen.append(outcome(lambda: s.http.infer("fails", http_inputs(("INPUT0", np.array([4, 5], np.int32), "INT32")))
                        .as_numpy("OUTPUT0").tolist()))
    # Deliberate difference: Triton refuses a bad config override with INTERNAL "failed to load 'fails', failed
    # to poll from model repository"; tritium with INVALID_ARG and what is wrong.  Both must refuse it.
    for call in (lambda: s.http.load_model("fails", config="{not json"),
                 lambda: s.grpc.load_model("params", config=json.dumps({"max_batch_size": -3}))):
        result = outcome(call)
        seen.append((result[0], "failed to load" in result[2] or "load failed" in result[2]))
    seen.append(outcome(lambda: s.http.infer("batched", http_inputs(("INPUT0", x.reshape(1, 1), "INT32")))
                        .as_numpy("OUTPUT0").tolist()))
    # 'params' after its refused override: Triton lists it by name only, tritium UNAVAILABLE with the reason
    # (the deliberate difference of test_a_config_triton_refuses_is_listed_with_its_reason)
    seen.append([row for row in index_rows(s) if row[0] != "params"])
    # issue 30 item 6: a file override whose path starts with '/' is relative to the model folder, as in Triton
    seen.append(outcome(lambda: s.grpc.load_model("slashed", config=override,
                                                  files={"file:/1/model.py": IDENTITY.encode()})))
    seen.append(outcome(lambda: s.http.infer("slashed", http_inputs(("INPUT0", np.array([4, 5], np.int32), "INT32")))
                        .as_numpy("OUTPUT0").tolist()))
    seen.append(outcome(lambda: s.grpc.unload_model("slashed")))
    return seen


def test_model_control_as_triton(explicit_pair: tuple[Servers, Servers]) -> None:
    tritium, triton = explicit_pair
    theirs = frames_relative(model_control_story(triton))
    ours = model_control_story(tritium)
    for step, (mine, expected) in enumerate(zip(ours, theirs)):
        assert mine == expected, f"step {step}"


# -- restricted APIs (--http-restricted-api, --grpc-restricted-protocol) ---------------------------------

RESTRICTED_GROUPS = ("health", "metadata", "inference", "shared-memory", "model-config", "model-repository",
                     "statistics", "trace", "logging")
#: Each group its own header (a check against another group's would show), one flag with a list of groups
#: (shared-memory and model-config share a key), values with '=' and ':', health's name in mixed case.
RESTRICTED_KEYS = {group: (f"{group}-key", f"{group}=s3cret:x") for group in RESTRICTED_GROUPS}
RESTRICTED_KEYS["health"] = ("Probe-Key", "p-value")
RESTRICTED_KEYS["model-config"] = RESTRICTED_KEYS["shared-memory"]
RESTRICTED_FLAGS = (
    *(f"--http-restricted-api={g}:{k}={v}" for g, (k, v) in RESTRICTED_KEYS.items()
      if g not in ("shared-memory", "model-config")),
    *(f"--grpc-restricted-protocol={g}:{k.lower()}={v}" for g, (k, v) in RESTRICTED_KEYS.items()
      if g not in ("shared-memory", "model-config")),
    "--http-restricted-api=shared-memory,model-config:{}={}".format(*RESTRICTED_KEYS["shared-memory"]),
    "--grpc-restricted-protocol=shared-memory,model-config:{}={}".format(*RESTRICTED_KEYS["shared-memory"]),
    "--model-control-mode=explicit", "--load-model=add_sub",
)


def build_restricted_repo(repo: str) -> None:
    write_python_model(repo, "add_sub", ADD_SUB, ADD_SUB_CONFIG)


@pytest.fixture(scope="module")
def restricted_pair():  # type: ignore[no-untyped-def]
    yield from start_pair(RESTRICTED_FLAGS, build_restricted_repo,
                          dict([RESTRICTED_KEYS["health"], RESTRICTED_KEYS["model-repository"]]))


def other_key(group: str) -> tuple[str, str]:
    """The right header of another group (with its own key)."""
    return RESTRICTED_KEYS["trace" if group in ("health", "shared-memory", "model-config") else "health"]


def raw_response(s: Servers, method: str, path: str, body: bytes | None, headers: list[tuple[str, str]]) -> Any:
    """Status, content type and body of a plain HTTP call; headers in order, repeats allowed."""
    import http.client

    connection = http.client.HTTPConnection(s.url, timeout=60)
    try:
        connection.putrequest(method, path)
        for name, value in headers:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body or b"")
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


RESTRICTED_HTTP = [
    ("health", "GET", "/v2/health/live", None), ("health", "GET", "/v2/health/ready", None),
    ("health", "GET", "/v2/models/add_sub/ready", None), ("health", "GET", "/v2/models/add_sub/versions/1/ready", None),
    ("metadata", "GET", "/v2", None), ("metadata", "GET", "/v2/models/add_sub", None),
    ("metadata", "GET", "/v2/models/add_sub/versions/1", None),
    ("inference", "POST", "/v2/models/add_sub/infer", json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [4], "datatype": "FP32", "data": A.tolist()},
        {"name": "INPUT1", "shape": [4], "datatype": "FP32", "data": B.tolist()}]}).encode()),
    ("inference", "POST", "/v2/models/add_sub/generate",
     json.dumps({"INPUT0": A.tolist(), "INPUT1": B.tolist()}).encode()),
    ("inference", "POST", "/v2/models/add_sub/generate_stream",
     json.dumps({"INPUT0": A.tolist(), "INPUT1": B.tolist()}).encode()),
    ("shared-memory", "GET", "/v2/systemsharedmemory/status", None),
    ("shared-memory", "POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/nope", "byte_size": 4}'),
    ("shared-memory", "POST", "/v2/systemsharedmemory/unregister", None),
    ("shared-memory", "GET", "/v2/cudasharedmemory/status", None),
    ("shared-memory", "POST", "/v2/cudasharedmemory/region/r/unregister", None),
    ("model-config", "GET", "/v2/models/add_sub/config", None),
    ("model-repository", "POST", "/v2/repository/index", b"{}"),
    ("model-repository", "POST", "/v2/repository/models/nope/unload", b"{}"),
    ("model-repository", "POST", "/v2/repository/models/nope/load", b"{}"),
    ("statistics", "GET", "/v2/models/stats", None), ("statistics", "GET", "/v2/models/add_sub/stats", None),
    ("trace", "GET", "/v2/trace/setting", None), ("trace", "GET", "/v2/models/add_sub/trace/setting", None),
    ("logging", "GET", "/v2/logging", None),
    (None, "GET", "/v2/models/add_sub/versions/1/trace/setting", None), (None, "GET", "/v2/nope", None),
]


def restricted_http_story(s: Servers) -> list[Any]:
    """Every HTTP route: refused answers whole (status, content type, body), allowed ones by status."""
    seen: list[Any] = []
    for group, method, path, body in RESTRICTED_HTTP:
        key, value = RESTRICTED_KEYS[group] if group else ("Probe-Key", "x")
        for headers in ([], [(key, "wrong")], [(key, value.upper())], [(key, value + " ")], [(key, "")],
                        [other_key(group or "health")], [(key, "wrong"), (key, value)]):
            seen.append((path, headers, raw_response(s, method, path, body, headers)))
        for headers in ([(key, value)], [(key.upper(), value)], [(key.lower(), value)], [(key, value), (key, "x")]):
            seen.append((path, headers, raw_response(s, method, path, body, headers)[0]))
        seen.append((path, "DELETE", raw_response(s, "DELETE", path, None, [])))  # the header before the method
        seen.append((path, "DELETE allowed", raw_response(s, "DELETE", path, None, [(key, value)])))
    return seen


def test_restricted_http_as_triton(restricted_pair: tuple[Servers, Servers]) -> None:
    tritium, triton = restricted_pair
    theirs, ours = restricted_http_story(triton), restricted_http_story(tritium)
    for mine, expected in zip(ours, theirs):
        assert mine == expected
    assert len(ours) == len(theirs)


#: RPC -> request; those marked False answer differently once allowed (CUDA shared memory: tritium has
#: none and answers UNIMPLEMENTED), so only their refusals are compared.
RESTRICTED_RPCS: dict[str, tuple[Any, bool]] = {
    "ServerLive": (pb.ServerLiveRequest(), True), "ServerReady": (pb.ServerReadyRequest(), True),
    "ModelReady": (pb.ModelReadyRequest(name="add_sub"), True),
    "ServerMetadata": (pb.ServerMetadataRequest(), True),
    "ModelMetadata": (pb.ModelMetadataRequest(name="add_sub"), True),
    "ModelInfer": (pb.ModelInferRequest(model_name="nope"), True),
    "ModelConfig": (pb.ModelConfigRequest(name="add_sub"), True),
    "ModelStatistics": (pb.ModelStatisticsRequest(name="add_sub"), True),
    "RepositoryIndex": (pb.RepositoryIndexRequest(), True),
    "RepositoryModelLoad": (pb.RepositoryModelLoadRequest(model_name="nope"), True),
    "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest(model_name="nope"), True),
    "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest(), True),
    "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest(name="x", key="/nope", byte_size=4), False),
    "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest(name="x"), True),
    "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest(), True),
    "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest(name="x"), False),
    "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest(name="x"), False),
    "TraceSetting": (pb.TraceSettingRequest(), True), "LogSettings": (pb.LogSettingsRequest(), True),
}
RPC_GROUPS = {"ServerLive": "health", "ServerReady": "health", "ModelReady": "health", "ServerMetadata": "metadata",
              "ModelMetadata": "metadata", "ModelInfer": "inference", "ModelConfig": "model-config",
              "ModelStatistics": "statistics", "TraceSetting": "trace", "LogSettings": "logging"}


def rpc_group(name: str) -> str:
    if "SharedMemory" in name:
        return "shared-memory"
    if name.startswith("Repository"):
        return "model-repository"
    return RPC_GROUPS[name]


def grpc_metadata(group: str, value: str | None = None) -> tuple[str, str]:
    key, right = RESTRICTED_KEYS[group]
    return f"triton-grpc-protocol-{key.lower()}", right if value is None else value


def restricted_grpc_story(s: Servers) -> list[Any]:
    """Every RPC, the stream and grpc.health.v1: code and message of refusals, the code once allowed."""
    from tritium._proto import health_pb2, health_pb2_grpc

    def code(call: Callable[[], Any]) -> Any:
        try:
            call()
            return "OK"
        except grpc.RpcError as e:
            return e.code().name, e.details()

    seen: list[Any] = []
    with grpc.insecure_channel(s.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for name, (request, compare_allowed) in RESTRICTED_RPCS.items():
            group = rpc_group(name)
            key, value = grpc_metadata(group)
            method = getattr(stub, name)
            for metadata in ([], [(key, "wrong")], [(key, value.upper())], [(key, value + " ")],
                             [grpc_metadata("trace" if group != "trace" else "health")],
                             [(key.removeprefix("triton-grpc-protocol-"), value)], [(key, "x"), (key, value)]):
                seen.append((name, metadata, code(lambda: method(request, metadata=metadata, timeout=60))))
            if compare_allowed:
                for metadata in ([(key, value)], [(key, value), (key, "x")]):
                    result = code(lambda: method(request, metadata=metadata, timeout=60))
                    seen.append((name, metadata, result if result == "OK" else result[0]))
        check = health_pb2_grpc.HealthStub(channel).Check
        key, value = grpc_metadata("health")
        for metadata in ([], [(key, "wrong")], [grpc_metadata("metadata")], [(key, value)]):
            request = health_pb2.HealthCheckRequest()
            seen.append(("Check", metadata, code(lambda: check(request, metadata=metadata, timeout=60))))
        key, value = grpc_metadata("inference")
        for metadata in ([], [(key, "wrong")], [(key, value)]):
            def stream() -> Any:
                return [r.error_message for r in stub.ModelStreamInfer(
                    iter([pb.ModelInferRequest(model_name="nope")]), metadata=metadata, timeout=60)]
            seen.append(("ModelStreamInfer", metadata, code(stream)))
            seen.append(("ModelStreamInfer empty", metadata, code(lambda: list(stub.ModelStreamInfer(
                iter([]), metadata=metadata, timeout=60)))))
    return seen


def test_restricted_grpc_as_triton(restricted_pair: tuple[Servers, Servers]) -> None:
    tritium, triton = restricted_pair
    theirs, ours = restricted_grpc_story(triton), restricted_grpc_story(tritium)
    for mine, expected in zip(ours, theirs):
        assert mine == expected
    assert len(ours) == len(theirs)


def restricted_client_story(s: Servers) -> list[Any]:
    """What tritonclient users see, per group, on both protocols: refusals whole, successes as 'ok'."""
    def run(call: Callable[[], Any]) -> Any:
        result = outcome(call)
        return ("ok", result[1] is not False) if result[0] == "ok" else result

    seen: list[Any] = []
    for group in RESTRICTED_GROUPS:
        key, value = RESTRICTED_KEYS[group]
        for client, name in ((s.http, key), (s.grpc, f"triton-grpc-protocol-{key.lower()}")):
            calls = {
                "health": lambda h: client.is_model_ready("add_sub", headers=h),
                "metadata": lambda h: client.get_server_metadata(headers=h),
                "inference": lambda h: client.infer("add_sub", (http_inputs if client is s.http else grpc_inputs)(
                    ("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")), headers=h).as_numpy("OUTPUT0").tolist(),
                "shared-memory": lambda h: client.get_system_shared_memory_status(headers=h),
                "model-config": lambda h: client.get_model_config("add_sub", headers=h),
                "model-repository": lambda h: client.get_model_repository_index(headers=h),
                "statistics": lambda h: client.get_inference_statistics("add_sub", headers=h),
                "trace": lambda h: client.get_trace_settings(headers=h),
                "logging": lambda h: client.get_log_settings(headers=h),
            }
            for headers in (None, {name: "wrong"}, {name: value}):
                seen.append((group, type(client).__module__, headers, run(lambda: calls[group](headers))))
    results: queue.Queue[Any] = queue.Queue()
    for headers in (None, {"triton-grpc-protocol-inference-key": "wrong"},
                    {"triton-grpc-protocol-inference-key": RESTRICTED_KEYS["inference"][1]}):
        client = grpcclient.InferenceServerClient(s.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)), headers=headers)
        try:
            client.async_stream_infer("add_sub", grpc_inputs(("INPUT0", A, "FP32"), ("INPUT1", B, "FP32")))
        except InferenceServerException:
            pass  # the stream is already over: its error comes through the callback
        result, error = results.get(timeout=60)
        client.stop_stream()
        seen.append(("stream", headers, (str(error.status()), error.message()) if error else
                     result.as_numpy("OUTPUT0").tolist()))
    with urllib.request.urlopen(s.metrics_url, timeout=60) as r:
        seen.append(("metrics", r.status))
    return seen


def test_restricted_clients_as_triton(restricted_pair: tuple[Servers, Servers]) -> None:
    tritium, triton = restricted_pair
    assert restricted_client_story(tritium) == restricted_client_story(triton)


RESTRICTION_REFUSALS = [
    (["--http-restricted-api=bogus:k=v"], "unknown restricted api 'bogus'"),
    (["--http-restricted-api=Health:k=v"], "unknown restricted api 'Health'"),
    (["--grpc-restricted-protocol=health,:k=v"], "unknown restricted protocol ''"),
    (["--http-restricted-api=health"], None), (["--http-restricted-api=health:k"], None),
    (["--grpc-restricted-protocol=health:k="], None), (["--grpc-restricted-protocol=:k=v"], None),
    (["--http-restricted-api=health,health:k=v"], "restricted api 'health' can not be specified in multiple"),
    (["--grpc-restricted-protocol=health:k=v", "--grpc-restricted-protocol=trace,health:k2=v"],
     "restricted protocol 'health' can not be specified in multiple config groups"),
]


@pytest.mark.parametrize("flags, words", RESTRICTION_REFUSALS, ids=[" ".join(f) for f, _ in RESTRICTION_REFUSALS])
def test_restriction_flags_refused_as_triton(tmp_path: Any, flags: list[str], words: str | None) -> None:
    """Both refuse the same flag values at start, naming the flag, and where Triton's words are clear, with
    them (where they are not, tritium says what it expects)."""
    import subprocess
    import sys

    env = dict(os.environ, PYTRITON_PYTHON=TRITON_PYTHON)
    theirs = subprocess.run(["bash", SCRIPT, f"--model-repository={tmp_path}", *flags],
                            capture_output=True, text=True, timeout=120, env=env)
    ours = subprocess.run([sys.executable, "-m", "tritium", f"--model-repository={tmp_path}", *flags],
                          capture_output=True, text=True, timeout=120)
    flag_name = flags[-1].split("=")[0]
    assert theirs.returncode != 0 and ours.returncode != 0
    assert flag_name in theirs.stdout + theirs.stderr and flag_name in ours.stderr
    if words is not None:
        assert words in theirs.stdout + theirs.stderr and words in ours.stderr


# -- the response cache (issue 26): Triton 2.51's build has the local cache (caches/local), not Redis ----------

#: OUTPUT0 = INPUT0 + 1, OUTPUT1 = 2 * INPUT0.
CACHE_ECHO = '''
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = r.inputs()[0].as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x + 1), pb_utils.Tensor("OUTPUT1", x * 2)]))
        return out
'''
CACHE_CONFIG = """
    backend: "python"
    max_batch_size: {mbs}
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ -1 ] }, { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ -1 ] } ]
    {extra}
"""
CACHE_ENABLED = "response_cache { enable: true }"
CACHED_ENSEMBLE_CONFIG = """
    platform: "ensemble"
    max_batch_size: 0
    input [ { name: "X" data_type: TYPE_INT32 dims: [ -1 ] } ]
    output [ { name: "Y" data_type: TYPE_INT32 dims: [ -1 ] } ]
    response_cache { enable: true }
    ensemble_scheduling { step [ { model_name: "plain" model_version: -1 input_map { key: "INPUT0" value: "X" }
                                   output_map { key: "OUTPUT0" value: "Y" } } ] }
"""
CACHE_FLAGS = ("--cache-config=local,size=1048576", "--metrics-interval-ms=200")


def build_cache_repo(repo: str) -> None:
    def config(mbs: int, extra: str) -> str:
        return CACHE_CONFIG.replace("{mbs}", str(mbs)).replace("{extra}", extra)

    write_python_model(repo, "cached", CACHE_ECHO, config(0, CACHE_ENABLED))
    write_python_model(repo, "cached_batched", CACHE_ECHO, config(4, CACHE_ENABLED + " dynamic_batching { }"))
    write_python_model(repo, "plain", CACHE_ECHO, config(0, ""))
    write_python_model(repo, "cached_decoupled", CACHE_ECHO,
                       config(0, CACHE_ENABLED + " model_transaction_policy { decoupled: true }"))
    write_python_model(repo, "cached_sequence", CACHE_ECHO, config(0, CACHE_ENABLED + " sequence_batching { }"))
    os.makedirs(os.path.join(repo, "cached_ensemble", "1"))
    with open(os.path.join(repo, "cached_ensemble", "config.pbtxt"), "w") as f:
        f.write(CACHED_ENSEMBLE_CONFIG)


@pytest.fixture(scope="module")
def cache_pair():  # type: ignore[no-untyped-def]
    yield from start_pair(CACHE_FLAGS, build_cache_repo)


def cache_story(s: Servers) -> list[Any]:
    """Repeated requests on every protocol, then what each model's statistics and metrics say.  Where Triton
    2.51 answers wrongly from its cache (other requested outputs or parameters, error responses: see
    tests/e2e/test_response_cache.py) the story does not go."""
    def ints(*values: int) -> np.ndarray:
        return np.array(values, np.int32)

    seen: list[Any] = []
    for _ in range(3):
        seen.append(as_lists(s.http.infer("cached", http_inputs(("INPUT0", ints(1, 2), "INT32"))), ["OUTPUT0", "OUTPUT1"]))
    seen.append(as_lists(s.http.infer("cached", http_inputs(("INPUT0", ints(1, 2), "INT32"), binary=False)),
                         ["OUTPUT0", "OUTPUT1"]))
    for values in ((1, 2), (3,), (3,)):
        seen.append(as_lists(s.grpc.infer("cached", grpc_inputs(("INPUT0", ints(*values), "INT32"))),
                             ["OUTPUT0", "OUTPUT1"]))
    for _ in range(2):
        seen.append(as_lists(s.http.infer("cached_batched", http_inputs(("INPUT0", ints(5, 6).reshape(1, 2), "INT32"))),
                             ["OUTPUT0"]))
        seen.append(as_lists(s.http.infer("cached_batched", http_inputs(("INPUT0", ints(5, 6, 7, 8).reshape(2, 2),
                                                                        "INT32"))), ["OUTPUT1"]))
    for _ in range(3):
        seen.append(as_lists(s.http.infer("cached_ensemble", http_inputs(("X", ints(9), "INT32"))), ["Y"]))
    seen.append(as_lists(s.http.infer("plain", http_inputs(("INPUT0", ints(1, 2), "INT32"))), ["OUTPUT0"]))
    for model in ("cached", "cached_batched", "cached_ensemble", "plain"):
        stats = settled_statistics(s, model)
        counts = {k: v["count"] for k, v in stats["inference_stats"].items()}
        batches = sorted((b["batch_size"], b["compute_infer"]["count"]) for b in stats["batch_stats"])
        if model == "cached_ensemble":  # an ensemble's own queue, compute and batch figures are not the cache's
            counts = {k: counts[k] for k in ("success", "fail", "cache_hit", "cache_miss")}
            batches = []
        seen.append((model, stats["inference_count"], stats["execution_count"], counts, batches))
    time.sleep(1.0)  # Triton refreshes the cache-wide gauges every --metrics-interval-ms
    with urllib.request.urlopen(s.metrics_url, timeout=10) as r:
        text = r.read().decode()
    for family in ("nv_cache_num_hits_per_model", "nv_cache_num_misses_per_model", "nv_inference_count",
                   "nv_inference_exec_count", "nv_inference_request_success"):
        seen.append(sorted(line for line in text.splitlines() if line.startswith(family + "{")))
    seen.append(sorted(line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE nv_cache")))
    for gauge in ("nv_cache_num_entries", "nv_cache_num_hits", "nv_cache_num_misses", "nv_cache_num_lookups",
                  "nv_cache_num_evictions"):
        seen.append([line for line in text.splitlines() if line.startswith(gauge + " ")])
    seen.append([(m, s.http.is_model_ready(m)) for m in ("cached_decoupled", "cached_sequence", "cached")])
    return seen


def _float_counts(lines: list[Any]) -> list[Any]:
    """``name{labels} 2.0`` (prometheus_client) and ``name{labels} 2`` (Triton) are the same sample."""
    return [re.sub(r" (\d+)\.0$", r" \1", line) if isinstance(line, str) else line for line in lines]


def test_response_cache_as_triton(cache_pair: tuple[Servers, Servers]) -> None:
    tritium, triton = cache_pair
    theirs, ours = cache_story(triton), cache_story(tritium)
    normalize = [_float_counts(x) if isinstance(x, list) else x for x in ours]
    for mine, expected in zip(normalize, [_float_counts(x) if isinstance(x, list) else x for x in theirs], strict=True):
        assert mine == expected
    index = {m["name"]: m for m in tritium.http.get_model_repository_index()}
    assert "with 'decoupled' transaction policy. Please disable the response cache." in \
        index["cached_decoupled"]["reason"]


CACHE_REFUSALS = [
    (["--cache-config=local,size=abc"], "Failed to initialize LocalCache: stoull"),
    (["--cache-config=local,size=191"],
     "Failed to initialize LocalCache: Could not initialize buffer in basic_managed_external_buffer constructor"),
    (["--cache-config=local,size=-1"], "Failed to initialize LocalCache: failed to allocate buffer"),
    (["--cache-config=local"], "No cache specified. --cache-config option format is <cache name>,<setting>=<value>. "
                               "Got local"),
    (["--cache-config=size=100"], "No cache specified."),
    (["--cache-config=local,size"], "--cache-config option format is '<cache name>,<setting>=<value>'. Got local,size"),
    (["--cache-config=bogus,x=1"], "unable to find 'libtritoncache_bogus.so' for cache."),
    (["--cache-config=local,size=4096", "--cache-config=other,x=1"],
     "found multiple cache configurations, but only a single cache is currently supported"),
]


@pytest.mark.parametrize("flags, words", CACHE_REFUSALS, ids=[" ".join(f) for f, _ in CACHE_REFUSALS])
def test_cache_configs_refused_as_triton(tmp_path: Any, flags: list[str], words: str) -> None:
    """Both refuse to start, in Triton's words (Triton: "error: creating server: Internal - ...")."""
    import subprocess
    import sys

    env = dict(os.environ, PYTRITON_PYTHON=TRITON_PYTHON)
    ports = [f"--http-port={free_port()}", f"--grpc-port={free_port()}", f"--metrics-port={free_port()}"]
    theirs = subprocess.run(["bash", SCRIPT, f"--model-repository={tmp_path}", *ports, *flags],
                            capture_output=True, text=True, timeout=120, env=env)
    ours = subprocess.run([sys.executable, "-m", "tritium", f"--model-repository={tmp_path}", *ports, *flags],
                          capture_output=True, text=True, timeout=120)
    assert theirs.returncode != 0 and ours.returncode != 0
    assert words in theirs.stdout + theirs.stderr and words in ours.stderr




# -- issue 26: rate limiter, header forwarding, duplicate names, the repository index -----------------------

#: The request's parameters as the model reads them (Triton's JSON string, parsed).
PARAMETERS_SEEN = '''
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([r.parameters().encode()], np.object_))])
                for r in requests]
'''
#: Sleeps, then answers [instance, start, end] (wall clock), to measure how executions overlap.
TIMED = timed_model(0.4)
ONE_STRING_OUT = """
    backend: "python"
    max_batch_size: 0
    input [ { name: "INPUT0" data_type: TYPE_INT32 dims: [ 1 ] } ]
    output [ { name: "OUT" data_type: TYPE_STRING dims: [ 1 ] } ]
    {extra}
"""
FORWARD = "^my-|^a$"


def limited_config(resources: str, count: int = 2) -> str:
    return ONE_STRING_OUT.replace("{extra}", f"instance_group [ {{ count: {count} kind: KIND_CPU "
                                             f"rate_limiter {{ resources [ {resources} ] }} }} ]")


def build_issue26_repo(repo: str) -> None:
    """The first repository; the second (``<repo>2``) holds another ``dup``."""
    write_python_model(repo, "params", PARAMETERS_SEEN, ONE_STRING_OUT.replace("{extra}", ""))
    write_python_model(repo, "gone", PARAMETERS_SEEN, ONE_STRING_OUT.replace("{extra}", ""))
    write_python_model(repo, "dup", PARAMETERS_SEEN, ONE_STRING_OUT.replace("{extra}", ""))
    write_python_model(repo + "2", "dup", PARAMETERS_SEEN, ONE_STRING_OUT.replace("{extra}", ""))
    write_python_model(repo, "init_fails", INIT_FAILS, ECHO_INT_CONFIG.replace("{extra}", ""))
    write_python_model(repo, "unparsable", IDENTITY, 'backend: "python"\nmax_batch_size: [[[\n')
    write_python_model(repo, "whole", TIMED, limited_config('{ name: "R1" count: 2 }'))
    write_python_model(repo, "half", TIMED, limited_config('{ name: "R1" count: 1 }'))


@pytest.fixture(scope="module")
def issue26_pair():  # type: ignore[no-untyped-def]
    root = tempfile.mkdtemp(prefix="tritium-issue26-")
    repo = os.path.join(root, "repo")  # start_pair builds its own copy; the second repository is fixed here
    build_issue26_repo(repo)
    holder: list[str] = []

    def build(target: str) -> None:
        shutil.copytree(repo, target)
        holder.append(target)

    try:
        yield from (servers + (holder[0],) for servers in start_pair(
            (f"--model-repository={repo}2", "--model-control-mode=poll", "--repository-poll-secs=1",
             f"--http-header-forward-pattern={FORWARD}", f"--grpc-header-forward-pattern={FORWARD}",
             "--rate-limit=execution_count", "--exit-timeout-secs=5"), build))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def forwarded_parameters(s: Servers) -> list[Any]:
    """What the model reads of headers, by HTTP, gRPC and a gRPC stream (parsed: Triton writes duplicates)."""
    seen = []
    x = np.array([1], np.int32)
    result = s.http.infer("params", http_inputs(("INPUT0", x, "INT32")), parameters={"a": 1},
                          headers={"My-Header": "Hello World", "my-other": "x", "other": "y", "A": "upper",
                                   "priority": "7"})
    seen.append(json.loads(result.as_numpy("OUT")[0]))
    result = s.grpc.infer("params", grpc_inputs(("INPUT0", x, "INT32")), parameters={"a": 1},
                          headers={"my-header": "Hello World", "other": "y", "a": "from-header"})
    seen.append(json.loads(result.as_numpy("OUT")[0]))
    answers: queue.Queue[Any] = queue.Queue()
    s.grpc.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"my-stream": "s"})
    try:
        s.grpc.async_stream_infer("params", grpc_inputs(("INPUT0", x, "INT32")), parameters={"a": 2})
        result, error = answers.get(timeout=60)
        seen.append(str(error) if error else json.loads(result.as_numpy("OUT")[0]))
    finally:
        s.grpc.stop_stream()
    return seen


def test_headers_forwarded_as_triton(issue26_pair: tuple[Servers, Servers, str]) -> None:
    tritium, triton, _ = issue26_pair
    ours, theirs = forwarded_parameters(tritium), forwarded_parameters(triton)
    assert ours == theirs
    assert ours[0] == {"a": 1, "My-Header": "Hello World", "my-other": "x", "A": "upper"}  # case as sent


def index_of(s: Servers) -> list[tuple[Any, ...]]:
    """Rows of the index, reasons by their first line (tracebacks name each server's own frames)."""
    return [(m["name"], m.get("version"), m.get("state"), m.get("reason", "").split("\n")[0])
            for m in s.http.get_model_repository_index()]


def test_duplicates_failures_and_removed_folders_in_the_index_as_triton(
        issue26_pair: tuple[Servers, Servers, str]) -> None:
    """The same rows, but for one deliberate difference: a model whose config does not parse is listed by
    name only by Triton, UNAVAILABLE with the reason here.  A model whose folder goes is no longer listed."""
    tritium, triton, repo = issue26_pair

    def compared() -> tuple[list[Any], list[Any]]:
        ours, theirs = index_of(tritium), index_of(triton)
        [unparsable] = [row for row in ours if row[0] == "unparsable"]
        assert unparsable[2] == "UNAVAILABLE" and "config.pbtxt" in unparsable[3] and "[" in unparsable[3]
        assert ("unparsable", None, None, "") in theirs
        # Triton tries a failed model again at every poll (LOADING meanwhile); tritium when its files change
        failed = ("init_fails", "1", "UNAVAILABLE", "Internal: RuntimeError: no weights today")
        assert failed in ours and (failed in theirs or ("init_fails", "1", "LOADING", "") in theirs)
        return ([r for r in ours if r[0] not in ("unparsable", "init_fails")],
                [r for r in theirs if r[0] not in ("unparsable", "init_fails")])

    ours, theirs = compared()
    assert ours == theirs
    assert ("dup", None, "UNAVAILABLE", "model appears in two or more repositories") in ours
    assert outcome(lambda: tritium.http.infer("dup", http_inputs(("INPUT0", np.array([1], np.int32), "INT32")))) \
        == outcome(lambda: triton.http.infer("dup", http_inputs(("INPUT0", np.array([1], np.int32), "INT32"))))
    shutil.move(os.path.join(repo, "gone"), os.path.join(os.path.dirname(repo), "gone_away"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ours, theirs = compared()
        if all(row[0] != "gone" for row in ours + theirs):
            break
        time.sleep(0.5)
    assert ours == theirs
    assert all(row[0] != "gone" for row in ours)


def overlap(s: Servers, models: list[str]) -> int:
    """How many executions of ``models`` (one request each, sent at once) ran at one moment, at most."""
    import threading

    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def call(model: str) -> None:
        try:
            client = httpclient.InferenceServerClient(s.url, network_timeout=120)
            result = client.infer(model, http_inputs(("INPUT0", np.array([1], np.int32), "INT32")))
            _, start, end = json.loads(result.as_numpy("OUT")[0])
            spans.append((start, end))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=call, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], e[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_rate_limited_executions_overlap_as_triton(issue26_pair: tuple[Servers, Servers, str]) -> None:
    """Two instances needing both copies of R1 run one at a time; two needing one copy each run together."""
    tritium, triton, _ = issue26_pair
    for models, expected in ((["whole"] * 3, 1), (["half"] * 2, 2)):
        assert overlap(tritium, models) == overlap(triton, models) == expected


def build_refused_resources(repo: str) -> None:
    write_python_model(repo, "needs_two", TIMED, limited_config('{ name: "R1" count: 2 }', 1))
    write_python_model(repo, "unlisted", TIMED, limited_config('{ name: "R9" count: 1 }', 1))
    write_python_model(repo, "fits", TIMED, limited_config('{ name: "R1" count: 1 }', 1))


def test_rate_limit_resources_too_few_fail_the_load_as_triton() -> None:
    """Resources given on the command line that could never let an instance run fail its load, in Triton's
    words; a resource not given has none."""
    for tritium, triton in start_pair(("--rate-limit=execution_count", "--rate-limit-resource=R1:1", "--exit-timeout-secs=5"),
                                      build_refused_resources):
        ours, theirs = index_of(tritium), index_of(triton)
        assert ours == theirs
        assert ("needs_two", "1", "UNAVAILABLE", 'Invalid argument: Resource count for "R1" is limited to 1 which '
                "will prevent scheduling of one or more model instances, the minimum required count is 2") in ours


def test_model_namespacing_as_triton() -> None:
    """Two repositories with the same names: each ensemble runs its own repository's step model, names in
    both are refused in Triton's words, the index lists each repository in turn."""
    from test_namespacing import build_namespaced, namespace_story

    root = tempfile.mkdtemp(prefix="tritium-namespaces-")
    second = os.path.join(root, "second")
    try:
        for tritium, triton in start_pair((f"--model-repository={second}", "--model-namespacing=true", "--exit-timeout-secs=5"),
                                          lambda first: build_namespaced(first, second)):
            ours = namespace_story(tritium.url, tritium.grpc_url)
            assert ours == namespace_story(triton.url, triton.grpc_url)
            ordered = [[m["name"] for m in s.http.get_model_repository_index()] for s in (tritium, triton)]
            assert ordered[0] == ordered[1]
    finally:
        shutil.rmtree(root, ignore_errors=True)
