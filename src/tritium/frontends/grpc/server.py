"""The gRPC endpoint: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on ``grpc.aio``.

The server runs on the process's event loop (uvloop when installed), beside the HTTP frontend, and
calls the same :class:`~tritium.api.InferenceAPI`.  Handlers are registered by method name
(``GrpcApi.handlers``), so an extension's issue adds its RPCs there; RPCs whose feature tritium lacks
answer UNIMPLEMENTED.  The port, TLS and channel settings are ``listener.py``'s.

``ModelInfer`` and ``ModelStreamInfer`` use the byte-level codec in ``codec.py`` (zero-copy raw
inputs, outputs copied once); the other RPCs use the generated protobuf classes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format

from tritium._proto import grpc_service_pb2 as pb
from tritium._proto import health_pb2
from tritium.api import InferenceAPI
from tritium.core.errors import InternalError, InvalidArgumentError, TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.model import Model
from tritium.core.model import parse_version as _version
from tritium.frontends.forwarding import forward_headers, forward_pattern
from tritium.frontends.restrictions import (
    GRPC_GROUPS,
    GRPC_HEADER_PREFIX,
    Restrictions,
    check_restrictions,
    refusal_message,
)
from tritium.trace import Trace

from .codec import (
    DecodedRequest,
    ShmOutputs,
    decode_request_bytes,
    infer_response_bytes,
    stream_error_bytes,
    stream_response_bytes,
    to_inference_request,
)
from .errors import grpc_status

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"

#: Requests of one ``ModelStreamInfer`` stream in progress at once, and its responses waiting to be sent;
#: beyond, the stream is read (or the model's responses taken) only as the client catches up.
STREAM_DEPTH = 128


Context: TypeAlias = grpc.aio.ServicerContext


def _repository_parameters(parameters: Any) -> dict[str, Any]:
    """ModelRepositoryParameter map → plain values (``file:`` content arrives as ``bytes_param``)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice") is not None}


async def _abort(context: Context, error: Exception) -> None:
    if isinstance(error, TritiumError):
        await context.abort(grpc_status(error.status), str(error))
    log.exception("unexpected error in a gRPC handler", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {error}")


def _guarded(method: Callable[[Any, Context], Awaitable[Any]]) -> Callable[[Any, Context], Awaitable[Any]]:
    """Turn :class:`TritiumError` (and anything unexpected) into a gRPC status."""

    async def handler(request: Any, context: Context) -> Any:
        try:
            return await method(request, context)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure must become a status, not a dropped call
            if isinstance(e, grpc.aio.AbortError):
                raise
            await _abort(context, e)

    return handler


class GrpcApi:
    """Triton's gRPC RPCs over the protocol-neutral :class:`InferenceAPI`."""

    def __init__(self, api: InferenceAPI, restricted: Restrictions | None = None,
                 header_forward_pattern: str = "") -> None:
        self.api = api
        #: ``--grpc-header-forward-pattern``: metadata whose keys it finds reach the model as parameters.
        self.forward_headers = forward_pattern(header_forward_pattern)
        #: --grpc-restricted-protocol: group -> (key, value); RPCs of these groups get a check, the others none.
        self.restricted = restricted or {}
        check_restrictions(self.restricted, "grpc-restricted-protocol")

    # -- health and metadata --------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.api.live())

    async def server_ready(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.api.ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        """A version string that is not a version is an error (INVALID_ARGUMENT), as in Triton."""
        return pb.ModelReadyResponse(ready=self.api.model_ready(request.name, _version(request.version)))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> pb.ServerMetadataResponse:
        doc = self.api.metadata()
        return pb.ServerMetadataResponse(name=doc["name"], version=doc["version"], extensions=doc["extensions"])

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> pb.ModelMetadataResponse:
        doc = self.api.model_metadata(request.name, _version(request.version))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc["outputs"]],
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        model = self.api.model(request.name, _version(request.version))
        response = pb.ModelConfigResponse()
        response.config.CopyFrom(model.config)
        return response

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        stats = self.api.model_statistics(request.name, _version(request.version))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # -- the model repository extension --------------------------------------------------------------

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        rows = await self.api.repository_index(request.ready, request.repository_name)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        await self.api.load_model(request.model_name, _repository_parameters(request.parameters),
                                     request.repository_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        await self.api.unload_model(request.model_name, _repository_parameters(request.parameters),
                                       request.repository_name)
        return pb.RepositoryModelUnloadResponse()

    async def log_settings(self, request: pb.LogSettingsRequest, context: Context) -> pb.LogSettingsResponse:
        changes = {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in request.settings.items()
                   if value.WhichOneof("parameter_choice") is not None}
        response = pb.LogSettingsResponse()
        for key, value in self.api.log_settings(changes).items():
            setting = response.settings[key]
            if isinstance(value, bool):
                setting.bool_param = value
            elif isinstance(value, int):
                setting.uint32_param = value
            else:
                setting.string_param = value
        return response

    async def trace_setting(self, request: pb.TraceSettingRequest, context: Context) -> pb.TraceSettingResponse:
        """An empty ``SettingValue`` clears the setting; the level is a list, every other value one string."""
        changes: dict[str, Any] = {}
        for key, setting in request.settings.items():
            values = list(setting.value)
            changes[key] = None if not values else values if key == "trace_level" else values[0]
        response = pb.TraceSettingResponse()
        for key, value in self.api.trace_settings(request.model_name, changes).items():
            response.settings[key].value.extend(value if isinstance(value, list) else [value])
        return response

    # -- the shared-memory extensions --------------------------------------------------------------

    async def system_shared_memory_status(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        """Every region (empty name), or the one named (NOT_FOUND when unknown)."""
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self.api.system_shm_status(request.name):
            status = response.regions[region.name]
            status.name, status.key = region.name, region.key
            status.offset, status.byte_size = region.offset, region.byte_size
        return response

    async def system_shared_memory_register(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self.api.system_shm_register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def system_shared_memory_unregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        """One region, or all of them (empty name); an unknown name is not an error, as in Triton."""
        self.api.system_shm_unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    async def cuda_shared_memory_status(
        self, request: pb.CudaSharedMemoryStatusRequest, context: Context
    ) -> pb.CudaSharedMemoryStatusResponse:
        self.api.cuda_shm_status(request.name)  # none, or NOT_FOUND for a named one
        return pb.CudaSharedMemoryStatusResponse()

    async def cuda_shared_memory_register(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: Context
    ) -> pb.CudaSharedMemoryRegisterResponse:
        """Refused as a GPU-enabled Triton refuses a handle it cannot open (no CUDA here)."""
        self.api.cuda_shm_register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    async def cuda_shared_memory_unregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: Context
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        """Nothing is registered, so nothing to do (an unknown name is not an error, as in Triton)."""
        return pb.CudaSharedMemoryUnregisterResponse()

    async def health_check(self, request: health_pb2.HealthCheckRequest, context: Context) -> Any:
        status = health_pb2.HealthCheckResponse
        return status(status=status.SERVING if self.api.live() else status.NOT_SERVING)

    # -- inference ------------------------------------------------------------------------------

    def _forward(self, context: Context, parameters: dict[str, Any]) -> None:
        """The call's metadata that the forward pattern finds, by key as Triton's (sorted) metadata map."""
        assert self.forward_headers is not None
        metadata = sorted(context.invocation_metadata() or (), key=lambda item: item[0])
        forward_headers(self.forward_headers, metadata, parameters)

    def _model(self, decoded: DecodedRequest) -> Model:
        if decoded.error is not None:  # the message could not be parsed: not even its model name is known
            raise InvalidArgumentError(decoded.error)
        return self.api.model(decoded.model_name, _version(decoded.model_version))

    async def model_infer(self, decoded: DecodedRequest, context: Context) -> bytes:
        api = self.api
        model = self._model(decoded)
        api.require_unary(model, "ModelInfer RPC")
        request = to_inference_request(decoded, model.name, model.version, api.system_shm)
        if self.forward_headers is not None:
            self._forward(context, request.parameters)
        trace = api.start_trace(model, request.id)
        if trace is not None:
            return await self._traced_infer(model, request, trace, context, decoded.shm_outputs)
        response = await api.infer(request, model)
        return infer_response_bytes(response, decoded.shm_outputs)

    async def _traced_infer(
        self, model: Model, request: InferenceRequest, trace: Trace, context: Context, shm: ShmOutputs | None
    ) -> bytes:
        """GRPC_WAITREAD_END when the message is here, GRPC_SEND_END when gRPC has sent the answer."""
        trace.stamp("GRPC_WAITREAD_END")
        response = await self.api.infer(request, model, trace)
        data = infer_response_bytes(response, shm)
        trace.stamp("GRPC_SEND_START")

        def sent(_: Any) -> None:
            trace.stamp("GRPC_SEND_END")
            trace.finish()

        context.add_done_callback(sent)
        return data

    async def model_stream_infer(
        self, requests: AsyncIterator[DecodedRequest], context: Context
    ) -> AsyncIterator[bytes]:
        """Many requests in flight on one stream; each response is sent as soon as it is produced.

        A request's error is reported in that response's ``error_message`` and the stream goes on; with the
        client's ``triton_grpc_error: true`` header (as Triton), an error the model or its execution answers
        ends the stream with that error's gRPC status instead (a request refused before it runs is still
        answered in-band).
        """
        # Bounded both ways, so a client that sends without reading cannot make the server hold unbounded
        # work or responses: at most STREAM_DEPTH requests in progress (the next is read when one ends), and
        # at most STREAM_DEPTH responses wait for the client (a model's producer waits for room).
        queue: asyncio.Queue[bytes | TritiumError | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_DEPTH)  # responses queued (the end-of-stream mark needs no room)
        tasks: set[asyncio.Task[None]] = set()
        grpc_error = any(key == "triton_grpc_error" and value == "true"
                         for key, value in context.invocation_metadata() or ())
        forwarded: dict[str, Any] = {}
        if self.forward_headers is not None:  # the stream's metadata, for each of its requests
            self._forward(context, forwarded)
        slots = asyncio.Semaphore(STREAM_DEPTH)

        async def put(item: bytes | TritiumError) -> None:
            await room.acquire()
            queue.put_nowait(item)

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slots.release()

        async def read() -> None:
            try:
                iterator = requests.__aiter__()
                while True:
                    await slots.acquire()
                    try:
                        decoded = await iterator.__anext__()
                    except StopAsyncIteration:
                        break
                    task = asyncio.ensure_future(self._stream_one(decoded, put, grpc_error, forwarded))
                    tasks.add(task)
                    task.add_done_callback(done)
                if tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (item := await queue.get()) is not None:
                room.release()
                if isinstance(item, TritiumError):
                    await context.abort(grpc_status(item.status), str(item))  # raises
                else:
                    yield item
            await reader  # surface a failure of the request stream itself
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, decoded: DecodedRequest, put: Callable[[bytes | TritiumError], Awaitable[None]],
                          grpc_error: bool = False, forwarded: dict[str, Any] | None = None) -> None:
        """One request of a stream; ``grpc_error``: an error of its execution ends the stream (queued as is);
        ``forwarded``: the stream's metadata that ``--grpc-header-forward-pattern`` forwards."""
        request_id = decoded.id
        try:
            model = self._model(decoded)
            request = to_inference_request(decoded, model.name, model.version, self.api.system_shm)
            if forwarded:
                request.parameters.update(forwarded)
            if grpc_error:  # a request refused before it runs is answered in-band even so (as Triton)
                self.api.validate(request, model)
            shm = decoded.shm_outputs
            empty_final = bool(request.parameters.get("triton_enable_empty_final_response", False))
            decoupled = model.decoupled
            request.trace = self.api.start_trace(model, request_id)
            if request.trace is not None:
                request.trace.stamp("GRPC_WAITREAD_END")
            async for item in self.api.stream(request, model, validated=grpc_error):
                if item.error is not None:
                    await put(item.error if grpc_error else stream_error_bytes(str(item.error), request_id))
                elif item.response is not None:
                    # Triton flags every streamed response; a decoupled model's last one says final only
                    # when the model sent its data and the final flag together.
                    await put(stream_response_bytes(item.response, item.final or not decoupled, shm))
                elif item.final and empty_final:
                    empty = _empty_response(model, request_id)
                    await put(stream_response_bytes(empty, True))
            if request.trace is not None:  # the last response is on its way (the stream sends in order)
                request.trace.stamp("GRPC_SEND_START")
                request.trace.finish()
        except TritiumError as e:
            await put(stream_error_bytes(str(e), request_id))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - report it on the stream, keep the stream open
            log.exception("unexpected error in a streamed request")
            await put(stream_error_bytes(str(InternalError(f"internal error: {e}")), request_id))

    # -- wiring ---------------------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        unary = grpc.unary_unary_rpc_method_handler
        simple: dict[str, tuple[Callable[..., Awaitable[Any]], Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelConfig": (self.model_config, pb.ModelConfigRequest),
            "ModelStatistics": (self.model_statistics, pb.ModelStatisticsRequest),
            "LogSettings": (self.log_settings, pb.LogSettingsRequest),
            "TraceSetting": (self.trace_setting, pb.TraceSettingRequest),
            "RepositoryIndex": (self.repository_index, pb.RepositoryIndexRequest),
            "RepositoryModelLoad": (self.repository_model_load, pb.RepositoryModelLoadRequest),
            "RepositoryModelUnload": (self.repository_model_unload, pb.RepositoryModelUnloadRequest),
            "SystemSharedMemoryStatus": (self.system_shared_memory_status, pb.SystemSharedMemoryStatusRequest),
            "SystemSharedMemoryRegister": (self.system_shared_memory_register, pb.SystemSharedMemoryRegisterRequest),
            "SystemSharedMemoryUnregister": (
                self.system_shared_memory_unregister, pb.SystemSharedMemoryUnregisterRequest),
            "CudaSharedMemoryStatus": (self.cuda_shared_memory_status, pb.CudaSharedMemoryStatusRequest),
            "CudaSharedMemoryRegister": (self.cuda_shared_memory_register, pb.CudaSharedMemoryRegisterRequest),
            "CudaSharedMemoryUnregister": (
                self.cuda_shared_memory_unregister, pb.CudaSharedMemoryUnregisterRequest),
        }
        methods: dict[str, grpc.RpcMethodHandler] = {
            name: unary(_guarded(fn), request_deserializer=cls.FromString, response_serializer=_serialize)
            for name, (fn, cls) in simple.items()
        }
        methods["ModelInfer"] = unary(_guarded(self.model_infer), request_deserializer=decode_request_bytes)
        methods["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self.model_stream_infer, request_deserializer=decode_request_bytes
        )
        health = {
            "Check": unary(
                _guarded(self.health_check),
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=_serialize,
            )
        }
        for table in (methods, health):
            for name, handler in table.items():
                restriction = self.restricted.get(GRPC_GROUPS[name])
                if restriction is not None:
                    table[name] = _restricted(handler, GRPC_HEADER_PREFIX + restriction[0], restriction[1])
        return [
            grpc.method_handlers_generic_handler(SERVICE, methods),
            grpc.method_handlers_generic_handler(HEALTH_SERVICE, health),
        ]


def _restricted(handler: grpc.RpcMethodHandler, key: str, value: str) -> grpc.RpcMethodHandler:
    """The handler behind Triton's check: a call whose first ``key`` metadata is not exactly ``value``
    (or that has none) ends UNAVAILABLE before its handler runs; a stream ends before reading a message."""
    message = refusal_message(key, grpc=True)

    def allowed(context: Context) -> bool:
        for item in context.invocation_metadata() or ():
            if item[0] == key:
                return bool(item[1] == value)
        return False

    if handler.stream_stream is not None:
        stream = handler.stream_stream

        async def checked_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            if not allowed(context):
                await context.abort(grpc.StatusCode.UNAVAILABLE, message)
            async with contextlib.aclosing(stream(requests, context)) as inner:  # a client that leaves ends it now
                async for item in inner:
                    yield item

        return handler._replace(stream_stream=checked_stream)
    unary = handler.unary_unary

    async def checked(request: Any, context: Context) -> Any:
        if not allowed(context):
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)
        return await unary(request, context)

    return handler._replace(unary_unary=checked)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


def _empty_response(model: Model, request_id: str) -> InferenceResponse:
    return InferenceResponse(model.name, model.version, request_id)
