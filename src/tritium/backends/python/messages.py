"""Every message the server and a stub process exchange, by kind, with its fields named.

A message is the plain tuple of one of the :class:`~typing.NamedTuple` types below (first field its
:class:`Kind`); a receiver unpacks it in that field order, or names its fields with ``Type._make(message)``
where the rate is low.  Plain tuples and plain ints, not the NamedTuples or an ``IntEnum``, go on the wire
because pickle handles only exact tuples and ints in C: a NamedTuple or an enum member goes through a
Python ``__reduce__`` on each side (see ARCHITECTURE.md's decisions).  Upstream's counterpart is
``ipc_message.h``'s ``PYTHONSTUB_CommandType``.

Standard library only: a stub may run under another interpreter (``EXECUTION_ENV_PATH``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple


class Kind:
    """What a message is.  Plain ints, so that they pickle in C (an enum member would not)."""

    # control socket, server -> stub (strictly request/reply)
    EXECUTE: Final = 1
    FINALIZE: Final = 2
    # control socket, stub -> server
    STARTED: Final = 3
    EXECUTED: Final = 4
    FINALIZED: Final = 5
    # event socket, stub -> server
    RESPONSE: Final = 10
    BLS_CALL: Final = 11
    BLS_FREE: Final = 12
    BLS_CANCEL: Final = 13
    CALL: Final = 14
    METRIC_UPDATE: Final = 15
    METRIC_FAMILY_DELETE: Final = 16
    LOG: Final = 17
    # event socket, server -> stub
    CANCEL: Final = 20
    CALL_RESPONSE: Final = 21
    BLS_RESPONSE: Final = 22


#: Kind number -> name, for log lines about a message.
KIND_NAMES: Final = {value: name for name, value in vars(Kind).items() if name.isupper()}


class Location:
    """Where the bytes of a tensor of an execute lie (:class:`TensorMeta`)."""

    #: The stub's output arena (the server copies the output out of it: it is reused by the next execute).
    OUT_ARENA: Final = 0
    #: The execute's input arena (an input; or an output written after the inputs, viewed in place).
    IN_ARENA: Final = 1
    #: A shared-memory block of the server's request bodies, :attr:`TensorMeta.block` (viewed in place).
    BLOCK: Final = 2


class TensorMeta(NamedTuple):
    """An input or output of an execute; its bytes lie at ``offset`` in the memory that ``location`` names."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    location: int
    #: The block's number when ``location`` is :attr:`Location.BLOCK`, else -1.
    block: int


class ExecuteRequest(NamedTuple):
    """One request of an :class:`Execute`."""

    #: The server's key for the request (decoupled responses and cancellation name it).
    key: int
    request_id: str
    correlation_id: Any
    #: Triton's sequence flags: 1 start, 2 end.
    flags: int
    parameters: dict[str, Any]
    requested: list[str]
    inputs: list[TensorMeta]


class Execute(NamedTuple):
    """Run a batch whose inputs lie in input arena ``arena`` (its first ``used`` bytes) or in shared blocks."""

    kind: int  # Kind.EXECUTE
    arena: int
    #: ``(path, size)`` when ``arena`` is new or grown: the stub maps it first.
    new_arena: tuple[str, int] | None
    used: int
    #: ``(block, size)`` of blocks whose file descriptors precede this message on the hand-off socket.
    blocks: list[tuple[int, int]] | None
    batch: list[ExecuteRequest]


class Outcome:
    """How one request of an execute ended (first item of its result tuple)."""

    #: ``(OK, [TensorMeta, ...])``
    OK: Final = 0
    #: ``(ERROR, status name, message)``
    ERROR: Final = 1
    #: ``(RESCHEDULED,)``: the model released it with ``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``.
    RESCHEDULED: Final = 2


class Executed(NamedTuple):
    """The reply to an :class:`Execute`."""

    kind: int  # Kind.EXECUTED
    #: ``(path, size)`` of a new, bigger output arena (the server maps it and unlinks the name).
    new_out_arena: tuple[str, int] | None
    #: One outcome tuple per request (:class:`Outcome`), or None with ``error``.
    results: list[tuple] | None
    #: The whole batch failed: the model's exception, as Triton words it.
    error: str | None


class Finalize(NamedTuple):
    kind: int  # Kind.FINALIZE


class Finalized(NamedTuple):
    kind: int  # Kind.FINALIZED
    error: str | None


class Started(NamedTuple):
    """The stub's answer to its start message (a dict: see ``launcher``): the model's own exception if it
    failed, or the auto-completed configuration."""

    kind: int  # Kind.STARTED
    ok: bool
    payload: Any


#: A BLS tensor: ``(name, datatype, shape, offset, nbytes)``; offset -1: its bytes are the next item of the
#: message's ``data``; else at that offset of the writer's ``protocol.BlsArena``.
BlsTensor = tuple[str, str, tuple[int, ...], int, int]


class Response(NamedTuple):
    """A response of a decoupled model's request (sent by ``response_sender``)."""

    kind: int  # Kind.RESPONSE
    key: int
    tensors: list[BlsTensor]
    data: list[Any]
    final: bool
    #: ``(status name, message)``
    error: tuple[str, str] | None
    has_response: bool


class BlsCall(NamedTuple):
    kind: int  # Kind.BLS_CALL
    ident: int
    model: str
    version: int
    request_id: str
    parameters: dict[str, Any]
    requested: list[str] | None
    tensors: list[BlsTensor]
    data: list[Any]
    decoupled: bool
    timeout_us: int
    correlation_id: Any
    flags: int
    #: ``(path, size)`` of the stub's new call arena, mapped before the tensors are read.
    arena: tuple[str, int] | None


class BlsResponse(NamedTuple):
    kind: int  # Kind.BLS_RESPONSE
    ident: int
    tensors: list[BlsTensor]
    data: list[Any]
    error: tuple[str, str] | None
    final: bool
    has_response: bool
    #: ``(path, size)`` of the server's new reply arena for this stub.
    arena: tuple[str, int] | None


class BlsFree(NamedTuple):
    """The stub is done with these regions of the server's reply arena."""

    kind: int  # Kind.BLS_FREE
    starts: list[int]


class BlsCancel(NamedTuple):
    kind: int  # Kind.BLS_CANCEL
    ident: int


class Cancel(NamedTuple):
    """The client of request ``key`` went away (``is_cancelled``)."""

    kind: int  # Kind.CANCEL
    key: int


class Op:
    """What a :class:`Call` asks the server."""

    METRIC_FAMILY: Final = "metric_family"
    METRIC: Final = "metric"
    METRIC_VALUE: Final = "metric_value"
    IS_MODEL_READY: Final = "is_model_ready"
    LOAD_MODEL: Final = "load_model"
    UNLOAD_MODEL: Final = "unload_model"


class Call(NamedTuple):
    """A call from model code that waits for its :class:`CallResponse`."""

    kind: int  # Kind.CALL
    ident: int
    op: str
    args: tuple[Any, ...]


class CallResponse(NamedTuple):
    kind: int  # Kind.CALL_RESPONSE
    ident: int
    error: str | None
    result: Any


class MetricUpdate(NamedTuple):
    kind: int  # Kind.METRIC_UPDATE
    family: str
    key: Any
    op: str
    value: float


class MetricFamilyDelete(NamedTuple):
    kind: int  # Kind.METRIC_FAMILY_DELETE
    family: str


class Log(NamedTuple):
    kind: int  # Kind.LOG
    #: 0 info, 1 warning, 2 error, 3 verbose (``pb_utils.Logger``'s order).
    level: int
    text: str
