"""The one error hierarchy of tritium.

Every failure that can reach a client is a :class:`TritiumError` carrying a
:class:`Status` (Triton's error codes).  Frontends map the status to an HTTP
or gRPC code once, at the edge; nothing below a frontend knows about wire
status codes.

    TritiumError
    ├── UnknownError           UNKNOWN         (HTTP 400, gRPC UNKNOWN)
    ├── InvalidArgumentError   INVALID_ARG     (HTTP 400, gRPC INVALID_ARGUMENT)
    ├── NotFoundError          NOT_FOUND       (HTTP 404, gRPC NOT_FOUND)
    ├── UnavailableError       UNAVAILABLE     (HTTP 503, gRPC UNAVAILABLE)
    ├── UnsupportedError       UNSUPPORTED     (HTTP 501, gRPC UNIMPLEMENTED)
    ├── AlreadyExistsError     ALREADY_EXISTS  (HTTP 400, gRPC ALREADY_EXISTS)
    ├── CancelledError         CANCELLED       (HTTP 400, gRPC CANCELLED)
    └── InternalError          INTERNAL        (HTTP 500, gRPC INTERNAL)
"""

from __future__ import annotations

import enum


class Status(enum.Enum):
    """Triton's error codes (``TRITONSERVER_Error_Code``)."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class TritiumError(Exception):
    """Base of every error a client may see; ``status`` decides the wire code."""

    status: Status = Status.UNKNOWN

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


#: How Triton spells each code in front of a message (``Status::AsString``), e.g. a failed load's reason.
STATUS_TEXT = {
    Status.UNKNOWN: "Unknown",
    Status.INTERNAL: "Internal",
    Status.NOT_FOUND: "Not found",
    Status.INVALID_ARG: "Invalid argument",
    Status.UNAVAILABLE: "Unavailable",
    Status.UNSUPPORTED: "Unsupported",
    Status.ALREADY_EXISTS: "Already exists",
    Status.CANCELLED: "Cancelled",
}


def status_text(error: BaseException) -> str:
    """``<code>: <message>`` as Triton writes an error; an exception that is not ours is Internal."""
    if isinstance(error, TritiumError):
        return f"{STATUS_TEXT[error.status]}: {error.message}"
    return f"Internal: {type(error).__name__}: {error}"


class UnknownError(TritiumError):
    status = Status.UNKNOWN


class InvalidArgumentError(TritiumError):
    status = Status.INVALID_ARG


class NotFoundError(TritiumError):
    status = Status.NOT_FOUND


class UnavailableError(TritiumError):
    status = Status.UNAVAILABLE


class UnsupportedError(TritiumError):
    status = Status.UNSUPPORTED


class AlreadyExistsError(TritiumError):
    status = Status.ALREADY_EXISTS


class CancelledError(TritiumError):
    status = Status.CANCELLED


class InternalError(TritiumError):
    status = Status.INTERNAL


def request_error(request_id: str, message: str, kind: type[TritiumError] = InvalidArgumentError) -> TritiumError:
    """An error about one request, prefixed with its id as Triton's core writes those it raises."""
    return kind(f"[request id: {request_id or '<id_unknown>'}] {message}")


class ModelConfigError(InvalidArgumentError):
    """A model's configuration is unusable; the message names model, file and field."""
