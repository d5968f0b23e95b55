"""An example tritium backend, packaged on its own: ``OUTPUT0 = scale * INPUT0 + offset``.

It uses only ``tritium.backends`` (the public contract) and is found by tritium through the entry point
``example_affine`` of the group ``tritium.backends`` in this package's pyproject.toml.

- ``scale`` comes from ``--backend-config=example_affine,scale=<float>`` (backend initialize);
- ``offset`` from the model's ``parameters { key: "offset" ... }`` (model initialize);
- auto-complete adds ``INPUT0`` / ``OUTPUT0`` (FP32, ``[-1]``) to a config that has none;
- each execution stamps ``input_end_ns`` / ``infer_end_ns`` so statistics split its phases.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np

from tritium.backends import (
    Backend,
    DataType,
    InferenceRequest,
    InferenceResponse,
    InstanceSpec,
    ModelConfigError,
    ModelContext,
    ModelInstanceState,
    ModelState,
    Tensor,
    TritiumError,
    batch_inputs,
    model_config,
    split_batch,
)


def _number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ModelConfigError(f"example_affine: '{what}' must be a number, got '{text}'") from None


class AffineBackend(Backend):
    """Backend initialize / finalize: holds the backend-wide ``scale``."""

    # instance_kinds stays the default {"KIND_CPU"}: a KIND_GPU model is refused before it loads.

    def __init__(self) -> None:
        self.scale = 1.0

    def initialize(self, backend_config: Mapping[str, str]) -> None:
        self.scale = _number(backend_config.get("scale", "1"), "scale")

    def auto_complete_config(self, ctx: ModelContext) -> None:
        config = ctx.config
        if not config.input:
            config.input.add(name="INPUT0", data_type=model_config.TYPE_FP32, dims=[-1])
        if not config.output:
            config.output.add(name="OUTPUT0", data_type=model_config.TYPE_FP32, dims=[-1])

    def model_initialize(self, ctx: ModelContext) -> ModelState:
        return AffineModel(ctx, self.scale)


class AffineModel(ModelState):
    """Model initialize / finalize: checks the config once and reads ``offset``."""

    def __init__(self, ctx: ModelContext, scale: float) -> None:
        super().__init__(ctx)
        config = ctx.config
        if len(config.input) != 1 or len(config.output) != 1:
            raise ModelConfigError(f"model '{ctx.name}': example_affine takes one input and one output")
        self.input = config.input[0].name
        self.output = config.output[0].name
        self.scale = np.float32(scale)
        self.offset = np.float32(_number(ctx.parameter("offset", "0") or "0", "offset"))

    def instance_initialize(self, spec: InstanceSpec) -> ModelInstanceState:
        return AffineInstance(spec, self)


class AffineInstance(ModelInstanceState):
    """Instance initialize / execute / finalize."""

    def __init__(self, spec: InstanceSpec, model: AffineModel) -> None:
        super().__init__(spec)
        self.model = model

    def execute(self, requests: Sequence[InferenceRequest]) -> list[InferenceResponse | TritiumError]:
        model = self.model
        x = batch_inputs(requests)[model.input].astype(np.float32, copy=False)
        self.input_end_ns = time.monotonic_ns()
        y = x * model.scale + model.offset
        self.infer_end_ns = time.monotonic_ns()
        responses: list[InferenceResponse | TritiumError] = []
        for request, part in zip(requests, split_batch(y, requests)):
            wanted = request.requested_outputs is None or model.output in request.requested_outputs
            outputs = [Tensor(model.output, DataType.FP32, part)] if wanted else []
            responses.append(InferenceResponse(request.model_name, model.ctx.version, request.id, outputs))
        return responses
