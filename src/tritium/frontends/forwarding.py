"""Header forwarding (``--http-header-forward-pattern``, ``--grpc-header-forward-pattern``), as Triton does it.

Every request header (HTTP) or metadata entry (gRPC) whose name the pattern finds anywhere in it
(case-insensitive: Triton prefixes the pattern with ``(?i)``) becomes a string request parameter named as the
client wrote it (HTTP keeps the case; gRPC keys arrive lower-cased), after the parameters of the request body,
in the order received, a repeated header once per occurrence (the model reads the last one, as from Triton's
parameter list).  Triton 2.51 forwards whatever matches, reserved names included (``priority`` as a header is a
plain string parameter, never the request's priority), so this does too.  Only inference requests carry them
(not generate), as in Triton.  With no pattern nothing of this runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def forward_pattern(pattern: str) -> re.Pattern[str] | None:
    """The compiled pattern, or ``None`` when forwarding is off (an empty pattern)."""
    return re.compile(pattern, re.IGNORECASE) if pattern else None


def _text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode("utf-8", errors="replace")


def forward_headers(pattern: re.Pattern[str], headers: Iterable[tuple[str | bytes, str | bytes]],
                    parameters: dict[str, Any]) -> None:
    """Add the headers whose names ``pattern`` finds to ``parameters`` (later ones replace earlier ones)."""
    search = pattern.search
    for name, value in headers:
        key = _text(name)
        if search(key) is not None:
            parameters[key] = _text(value)
