"""How many connections each endpoint may hold, derived from the process's descriptor limit.

Every connection costs a file descriptor, and so does everything else the server does: model processes
(pipes, sockets), pooled shared-memory blocks (``core.shared_memory``: up to 256), log and trace files,
model files being read.  If clients could take every descriptor, ``accept`` would fail with EMFILE and a
model could no longer load.  So each endpoint gets a share of the soft ``RLIMIT_NOFILE`` and a reserve
stays free for the rest: HTTP half of what is left after the reserve, gRPC a quarter, metrics a few.
"""

from __future__ import annotations

import resource

#: Descriptors always kept back for the rest of the server (shared-memory blocks, model processes, files).
MIN_RESERVE = 384
#: Connections the metrics endpoint holds at most (a scraper needs one; more only serves an attacker).
METRICS_MAX_CONNECTIONS = 32


#: How far :func:`raise_descriptor_limit` raises the soft limit (model processes inherit it, and some
#: libraries still loop over every possible descriptor).
RAISE_TO = 65536


def raise_descriptor_limit() -> int:
    """Raise the soft descriptor limit towards the hard one, up to :data:`RAISE_TO` (as Go's runtime and
    many servers do: the soft default of 1,024 dates from ``select``; tritium uses epoll).  Returns the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = RAISE_TO if hard == resource.RLIM_INFINITY else min(hard, RAISE_TO)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return descriptor_limit()


def descriptor_limit() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def reserve(limit: int) -> int:
    """Descriptors kept back from connections: an eighth of the limit, at least :data:`MIN_RESERVE`."""
    return max(MIN_RESERVE, limit // 8)


def default_http_connections(limit: int | None = None) -> int:
    """``--http-max-connections`` when not given: half of what the reserve leaves (at least 16)."""
    limit = descriptor_limit() if limit is None else limit
    return max(16, (limit - reserve(limit) - METRICS_MAX_CONNECTIONS) // 2)


def default_grpc_connections(limit: int | None = None) -> int:
    """``--grpc-max-connections`` when not given: a quarter of what the reserve leaves (at least 16)."""
    limit = descriptor_limit() if limit is None else limit
    return max(16, (limit - reserve(limit) - METRICS_MAX_CONNECTIONS) // 4)
