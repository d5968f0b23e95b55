"""BLS: a model's ``InferenceRequest.exec()`` / ``async_exec()``, run by the server on its event loop.

The stub sends a ``messages.BlsCall``; the call runs through ``ModelContext.inference`` (the server's own
inference path, so the called model is scheduled as any other request); each response goes back as a
``messages.BlsResponse``, its big tensors in the stub's reply arena (``protocol.BlsArena``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tritium.core.errors import TritiumError
from tritium.core.inference import InferenceRequest, InferenceResponse
from tritium.core.types import DataType, Tensor

from ..base import ModelContext
from . import protocol
from .launcher import StubProcess
from .messages import BlsCall, Kind
from .protocol import Arena

log = logging.getLogger(__name__)


def start(ctx: ModelContext, stub: StubProcess, message: tuple) -> None:
    """Start the call of a ``BlsCall`` on the server's loop; it can be cancelled by a ``BlsCancel``."""
    call_message = BlsCall._make(message)
    handle = ctx.inference
    ident = call_message.ident
    arena = call_message.arena
    error = None
    if arena is not None:  # the stub's arena of call inputs, new or grown: mapped before the call is read
        try:
            stub.calls_arena = Arena.attach(*arena, unlink=True)
        except OSError as e:
            protocol.unlink_quietly(arena[0])
            error = ("INTERNAL", f"the BLS request's inputs could not be read: {e}")
    if handle is None:
        error = ("UNAVAILABLE", "BLS is not available in this server")
    if error is not None or handle is None:
        stub.send_event((Kind.BLS_RESPONSE, ident, [], [], error, True, False, None))
        return
    call = asyncio.run_coroutine_threadsafe(_run(handle, stub, stub.calls_arena, call_message), handle.loop)
    stub.bls_calls[ident] = call
    call.add_done_callback(lambda _: stub.bls_calls.pop(ident, None))
    if call.done():  # finished before it was recorded
        stub.bls_calls.pop(ident, None)


async def _run(handle: Any, stub: StubProcess, calls_arena: Arena | None, call: BlsCall) -> None:
    ident = call.ident

    def reply(response: InferenceResponse | None, final: bool, error: tuple[str, str] | None = None) -> None:
        metas, data, arena = stub.replies.carry([(t.name, t.data) for t in response.outputs]) if response \
            else ([], [], None)
        stub.send_event((Kind.BLS_RESPONSE, ident, metas, data, error, final, response is not None, arena))

    try:
        # Inputs in the stub's arena are read in place: the stub keeps their region until the final response.
        # (A callee still running after a timeout or cancellation may then read them overwritten; its result
        # goes nowhere, and the mapping stays valid while any view of it lives.)
        inputs = [Tensor(n, DataType.from_wire(k), a)
                  for n, k, a in protocol.read_tensors(call.tensors, call.data, calls_arena)]
        params = dict(call.parameters)
        if call.correlation_id:
            params.setdefault("sequence_id", call.correlation_id)
        if call.timeout_us and call.timeout_us > 0:
            # As in Triton, the request's own timeout: the called model's queue policy may apply it
            # while the request waits there (allow_timeout_override); it is not a deadline on the call.
            params["timeout"] = call.timeout_us
        request = InferenceRequest(call.model, call.version, call.request_id, inputs, call.requested, params)
        if call.decoupled:
            async for item in handle.stream(request):
                if item.error is not None:
                    reply(None, item.final, (item.error.status.value, item.error.message))
                    if item.final:
                        return
                    continue
                reply(item.response, item.final)
            return
        response = await handle.infer(request)
        reply(response, True)
    except asyncio.CancelledError:  # the caller cancelled it: its iteration ends here
        reply(None, True)
        raise
    except TritiumError as e:
        reply(None, True, (e.status.value, e.message))
    except Exception as e:
        log.exception("BLS call to model '%s' failed", call.model)
        reply(None, True, ("INTERNAL", f"{type(e).__name__}: {e}"))
