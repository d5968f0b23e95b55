"""The KServe v2 HTTP API as Triton serves it, independent of the socket layer.

``HttpApi.handle`` takes a parsed request and returns status, headers and body
pieces; the transport in ``server.py`` only moves bytes.  URL matching follows
Triton's: a model name is ``[^/]+``, a version ``[0-9]+``.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from tritium.api import InferenceAPI
from tritium.core.errors import InvalidArgumentError, Status, TritiumError
from tritium.core.inference import InferenceRequest
from tritium.core.model import Model, parse_version
from tritium.core.shm_regions import CUDA_IPC_HANDLE_SIZE
from tritium.core.streaming import StreamItem
from tritium.frontends.forwarding import forward_headers, forward_pattern
from tritium.frontends.restrictions import Restrictions, check_restrictions, http_group, refusal_message

from .codec import (
    OutputEncoding,
    decode_infer_request,
    decode_raw_request,
    encode_infer_response,
    is_whole_number,
    parse_json,
)
from .generate import NOT_ONE_RESPONSE, decode_generate_request, encode_generate_response, error_event, event

log = logging.getLogger(__name__)

#: Triton's mapping of error status to HTTP status.
HTTP_STATUS = {
    Status.INTERNAL: 500,
    Status.NOT_FOUND: 404,
    Status.UNAVAILABLE: 503,
    Status.UNSUPPORTED: 501,
}

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
TEXT = b"text/plain"
EVENT_STREAM = b"text/event-stream; charset=utf-8"

_REPOSITORY_URL = re.compile(r"^/v2/repository(?:/([^/]+))?/(?:(index)|models/([^/]+)/(load|unload))$")
_TRACE_URL = re.compile(r"^/v2/models/([^/]+)/trace/setting$")
_SHM_URL = re.compile(r"^/v2/(system|cuda)sharedmemory(?:/region/([^/]+))?/(status|register|unregister)$")
_MODEL_URL = re.compile(
    r"^/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|ready|config|stats|generate|generate_stream))?$")


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    #: A memoryview when a big body was received into shared memory (``core.shared_memory``).
    body: bytes | memoryview
    #: Every header as received, in order (only with ``--http-header-forward-pattern``).
    raw_headers: list[tuple[bytes, bytes]] | None = None


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: list[bytes | memoryview] = field(default_factory=list)
    content_type: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: The request's trace (trace extension); the transport stamps HTTP_SEND_* and finishes it.
    trace: Any = None
    #: More of the body, sent as it comes (chunked) after ``body``: Server-Sent Events of ``generate_stream``.
    stream: AsyncIterator[bytes] | None = None


def error_response(error: TritiumError | str, status: int | None = None, content_type: bytes = JSON) -> HttpResponse:
    message = str(error)
    if status is None:
        status = HTTP_STATUS.get(error.status, 400) if isinstance(error, TritiumError) else 400
    return HttpResponse(status, [orjson.dumps({"error": message})], content_type)


def _json(doc: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, [orjson.dumps(doc)], JSON)


# Triton answers health and readiness with an empty text/plain body.
_EMPTY_OK = HttpResponse(200, [], TEXT)
_EMPTY_NOT_READY = HttpResponse(400, [], TEXT)
_MODEL_NOT_READY = HttpResponse(400, [orjson.dumps({"error": "Model version not ready"})], TEXT)
_NOT_FOUND = HttpResponse(404, [orjson.dumps({"error": "Not Found"})], TEXT)


def _not_allowed(content_type: bytes = JSON) -> HttpResponse:
    return HttpResponse(405, [orjson.dumps({"error": "Method Not Allowed"})], content_type)


class HttpApi:
    """Routes HTTP requests to the protocol-neutral :class:`InferenceAPI`."""

    def __init__(self, api: InferenceAPI, max_input_size: int, restricted: Restrictions | None = None,
                 header_forward_pattern: str = "") -> None:
        self.api = api
        self.max_input_size = max_input_size
        #: ``--http-header-forward-pattern``: headers whose names it finds reach the model as parameters.
        self.forward_headers = forward_pattern(header_forward_pattern)
        if restricted:
            # --http-restricted-api: checked before routing, as Triton does; without it nothing runs per request
            check_restrictions(restricted, "http-restricted-api")
            # the transport decodes header values as latin-1: compare the configured value's UTF-8 bytes, as Triton
            self._rules = {group: (header.lower(), value.encode().decode("latin-1"),
                                   orjson.dumps({"error": refusal_message(header)}))
                           for group, (header, value) in restricted.items()}
            self.handle = self._restricted_handle  # type: ignore[method-assign]

    async def _restricted_handle(self, request: HttpRequest) -> HttpResponse:
        """Triton's answer to a request of a restricted group without the header's exact value: 403."""
        rule = self._rules.get(http_group(request.path))  # type: ignore[arg-type]
        if rule is not None and request.headers.get(rule[0]) != rule[1]:
            return HttpResponse(403, [rule[2]], TEXT)
        return await HttpApi.handle(self, request)

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._route(request)
        except TritiumError as e:
            log.debug("%s %s failed: %s", request.method, request.path, e)  # --log-verbose
            return error_response(e)
        except _UnsupportedEncoding:
            response = error_response("Unsupported compression type", 501, TEXT)
            response.headers.append((b"Accept-Encoding", b"gzip, deflate"))
            return response

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        if path.startswith("/v2/models/") and path != "/v2/models/stats" and not path.endswith("/trace/setting"):
            match = _MODEL_URL.match(path)
            if match is None:
                return _NOT_FOUND
            name, version_text, action = match.groups()
            version = parse_version(version_text) if version_text else -1
            method = request.method
            if action == "infer":
                if method != "POST":
                    return _not_allowed(TEXT)
                return await self._infer(request, name, version)
            if action is not None and action.startswith("generate"):
                if method != "POST":
                    return _not_allowed()
                return await self._generate(request, name, version, action == "generate_stream")
            return self._model_document(method, name, version, action)
        return await self._server_route(request)

    def _model_document(self, method: str, name: str, version: int, action: str | None) -> HttpResponse:
        """``/v2/models/{m}[/versions/{v}][/ready|/config|/stats]``."""
        if action == "ready":
            if method != "GET":
                return _not_allowed(TEXT)
            return _EMPTY_OK if self.api.model_ready(name, version) else _MODEL_NOT_READY
        if method != "GET":
            return _not_allowed()
        if action == "config":
            return _json(self.api.model_config(name, version))
        if action == "stats":
            return _json(self.api.model_statistics(name, version))
        return _json(self.api.model_metadata(name, version))

    async def _server_route(self, request: HttpRequest) -> HttpResponse:
        """Everything but a model's own URLs: health, server metadata and the extensions."""
        path = request.path
        method = request.method
        if path == "/v2/models/stats":
            if method != "GET":
                return _not_allowed()
            return _json(self.api.model_statistics())
        if path.endswith("/trace/setting"):
            return self._trace_setting(request)
        if path == "/v2/health/live" or path == "/v2/health/ready":
            if method != "GET":
                return _not_allowed(TEXT)
            ok = self.api.live() if path.endswith("live") else self.api.ready()
            return _EMPTY_OK if ok else _EMPTY_NOT_READY
        if path == "/v2":
            if method != "GET":
                return _not_allowed()
            return _json(self.api.metadata())
        if path.startswith("/v2/repository/"):
            return await self._repository(request)
        if "sharedmemory/" in path:
            return self._shared_memory(request)
        if path == "/v2/logging":
            return self._logging(request)
        return _NOT_FOUND

    def _logging(self, request: HttpRequest) -> HttpResponse:
        """The logging extension: GET the settings, POST changes to them."""
        if request.method == "GET":
            return _json(self.api.log_settings())
        if request.method != "POST":
            return _not_allowed()
        changes = parse_json(request.body, "logging") if request.body else {}
        if not isinstance(changes, dict):
            raise InvalidArgumentError("the logging settings must be a JSON object")
        return _json(self.api.log_settings(changes))

    def _trace_setting(self, request: HttpRequest) -> HttpResponse:
        """The trace extension: ``/v2/trace/setting`` and ``/v2/models/{m}/trace/setting`` (no version)."""
        if request.path == "/v2/trace/setting":
            model = ""
        else:
            match = _TRACE_URL.match(request.path)
            if match is None:
                return _NOT_FOUND
            model = match.group(1)
        if request.method == "GET":
            return _json(self.api.trace_settings(model))
        if request.method != "POST":
            return _not_allowed()
        changes = parse_json(request.body, "trace setting") if request.body else {}
        if not isinstance(changes, dict):
            raise InvalidArgumentError("the trace settings must be a JSON object")
        return _json(self.api.trace_settings(model, changes))

    def _shared_memory(self, request: HttpRequest) -> HttpResponse:
        """The system shared-memory extension; the CUDA one only answers that it has no regions."""
        match = _SHM_URL.match(request.path)
        if match is None:
            return _NOT_FOUND
        kind, name, action = match.groups()
        if request.method != ("GET" if action == "status" else "POST"):
            return _not_allowed()
        if name is None and action == "register":
            return _NOT_FOUND
        api = self.api
        if kind == "cuda":
            if action == "register":
                self._cuda_register(request, name, api)
            return _json(api.cuda_shm_status(name or "")) if action == "status" else HttpResponse(200, [], JSON)
        if action == "status":
            return _json([{"name": r.name, "key": r.key, "offset": r.offset, "byte_size": r.byte_size}
                          for r in api.system_shm_status(name or "")])
        if action == "unregister":
            api.system_shm_unregister(name or "")
            return HttpResponse(200, [], JSON)
        body = parse_json(request.body, "shared memory register request") if request.body else {}
        if not isinstance(body, dict):
            raise InvalidArgumentError("the shared memory register request must be a JSON object")
        for key in ("key", "byte_size"):
            if key not in body:
                raise InvalidArgumentError(f"Shared memory register request has no '{key}' field")
        key, offset, byte_size = body["key"], body.get("offset", 0), body["byte_size"]
        # (Triton's JSON library's words first, as it answers, then what the request needs)
        if not isinstance(key, str):
            raise InvalidArgumentError("attempt to access JSON non-string as string: 'key' of a shared memory "
                                       "register request must be a string")
        for field_name, value in (("offset", offset), ("byte_size", byte_size)):
            if not is_whole_number(value):
                raise InvalidArgumentError("attempt to access JSON non-unsigned-integer as unsigned-integer: "
                                           f"'{field_name}' of a shared memory register request must be a "
                                           "non-negative integer")
        api.system_shm_register(name, key, offset, byte_size)
        return HttpResponse(200, [], JSON)

    @staticmethod
    def _cuda_register(request: HttpRequest, name: str, api: InferenceAPI) -> None:
        """The request is checked as Triton checks it (its order and words), then refused as a GPU-enabled
        Triton refuses a handle it cannot open: this server opens no CUDA IPC handle."""
        body = parse_json(request.body, "shared memory register request") if request.body else {}
        if not isinstance(body, dict):
            raise InvalidArgumentError("the shared memory register request must be a JSON object")
        if "raw_handle" not in body:
            raise InvalidArgumentError("Shared memory register request has no 'raw_handle' field")
        # (a missing or mistyped member: Triton's JSON library's words first, then what the request needs)
        raw = body["raw_handle"]
        if not isinstance(raw, dict) or "b64" not in raw:
            raise InvalidArgumentError("attempt to access non-existing object member 'b64': 'raw_handle' must be an "
                                       "object whose 'b64' is the base64 of a cudaIpcMemHandle_t")
        if not isinstance(raw["b64"], str):
            raise InvalidArgumentError("attempt to access JSON non-string as string: 'raw_handle.b64' must be a string")
        for field_name in ("byte_size", "device_id"):
            if field_name not in body:
                raise InvalidArgumentError(f"attempt to access non-existing object member '{field_name}': a CUDA "
                                           "shared memory register request needs it")
            if not is_whole_number(body[field_name]):
                raise InvalidArgumentError("attempt to access JSON non-unsigned-integer as unsigned-integer: "
                                           f"'{field_name}' must be a non-negative integer")
        try:
            handle = base64.b64decode(raw["b64"], validate=True)
        except binascii.Error:
            handle = b""
        if len(handle) != CUDA_IPC_HANDLE_SIZE:
            raise InvalidArgumentError("'raw_handle' must be a valid base64 encoded cudaIpcMemHandle_t")
        api.cuda_shm_register(name)

    async def _repository(self, request: HttpRequest) -> HttpResponse:
        """The model repository extension: index, load, unload (POST only; load/unload answer an empty 200)."""
        match = _REPOSITORY_URL.match(request.path)
        if match is None:
            return _NOT_FOUND
        if request.method != "POST":
            return _not_allowed()
        repository, index, name, action = match.groups()
        body = parse_json(request.body, "repository request") if request.body else {}
        if not isinstance(body, dict):
            raise InvalidArgumentError("the repository request must be a JSON object")
        if index:
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgumentError("'ready' must be a boolean")
            return _json(await self.api.repository_index(ready, repository or ""))
        parameters = body.get("parameters", {})
        if not isinstance(parameters, dict):
            raise InvalidArgumentError("'parameters' must be a JSON object")
        if action == "load":
            decoded: dict[str, Any] = {}
            for key, value in parameters.items():
                if key.startswith("file:"):  # HTTP carries file content as base64 text
                    if not isinstance(value, str):
                        raise InvalidArgumentError(f"the '{key}' parameter must be a base64 string")
                    try:
                        value = base64.b64decode(value, validate=True)
                    except ValueError as e:  # binascii.Error, or text that is not ASCII
                        raise InvalidArgumentError(f"the '{key}' parameter is not valid base64: {e}") from None
                decoded[key] = value
            await self.api.load_model(name, decoded, repository or "")
        else:
            await self.api.unload_model(name, parameters, repository or "")
        return HttpResponse(200, [], JSON)

    async def _infer(self, request: HttpRequest, name: str, version: int) -> HttpResponse:
        api = self.api
        try:
            model = api.model(name, version)  # an unknown model is reported before the body is read
        except TritiumError as e:
            return error_response(e, content_type=TEXT)
        api.require_unary(model, "HTTP end point")
        trace = api.start_trace(model)
        if trace is not None:
            trace.stamp("HTTP_RECV_START")
        body = self._decompress(request)
        header_length = request.headers.get("inference-header-content-length")
        if header_length is None:
            infer_request, encoding = decode_infer_request(body, None, name, version, api.system_shm)
        else:
            try:
                length = int(header_length)
            except ValueError:
                length = 0  # as Triton: an unreadable length means a raw binary request
            if length == 0:
                infer_request, encoding = self._raw_request(model, body, name, version)
            elif not 0 < length <= len(body):
                return error_response(
                    f"inference header size should be in range (0, {len(body)}), got: {length}", 400, TEXT
                )
            else:
                infer_request, encoding = decode_infer_request(body, length, name, version, api.system_shm)
        if self.forward_headers is not None and request.raw_headers:
            forward_headers(self.forward_headers, request.raw_headers, infer_request.parameters)
        if trace is not None:
            trace.stamp("HTTP_RECV_END")
            trace.request_id = infer_request.id
        response = await api.infer(infer_request, model, trace)
        pieces, json_length = encode_infer_response(response, encoding)
        if json_length is None:
            return HttpResponse(200, pieces, JSON, trace=trace)
        return HttpResponse(
            200,
            pieces,
            OCTET_STREAM,
            [(b"Inference-Header-Content-Length", str(json_length).encode())],
            trace,
        )

    async def _generate(self, request: HttpRequest, name: str, version: int, stream: bool) -> HttpResponse:
        """The generate extension: errors of the request or the model are 400 (as Triton), an unknown model 404."""
        api = self.api
        model = api.model(name, version)
        try:
            infer_request = decode_generate_request(self._decompress(request), model)
            api.validate(infer_request, model)  # a refused request is a JSON error, also for generate_stream
        except TritiumError as e:
            return error_response(e, 400)
        if stream:
            return await self._generate_stream(model, infer_request)
        if not model.decoupled:
            try:
                response = await api.infer(infer_request, model, validated=True)
            except TritiumError as e:
                return error_response(e, 400)
            return HttpResponse(200, [encode_generate_response(response)], JSON)
        responses = []
        async for item in api.stream(infer_request, model, validated=True):
            if item.error is not None:
                return error_response(item.error, 400)
            if item.response is not None:
                responses.append(item.response)
        if len(responses) != 1:
            return _json({"error": NOT_ONE_RESPONSE})  # with 200, as Triton
        return HttpResponse(200, [encode_generate_response(responses[0])], JSON)

    async def _generate_stream(self, model: Model, infer_request: InferenceRequest) -> HttpResponse:
        """Each response as an event as the model sends it.  An error before the first one is the answer's
        status (400); a later one is an event, and the stream ends there."""
        items = self.api.stream(infer_request, model, validated=True)
        async for item in items:
            if item.error is not None:
                await items.aclose()
                return HttpResponse(400, [error_event(item.error.message)], EVENT_STREAM)
            if item.response is not None:
                first = event(encode_generate_response(item.response))
                if item.final:
                    await items.aclose()
                    return HttpResponse(200, [first], EVENT_STREAM)
                return HttpResponse(200, [first], EVENT_STREAM, stream=_events(items))
        return HttpResponse(200, [], EVENT_STREAM)

    @staticmethod
    def _raw_request(
        model: Model, body: bytes | memoryview, name: str, version: int
    ) -> tuple[InferenceRequest, OutputEncoding]:
        if len(model.inputs) != 1:
            raise InvalidArgumentError(
                f"raw binary request requires a model with exactly one input; model '{name}' has {len(model.inputs)}"
            )
        spec = next(iter(model.inputs.values()))
        shape = spec.metadata_shape(model.max_batch_size)
        if model.max_batch_size > 0:
            shape[0] = 1
        return decode_raw_request(body, name, version, spec.name, spec.datatype, shape)

    def _decompress(self, request: HttpRequest) -> bytes | memoryview:
        encoding = request.headers.get("content-encoding")
        if not encoding or encoding == "identity":
            return request.body
        if encoding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            wbits = 32 + zlib.MAX_WBITS  # zlib or gzip wrapper, detected (Triton accepts both)
        else:
            raise _UnsupportedEncoding(encoding)
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(request.body, self.max_input_size + 1)
        except zlib.error as e:
            raise InvalidArgumentError(f"failed to decompress the {encoding} request body: {e}") from None
        if len(data) > self.max_input_size or inflater.unconsumed_tail:
            raise InvalidArgumentError(
                f"request body is larger than the maximum input size of {self.max_input_size} bytes once decompressed"
            )
        return data


async def _events(items: AsyncGenerator[StreamItem, None]) -> AsyncIterator[bytes]:
    """The rest of a ``generate_stream``: one event per response, an error event ends it."""
    try:
        async for item in items:
            if item.error is not None:
                yield error_event(item.error.message)
                return
            if item.response is not None:
                yield event(encode_generate_response(item.response))
    finally:
        await items.aclose()  # the client went away: the model's request is cancelled


class _UnsupportedEncoding(Exception):
    pass


def compress_body(
    pieces: list[bytes | memoryview], accept_encoding: str
) -> tuple[list[bytes | memoryview], bytes | None]:
    """Compress a response as the client accepts (gzip preferred, then deflate)."""
    accepted = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",")}
    if "gzip" in accepted:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        name = b"gzip"
    elif "deflate" in accepted:
        compressor = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
        name = b"deflate"
    else:
        return pieces, None
    out = [compressor.compress(piece) for piece in pieces]
    out.append(compressor.flush())
    return [b"".join(out)], name
