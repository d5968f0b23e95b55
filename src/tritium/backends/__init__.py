"""tritium's backend API: what a backend written outside tritium may use, and all it needs.

A backend is a :class:`Backend` subclass, made with no arguments, registered by its package under the
entry-point group ``tritium.backends`` (name = the ``backend`` a model config names, value =
``module:Class``).  Its lifecycle mirrors Triton's ``TRITONBACKEND_*`` functions::

    Backend.initialize(backend_config)                    once, before its first model loads
      Backend.auto_complete_config(ctx)                   unless strict config: fill the config in place
      Backend.model_initialize(ctx) -> ModelState         once per model version
        ModelState.instance_initialize(spec) -> ModelInstanceState      once per instance
          ModelInstanceState.execute(requests) -> responses             a batch at a time
        ModelInstanceState.finalize()
      ModelState.finalize()
    Backend.finalize()                                    at server shutdown

What a backend declares, with the defaults of the base classes: ``Backend.instance_kinds``
(``{"KIND_CPU"}``), ``Backend.decoupled`` (False), ``Backend.default_instance_count``;
``ModelInstanceState.may_run_inline`` (True), ``executes_async`` / ``execute_async`` (False),
``input_end_ns`` / ``infer_end_ns`` (execution timing stamps, 0).  ``docs/backends.md`` walks through
writing one.  Names not listed in ``__all__`` are tritium's own and may change.
"""

from tritium._proto import model_config_pb2 as model_config
from tritium.core.errors import (
    CancelledError,
    InternalError,
    InvalidArgumentError,
    ModelConfigError,
    NotFoundError,
    Status,
    TritiumError,
    UnavailableError,
    UnsupportedError,
)
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from .base import (
    ALL_INSTANCE_KINDS,
    Backend,
    ExecuteDone,
    InferenceHandle,
    InstanceSpec,
    ModelContext,
    ModelInstanceState,
    ModelState,
)
from .batching import batch_inputs, batch_responses, requested_union, split_batch
from .registry import ENTRY_POINT_GROUP

__all__ = [
    # lifecycle
    "Backend",
    "ModelState",
    "ModelInstanceState",
    "ModelContext",
    "InstanceSpec",
    "InferenceHandle",
    "ExecuteDone",
    "ALL_INSTANCE_KINDS",
    "ENTRY_POINT_GROUP",
    "model_config",  # the model_config.proto messages and enums (ctx.config is a model_config.ModelConfig)
    # what execute sees and returns
    "InferenceRequest",
    "InferenceResponse",
    "Tensor",
    "DataType",
    # joining a batch's inputs and splitting its outputs
    "batch_inputs",
    "split_batch",
    "requested_union",
    "batch_responses",
    # errors (mapped to HTTP/gRPC codes by the frontends)
    "TritiumError",
    "Status",
    "InvalidArgumentError",
    "ModelConfigError",
    "NotFoundError",
    "UnavailableError",
    "UnsupportedError",
    "InternalError",
    "CancelledError",
]
