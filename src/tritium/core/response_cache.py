"""The response cache: Triton's ``response_cache { enable: true }`` with ``--cache-config``.

A model whose config enables it answers a request it has answered before from the cache, without
executing the model.  :class:`tritium.core.model.Model` consults it between validation and the scheduler,
so frontends never know it and models that do not enable it pay one attribute check.

The key is a BLAKE2b digest of what decides the answer: model name and version, every input (name, data
type, shape, bytes, inputs sorted by name), the requested outputs, classification requests and the
parameters the model sees.  Triton hashes only the model and the inputs' names and bytes (a 64-bit boost
hash), so a request for other outputs or with other parameters gets another request's answer there;
here it does not.  Only successful responses are stored (Triton also stores error responses, and answers
them later as empty successes).

Two caches, as Triton's: ``local`` (this process, ``size`` bytes, least recently used entries evicted)
and ``redis`` (:mod:`tritium.core.cache_redis`, shared by every server that uses the same Redis).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .bytes_codec import serialize_bytes_tensor
from .errors import InternalError, InvalidArgumentError
from .inference import InferenceRequest, InferenceResponse
from .types import DataType, Tensor

log = logging.getLogger(__name__)

now_ns = time.monotonic_ns

#: The caches tritium has built in (Triton loads ``<cache directory>/<name>/libtritoncache_<name>.so``).
CACHE_NAMES = ("local", "redis")

#: What an entry costs beyond its tensors' bytes: the Python objects that hold it (key, dictionary slot, entry,
#: list, parameters; per output its Tensor and array objects; per BYTES element its bytes object and pointer),
#: measured with tracemalloc (CPython 3.11: 555 bytes for one 16-byte output), so that ``size`` bounds the memory
#: the cache holds, not only its tensors' bytes.
ENTRY_OVERHEAD = 320
OUTPUT_OVERHEAD = 224
BYTES_ELEMENT_OVERHEAD = 48
#: Triton's local cache refuses a size below what its buffer's own bookkeeping takes (measured: 192 bytes).
LOCAL_MIN_SIZE = 192

_FORMAT = "--cache-config option format is '<cache name>,<setting>=<value>'. Got {}"
_NO_CACHE = "No cache specified. --cache-config option format is <cache name>,<setting>=<value>. Got {}"


def parse_cache_flags(items: Sequence[str]) -> dict[str, dict[str, str]]:
    """``--cache-config <cache name>,<setting>=<value>`` items → {cache name: settings} (a later value of a
    setting wins); ``ValueError`` in Triton's words for an item that is not of that form."""
    config: dict[str, dict[str, str]] = {}
    for item in items:
        name, comma, setting = item.partition(",")
        if not comma or not name or "=" in name:
            raise ValueError(_NO_CACHE.format(item))
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise ValueError(_FORMAT.format(item))
        config.setdefault(name, {})[key] = value
    return config


def check_cache_config(config: dict[str, dict[str, str]]) -> None:
    """Refuse what Triton refuses when it creates the cache (``InvalidArgumentError``/``InternalError`` in
    its words), without connecting to anything."""
    if len(config) > 1:
        raise InvalidArgumentError("found multiple cache configurations, but only a single cache is currently "
                                   "supported")
    for name, settings in config.items():
        if name == "local":
            local_size(settings)
        elif name == "redis":
            from .cache_redis import RedisSettings

            RedisSettings.parse(settings)
        else:
            raise InvalidArgumentError(f"unable to find 'libtritoncache_{name}.so' for cache. tritium's caches are "
                                       f"built in: {', '.join(CACHE_NAMES)}")


_STOULL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]+)")


def local_size(settings: dict[str, str]) -> int:
    """The local cache's ``size`` read as Triton reads it (C++ ``std::stoull``: blanks, a sign, digits, the
    rest ignored; a negative number wraps), refused in Triton's words where Triton cannot make the cache."""
    text = settings.get("size")
    if text is None:
        raise InternalError("Failed to initialize LocalCache: the local cache needs a 'size' setting in bytes, e.g. "
                            "--cache-config=local,size=1048576")
    match = _STOULL.match(text)
    if match is None or int(match.group(2)) >= 2**64:
        raise InternalError("Failed to initialize LocalCache: stoull")
    size = int(match.group(2)) * (-1 if match.group(1) == "-" else 1) % 2**64
    if size < LOCAL_MIN_SIZE:
        raise InternalError("Failed to initialize LocalCache: Could not initialize buffer in "
                            "basic_managed_external_buffer constructor")
    if size > _physical_memory():
        # Triton allocates the whole buffer at start; tritium only bounds what it holds, but a size beyond this
        # machine's memory is a mistake either way.
        raise InternalError("Failed to initialize LocalCache: failed to allocate buffer")
    return size


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound
        return 2**64


# -- the key ------------------------------------------------------------------------------------------------

def cache_key(request: InferenceRequest, model_name: str, model_version: int) -> bytes:
    """The digest that identifies ``request``'s answer (after validation, which leaves the model's inputs and
    takes the scheduling parameters ``priority`` and ``timeout`` out).

    The inputs' bytes are hashed in name order, then one description of everything else (names with their
    lengths, data types, shapes, requested outputs, classification, parameters): each input's bytes have a
    length its shape and data type fix (BYTES elements carry their own), so the whole is unambiguous."""
    h = hashlib.blake2b(digest_size=32)
    inputs = request.inputs
    if len(inputs) > 1:
        inputs = sorted(inputs, key=_name)
    head = [f"{len(model_name)}:{model_name}:{model_version}:{len(inputs)}"]
    for tensor in inputs:
        data = tensor.data
        if tensor.datatype is DataType.BYTES:
            h.update(serialize_bytes_tensor(data))
        else:  # the array's own bytes, not copied (any element type, BF16 included)
            try:  # an ndarray is a buffer (numpy's stubs do not say so); ``.data`` would refuse BF16's dtype
                h.update(data)  # type: ignore[arg-type]
            except (ValueError, BufferError):  # not C-contiguous (a view): hashed as the copy the model sees
                h.update(np.ascontiguousarray(data).reshape(-1).view(np.uint8).data)
        head.append(f"{len(tensor.name)}:{tensor.name}:{tensor.datatype.wire_name}:{data.shape}")
    wanted = request.requested_outputs
    if wanted is not None:
        names = sorted(set(wanted))
        head.append(f"outputs:{len(names)}")
        head.extend(f"{len(n)}:{n}" for n in names)
    if request.classification:
        head.append(f"classification:{sorted(request.classification.items())!r}")
    if request.parameters:
        head.append(f"parameters:{sorted(request.parameters.items())!r}")
    h.update("|".join(head).encode("utf-8", "surrogatepass"))
    return h.digest()


def _name(tensor: Tensor) -> str:
    return tensor.name


# -- entries ------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class CachedResponse:
    """A stored answer: its outputs (owned, read-only arrays) and response parameters."""

    outputs: list[Tensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    byte_size: int = 0

    def response(self, request: InferenceRequest, model_name: str, model_version: int) -> InferenceResponse:
        """The answer to ``request`` (its id; the stored tensors, shared: nothing writes into them)."""
        return InferenceResponse(model_name, model_version, request.id, list(self.outputs), dict(self.parameters))


def tensor_byte_size(tensor: Tensor) -> int:
    data = tensor.data
    if tensor.datatype is DataType.BYTES:
        return sum(len(x) if isinstance(x, (bytes, bytearray)) else len(str(x).encode()) for x in data.flat) + \
            BYTES_ELEMENT_OVERHEAD * data.size
    return int(data.nbytes)


def entry_size(response: InferenceResponse) -> int:
    """What an entry for ``response`` costs a size-bounded cache."""
    return ENTRY_OVERHEAD + sum(OUTPUT_OVERHEAD + len(t.name) + 8 * t.data.ndim + tensor_byte_size(t)
                                for t in response.outputs)


def freeze(response: InferenceResponse, byte_size: int) -> CachedResponse:
    """A copy of ``response``'s outputs that the cache owns: backends may hand out views of memory they reuse
    (the Python backend's arenas), which a stored entry must not keep."""
    outputs = []
    for tensor in response.outputs:
        data = np.array(tensor.data, copy=True, order="C")
        data.flags.writeable = False
        outputs.append(Tensor(tensor.name, tensor.datatype, data))
    return CachedResponse(outputs, dict(response.parameters), byte_size)


# -- caches -------------------------------------------------------------------------------------------------

@dataclass(slots=True)
class CacheCounters:
    """The cache-wide figures behind Triton's ``nv_cache_*`` gauges (lookups of every model together)."""

    hits: int = 0
    misses: int = 0
    lookups: int = 0
    evictions: int = 0
    lookup_ns: int = 0
    insertion_ns: int = 0


class ResponseCache(Protocol):
    """What :class:`~tritium.core.model.Model` asks of a cache (one per server, on the event loop)."""

    name: str
    counters: CacheCounters
    #: Whether other servers read its entries (Redis): keys then name the model by name and version only, as
    #: Triton's do; a cache of this process keys each load of a model apart, so a reload never answers with
    #: what the model it replaced computed.
    shared: bool

    async def lookup(self, key: bytes) -> CachedResponse | None:
        """The entry stored under ``key``, or ``None`` (a cache that cannot answer logs why and misses)."""

    async def insert(self, key: bytes, response: InferenceResponse) -> None:
        """Store ``response`` under ``key`` when it fits (a cache that cannot store it logs why)."""

    def usage(self) -> tuple[int, float] | None:
        """(entries, utilization 0..1), or ``None`` where the cache cannot tell (Redis)."""

    async def close(self) -> None:
        """Release connections; the server is stopping."""


class LocalCache:
    """Entries in this process, at most ``size`` bytes in all, least recently used evicted first."""

    name = "local"
    shared = False

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self.counters = CacheCounters()
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()

    async def lookup(self, key: bytes) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    async def insert(self, key: bytes, response: InferenceResponse) -> None:
        size = entry_size(response)  # before copying anything: an entry too big is never copied
        if size > self.size:
            log.error("Failed to insert key [%s] into response cache: Requested byte_size: %d is greater than "
                      "total cache size: %d", key.hex(), size, self.size)
            return
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.used -= old.byte_size
        while self.used + size > self.size:
            _, evicted = entries.popitem(last=False)
            self.used -= evicted.byte_size
            self.counters.evictions += 1
        entries[key] = freeze(response, size)
        self.used += size

    def usage(self) -> tuple[int, float] | None:
        return len(self._entries), self.used / self.size

    async def close(self) -> None:
        self._entries.clear()
        self.used = 0


async def open_cache(config: dict[str, dict[str, str]]) -> ResponseCache | None:
    """The server's cache from ``--cache-config`` (``None`` without one), checked and, for Redis, connected:
    Triton refuses to start when it cannot reach its Redis."""
    if not config:
        return None
    check_cache_config(config)
    [(name, settings)] = config.items()
    if name == "local":
        size = local_size(settings)
        log.info("response cache: local, %d bytes", size)
        return LocalCache(size)
    from .cache_redis import RedisCache, RedisSettings

    cache = RedisCache(RedisSettings.parse(settings))
    await cache.connect()
    return cache


__all__ = [
    "CACHE_NAMES",
    "CacheCounters",
    "CachedResponse",
    "LocalCache",
    "ResponseCache",
    "cache_key",
    "check_cache_config",
    "entry_size",
    "freeze",
    "local_size",
    "open_cache",
    "parse_cache_flags",
]
