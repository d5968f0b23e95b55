"""Triton's in-process Python API (the ``tritonserver`` package) on tritium's core.

Code written for Triton runs with only its import changed::

    import tritium.tritonserver as tritonserver

    server = tritonserver.Server(model_repository="models").start(wait_until_ready=True)
    for response in server.model("identity").infer(inputs={"INPUT0": numpy.ones((1, 16), numpy.float32)}):
        print(numpy.from_dlpack(response.outputs["OUTPUT0"]))

The server runs on a private event-loop thread (no loop is needed in the program; ``async_infer`` delivers
to the caller's loop); network endpoints open on demand through :mod:`tritium.tritonfrontend`.  The error
classes are tritium's own (:mod:`tritium.core.errors`), under Triton's names.  See ``docs/tritonserver_api.md``.
"""

from tritium.core.errors import AlreadyExistsError as AlreadyExistsError
from tritium.core.errors import InternalError as InternalError
from tritium.core.errors import InvalidArgumentError as InvalidArgumentError
from tritium.core.errors import NotFoundError as NotFoundError
from tritium.core.errors import TritiumError as TritonError
from tritium.core.errors import UnavailableError as UnavailableError
from tritium.core.errors import UnknownError as UnknownError
from tritium.core.errors import UnsupportedError as UnsupportedError

from ._enums import DataType as DataType
from ._enums import DLDeviceType as DLDeviceType
from ._enums import InstanceGroupKind as InstanceGroupKind
from ._enums import LogFormat as LogFormat
from ._enums import LogLevel as LogLevel
from ._enums import MemoryType as MemoryType
from ._enums import MetricFormat as MetricFormat
from ._enums import MetricKind as MetricKind
from ._enums import ModelBatchFlag as ModelBatchFlag
from ._enums import ModelControlMode as ModelControlMode
from ._enums import ModelTxnPropertyFlag as ModelTxnPropertyFlag
from ._enums import RateLimitMode as RateLimitMode
from ._enums import RequestFlag as RequestFlag
from ._model import Model as Model
from ._request import InferenceRequest as InferenceRequest
from ._response import AsyncResponseIterator as AsyncResponseIterator
from ._response import InferenceResponse as InferenceResponse
from ._response import ResponseIterator as ResponseIterator
from ._server import Metric as Metric
from ._server import MetricFamily as MetricFamily
from ._server import ModelLoadDeviceLimit as ModelLoadDeviceLimit
from ._server import Options as Options
from ._server import RateLimiterResource as RateLimiterResource
from ._server import Server as Server
from ._tensor import MemoryBuffer as MemoryBuffer
from ._tensor import Tensor as Tensor

__all__ = [
    "AlreadyExistsError", "AsyncResponseIterator", "DLDeviceType", "DataType", "InferenceRequest",
    "InferenceResponse", "InstanceGroupKind", "InternalError", "InvalidArgumentError", "LogFormat", "LogLevel",
    "MemoryBuffer", "MemoryType", "Metric", "MetricFamily", "MetricFormat", "MetricKind", "Model",
    "ModelBatchFlag", "ModelControlMode", "ModelLoadDeviceLimit", "ModelTxnPropertyFlag", "NotFoundError",
    "Options", "RateLimitMode", "RateLimiterResource", "RequestFlag", "ResponseIterator", "Server", "Tensor",
    "TritonError", "UnavailableError", "UnknownError", "UnsupportedError",
]
