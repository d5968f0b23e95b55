"""Triton's Redis response cache (``--cache-config=redis,host=…,port=…``): entries in a Redis server that
several tritium servers share, so one answers from what another stored.

Settings are Triton's: ``host`` and ``port`` (required), ``user``, ``password``, ``db``,
``connect_timeout`` / ``socket_timeout`` (ms, 0: wait forever), ``pool_size`` (connections, default 1),
``wait_timeout`` (ms to wait for a pooled connection, default 100), and TLS: ``cert``, ``key``, ``cacert``,
``cacert_dir`` (any of them turns TLS on).  Deliberate difference: Triton waits forever by default when
Redis stops answering; here ``connect_timeout`` and ``socket_timeout`` default to 1000 ms, so a Redis that
hangs costs each request at most that, and the request is executed instead.

An entry is a plain byte string under ``tritium:response:<hex digest>``: a magic, the length of a JSON
header (outputs' names, data types, shapes and byte sizes; response parameters), the header, the
tensors' bytes (BYTES tensors in Triton's serialization).  Nothing read from Redis is unpickled or trusted:
an entry that does not decode exactly is a miss.  A Redis that goes away makes lookups miss and inserts
fail; both are logged (at most once per ``_LOG_EVERY_S`` seconds) and requests are answered by the model.
"""

from __future__ import annotations

import logging
import math
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .bytes_codec import deserialize_bytes_tensor, serialize_bytes_tensor
from .errors import InternalError, InvalidArgumentError, TritiumError
from .inference import InferenceResponse
from .response_cache import CacheCounters, CachedResponse, entry_size
from .types import DataType, Tensor

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

KEY_PREFIX = b"tritium:response:"
_MAGIC = b"TRC1"
_HEADER_LEN = struct.Struct("<I")
_LOG_EVERY_S = 10.0
_DEFAULT_TIMEOUT_MS = 1000

_MISSING_ADDRESS = ("Failed to initialize RedisCache, didn't specify address. Must at a minimum specify 'host' and "
                    "'port' in the configuration - e.g. tritonserver --cache-config redis,host=redis --cache-config "
                    "redis,port=6379 --model-repository=/models ...")
_KNOWN = frozenset(("host", "port", "user", "password", "db", "connect_timeout", "socket_timeout", "pool_size",
                    "wait_timeout", "cert", "key", "cacert", "cacert_dir", "sni"))


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Triton's Redis cache settings, checked (a number that does not parse is refused, naming it)."""

    host: str
    port: int
    user: str | None = None
    password: str | None = None
    db: int = 0
    connect_timeout_ms: int = _DEFAULT_TIMEOUT_MS
    socket_timeout_ms: int = _DEFAULT_TIMEOUT_MS
    pool_size: int = 1
    wait_timeout_ms: int = 100
    cert: str | None = None
    key: str | None = None
    cacert: str | None = None
    cacert_dir: str | None = None

    @classmethod
    def parse(cls, settings: dict[str, str]) -> RedisSettings:
        if "host" not in settings or "port" not in settings:
            raise InvalidArgumentError(_MISSING_ADDRESS)
        unknown = sorted(set(settings) - _KNOWN)
        if unknown:
            raise InvalidArgumentError(f"Failed to initialize RedisCache: unknown setting(s) {', '.join(unknown)}; "
                                       f"known: {', '.join(sorted(_KNOWN))}")
        if settings.get("sni"):
            raise InvalidArgumentError("Failed to initialize RedisCache: 'sni' is not supported by tritium's Redis "
                                       "client (the server name sent is 'host')")

        def number(key: str, default: int, low: int = 0, high: int = 2**31 - 1) -> int:
            text = settings.get(key)
            if text is None:
                return default
            try:
                value = int(text.strip())
            except ValueError:
                raise InvalidArgumentError(
                    f"Failed to initialize RedisCache: '{key}' must be an integer, got '{text}'") from None
            if not low <= value <= high:
                raise InvalidArgumentError(
                    f"Failed to initialize RedisCache: '{key}' must be in {low}..{high}, got {value}")
            return value

        return cls(
            host=settings["host"],
            port=number("port", 6379, 1, 65535),
            user=settings.get("user") or None,
            password=settings.get("password") or None,
            db=number("db", 0),
            connect_timeout_ms=number("connect_timeout", _DEFAULT_TIMEOUT_MS),
            socket_timeout_ms=number("socket_timeout", _DEFAULT_TIMEOUT_MS),
            pool_size=number("pool_size", 1, 1, 65535),
            wait_timeout_ms=number("wait_timeout", 100),
            cert=settings.get("cert") or None,
            key=settings.get("key") or None,
            cacert=settings.get("cacert") or None,
            cacert_dir=settings.get("cacert_dir") or None,
        )

    @property
    def tls(self) -> bool:
        return bool(self.cert or self.key or self.cacert or self.cacert_dir)

    def client_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``redis.asyncio`` connections (0 ms: no timeout, as Triton)."""
        args: dict[str, Any] = {
            "host": self.host, "port": self.port, "db": self.db, "username": self.user, "password": self.password,
            "socket_connect_timeout": self.connect_timeout_ms / 1000 or None,
            "socket_timeout": self.socket_timeout_ms / 1000 or None,
        }
        if self.tls:
            args.update(ssl_certfile=self.cert, ssl_keyfile=self.key, ssl_ca_certs=self.cacert,
                        ssl_ca_path=self.cacert_dir)
        return args


class RedisCache:
    """Entries in Redis, through a pool of ``pool_size`` connections on the server's event loop."""

    name = "redis"
    shared = True

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.counters = CacheCounters()
        self._client: Redis | None = None
        #: What failed (retrieve, insert, decode) -> when it was last logged, and how often since.
        self._logged: dict[str, tuple[float, int]] = {}

    async def connect(self) -> None:
        """Connect and ping, as Triton's cache does at start (refusing to start when it cannot)."""
        try:
            from redis.asyncio import BlockingConnectionPool, Redis, SSLConnection
        except ImportError:
            raise InternalError("Failed to initialize RedisCache: the redis cache needs the 'redis' package "
                                "(pip install 'tritium[redis]')") from None
        s = self.settings
        pool_args: dict[str, Any] = dict(s.client_arguments(), max_connections=s.pool_size,
                                         timeout=s.wait_timeout_ms / 1000 or None)
        if s.tls:
            pool_args["connection_class"] = SSLConnection
        self._client = Redis(connection_pool=BlockingConnectionPool(**pool_args))
        try:
            await self._client.ping()
        except Exception as e:
            await self.close()
            raise InternalError(f"Failed to initialize RedisCache: {e}") from None
        log.info("response cache: redis at %s:%d, db %d", s.host, s.port, s.db)

    async def lookup(self, key: bytes) -> CachedResponse | None:
        assert self._client is not None
        try:
            data = await self._client.get(KEY_PREFIX + key.hex().encode())
        except Exception as e:  # connection refused or reset, timeout, pool exhausted: a miss
            self._failed("Failed to retrieve key: ", key, e)
            return None
        if not isinstance(data, bytes):  # None: not stored (a client decoding to str is never made here)
            return None
        try:
            return decode_entry(data)
        except (ValueError, TritiumError) as e:
            self._failed("Failed to decode the entry of key: ", key, e)
            return None

    async def insert(self, key: bytes, response: InferenceResponse) -> None:
        assert self._client is not None
        try:
            data = encode_entry(response)
        except (TypeError, orjson.JSONEncodeError) as e:  # response parameters JSON cannot hold
            log.debug("response of key %s not stored in Redis: %s", key.hex(), e)
            return
        try:
            await self._client.set(KEY_PREFIX + key.hex().encode(), data)
        except Exception as e:
            self._failed("Failed to insert key: ", key, e)

    def usage(self) -> tuple[int, float] | None:
        return None

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    def _failed(self, what: str, key: bytes, error: BaseException) -> None:
        """Log a failure in Triton's words, each kind at most once per ``_LOG_EVERY_S``: a Redis that went away
        must not flood the log with one line per request."""
        now = time.monotonic()
        last, suppressed = self._logged.get(what, (-_LOG_EVERY_S, 0))
        if now - last < _LOG_EVERY_S:
            self._logged[what] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more like it since the last one logged)" if suppressed else ""
        log.error("%s%s. %s%s", what, key.hex(), error or type(error).__name__, more)
        self._logged[what] = (now, 0)


def encode_entry(response: InferenceResponse) -> bytes:
    """``response`` as one Redis value (see the module's description)."""
    buffers = []
    outputs = []
    for tensor in response.outputs:
        if tensor.datatype is DataType.BYTES:
            data = serialize_bytes_tensor(tensor.data)
        else:
            data = np.ascontiguousarray(tensor.data).tobytes()
        outputs.append([tensor.name, tensor.datatype.wire_name, list(tensor.data.shape), len(data)])
        buffers.append(data)
    header = orjson.dumps({"outputs": outputs, "parameters": response.parameters})
    return b"".join([_MAGIC, _HEADER_LEN.pack(len(header)), header, *buffers])


def decode_entry(data: bytes) -> CachedResponse:
    """The entry :func:`encode_entry` wrote; ``ValueError`` for anything else (checked before allocating)."""
    view = memoryview(data)
    if view[:4] != _MAGIC or len(view) < 8:
        raise ValueError("not a tritium cache entry")
    (length,) = _HEADER_LEN.unpack_from(view, 4)
    offset = 8 + length
    if offset > len(view):
        raise ValueError("truncated header")
    header = orjson.loads(view[8:offset])
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list) or \
            not isinstance(header.get("parameters"), dict):
        raise ValueError("malformed header")
    outputs = []
    for item in header["outputs"]:
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and isinstance(item[1], str)
                and isinstance(item[2], list) and all(type(d) is int and d >= 0 for d in item[2])
                and type(item[3]) is int and item[3] >= 0):
            raise ValueError("malformed output")
        name, wire, shape, size = item
        datatype = DataType.from_wire(wire)
        if offset + size > len(view):
            raise ValueError(f"output '{name}' runs past the entry")
        buffer = view[offset:offset + size]
        offset += size
        count = math.prod(shape)  # Python ints: a hostile shape cannot overflow
        if datatype is DataType.BYTES:
            array = deserialize_bytes_tensor(buffer, count, name).reshape(shape)
        else:
            dtype = datatype.numpy_dtype
            if count * dtype.itemsize != size:
                raise ValueError(f"output '{name}' has {size} bytes for shape {shape}")
            array = np.frombuffer(buffer, dtype=dtype).reshape(shape)  # read-only: a view of the bytes object
        outputs.append(Tensor(name, datatype, array))
    if offset != len(view):
        raise ValueError("bytes left over")
    entry = CachedResponse(outputs, header["parameters"])
    entry.byte_size = entry_size(InferenceResponse("", 0, outputs=outputs))
    return entry


__all__ = ["KEY_PREFIX", "RedisCache", "RedisSettings", "decode_entry", "encode_entry"]
