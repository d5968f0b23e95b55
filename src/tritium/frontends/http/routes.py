"""The KServe v2 HTTP API as Triton serves it, independent of the socket layer.

``HttpApi.handle`` takes a parsed request and returns status, headers and body
pieces; the transport in ``server.py`` only moves bytes.  URL matching follows
Triton's: a model name is ``[^/]+``, a version ``[0-9]+``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from tritium.core.errors import InvalidArgumentError, Status, TritiumError
from tritium.server import Server

from .codec import decode_infer_request, encode_infer_response

#: Triton's mapping of error status to HTTP status.
HTTP_STATUS = {
    Status.INTERNAL: 500,
    Status.NOT_FOUND: 404,
    Status.UNAVAILABLE: 503,
    Status.UNSUPPORTED: 501,
}

JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"

_MODEL_URL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([0-9]+))?(?:/(infer|ready|config))?$")


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int = 200
    body: list[bytes | memoryview] = field(default_factory=list)
    content_type: bytes | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def error_response(error: TritiumError | str, status: int | None = None) -> HttpResponse:
    message = str(error)
    if status is None:
        status = HTTP_STATUS.get(error.status, 400) if isinstance(error, TritiumError) else 400
    return HttpResponse(status, [orjson.dumps({"error": message})], JSON)


def _json(doc: Any, status: int = 200) -> HttpResponse:
    return HttpResponse(status, [orjson.dumps(doc)], JSON)


_EMPTY_OK = HttpResponse(200)


class HttpApi:
    """Routes HTTP requests to the server's protocol-neutral API."""

    def __init__(self, server: Server, max_input_size: int) -> None:
        self.server = server
        self.max_input_size = max_input_size

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await self._route(request)
        except TritiumError as e:
            return error_response(e)
        return response

    async def _route(self, request: HttpRequest) -> HttpResponse:
        path = request.path
        method = request.method
        if path.startswith("/v2/models/"):
            match = _MODEL_URL.match(path)
            if match is None:
                return error_response("Not Found", 404)
            name, version_text, action = match.groups()
            version = int(version_text) if version_text else -1
            if action == "infer":
                if method != "POST":
                    return error_response("Method Not Allowed", 405)
                return await self._infer(request, name, version)
            if method != "GET":
                return error_response("Method Not Allowed", 405)
            if action == "ready":
                return _EMPTY_OK if self.server.model_ready(name, version) else HttpResponse(400)
            if action == "config":
                return _json(self.server.model_config(name, version))
            return _json(self.server.model_metadata(name, version))
        if path == "/v2/health/live" or path == "/v2/health/ready":
            if method != "GET":
                return error_response("Method Not Allowed", 405)
            ok = self.server.live() if path.endswith("live") else self.server.ready()
            return _EMPTY_OK if ok else HttpResponse(400)
        if path == "/v2" or path == "/v2/":
            if method != "GET":
                return error_response("Method Not Allowed", 405)
            return _json(self.server.metadata())
        return error_response("Not Found", 404)

    async def _infer(self, request: HttpRequest, name: str, version: int) -> HttpResponse:
        model = self.server.model(name, version)  # an unknown model is reported before the body is read
        body = self._decompress(request)
        header_length = request.headers.get("inference-header-content-length")
        length = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidArgumentError(
                    f"Inference-Header-Content-Length must be an integer, got '{header_length}'"
                ) from None
        if length == 0:
            raise InvalidArgumentError("raw binary inference requests (Inference-Header-Content-Length: 0) are not supported")
        infer_request, encoding = decode_infer_request(body, length, name, version)
        response = await model.infer(infer_request)
        pieces, json_length = encode_infer_response(response, encoding)
        if json_length is None:
            return HttpResponse(200, pieces, JSON)
        return HttpResponse(
            200,
            pieces,
            OCTET_STREAM,
            [(b"Inference-Header-Content-Length", str(json_length).encode())],
        )

    def _decompress(self, request: HttpRequest) -> bytes:
        encoding = request.headers.get("content-encoding")
        if not encoding or encoding == "identity":
            return request.body
        if encoding == "gzip":
            wbits = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            wbits = zlib.MAX_WBITS
        else:
            raise InvalidArgumentError(f"unsupported Content-Encoding '{encoding}'")
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


def compress_body(pieces: list[bytes | memoryview], accept_encoding: str) -> tuple[list[bytes | memoryview], bytes | None]:
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
