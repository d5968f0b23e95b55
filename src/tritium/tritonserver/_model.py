"""A model of an in-process server: metadata, readiness, configuration, statistics and inference."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from tritium.core.errors import InvalidArgumentError

from ._enums import ModelBatchFlag, ModelTxnPropertyFlag
from ._request import InferenceRequest
from ._response import AsyncResponseIterator, ResponseIterator

if TYPE_CHECKING:
    from ._runtime import Handle, Runtime
    from ._server import Server


class Model:
    """A model name (and version, -1: the latest ready one) of a started server; checked when used."""

    def __init__(self, server: Server, name: str, version: int = -1, state: str | None = None,
                 reason: str | None = None) -> None:
        handle = server._handle()
        if handle is None:
            raise InvalidArgumentError("Server not started")
        self._handle: Handle = handle  # keeps the server running while this model object lives
        self._runtime: Runtime = handle.runtime
        self.name = name
        self.version = version
        self.state = state
        self.reason = reason

    def _at_version(self, version: int) -> Model:
        model = Model.__new__(Model)
        model._handle, model._runtime = self._handle, self._runtime
        model.name, model.version, model.state, model.reason = self.name, version, None, None
        return model

    def create_request(self, **kwargs: Any) -> InferenceRequest:
        """A request for this model (keyword arguments: :class:`InferenceRequest`'s fields)."""
        kwargs.pop("model", None)
        return InferenceRequest(model=self, **kwargs)

    def infer(self, inference_request: InferenceRequest | None = None, raise_on_error: bool = True,
              **kwargs: Any) -> ResponseIterator:
        """Send a request; iterate the result for its responses (one, or a decoupled model's stream).

        Raises at once when the request does not fit the model (names, types, shapes) or the model is not
        ready, as Triton does; with ``raise_on_error`` a failed response raises its error while iterating.
        """
        request = inference_request if inference_request is not None else InferenceRequest(model=self, **kwargs)
        if isinstance(request.response_queue, asyncio.Queue):
            raise InvalidArgumentError("infer() takes a queue.SimpleQueue as response_queue; an asyncio.Queue "
                                       "goes with async_infer()")
        core_model, core_request = request._prepare()
        iterator = ResponseIterator(self, request, raise_on_error)
        iterator._call = self._runtime.begin(core_model, core_request, iterator._deliver)
        return iterator

    def async_infer(self, inference_request: InferenceRequest | None = None, raise_on_error: bool = True,
                    **kwargs: Any) -> AsyncResponseIterator:
        """Send a request from a running asyncio loop; ``async for`` over the result for its responses,
        which arrive on that loop (the server runs on its own)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise InvalidArgumentError("async_infer() must be called from a running asyncio event loop; use "
                                       "infer() elsewhere") from None
        request = inference_request if inference_request is not None else InferenceRequest(model=self, **kwargs)
        core_model, core_request = request._prepare()
        iterator = AsyncResponseIterator(self, request, raise_on_error, loop)
        iterator._call = self._runtime.begin(core_model, core_request, iterator._deliver)
        return iterator

    def metadata(self) -> dict[str, Any]:
        """Name, versions, platform, inputs and outputs (the KServe v2 model metadata)."""
        return self._runtime.run(self._runtime.core.model_metadata, self.name, self.version)

    def ready(self) -> bool:
        return self._runtime.core.model_ready(self.name, self.version)

    def batch_properties(self) -> ModelBatchFlag:
        """FIRST_DIM when the model batches along its first dimension (``max_batch_size`` > 0), else UNKNOWN."""
        model = self._runtime.core.model(self.name, self.version)
        return ModelBatchFlag.FIRST_DIM if model.max_batch_size > 0 else ModelBatchFlag.UNKNOWN

    def transaction_properties(self) -> ModelTxnPropertyFlag:
        """DECOUPLED when the model sends any number of responses per request, else ONE_TO_ONE."""
        model = self._runtime.core.model(self.name, self.version)
        return ModelTxnPropertyFlag.DECOUPLED if model.decoupled else ModelTxnPropertyFlag.ONE_TO_ONE

    def statistics(self) -> dict[str, Any]:
        """The statistics extension's answer for this model (``model_stats``)."""
        return self._runtime.run(self._runtime.core.model_statistics, self.name, self.version)

    def config(self, config_version: int = 1) -> dict[str, Any]:
        """The model's configuration as JSON-like dictionaries (Triton's JSON form)."""
        if config_version != 1:
            raise InvalidArgumentError(f"model configuration version {config_version} is not supported; use 1")
        return self._runtime.run(self._runtime.core.model_config, self.name, self.version)

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return str({"name": self.name, "version": self.version, "state": self.state})
