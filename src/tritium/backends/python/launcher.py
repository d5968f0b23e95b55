"""Starting, stopping and restarting a stub process: its sockets, environment and start message.

Three socket pairs per stub: *control* (strictly request/reply: start, execute, finalize), *events* (what may
come at any time: decoupled responses, BLS calls, metrics, logs) and *hand-off* (the file descriptors of
shared-memory blocks of request bodies, ``core.shared_memory``, that inputs lie in).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
from typing import Any

from google.protobuf import json_format

from tritium._proto import model_config_pb2 as mc
from tritium.config.parse import config_to_dict
from tritium.core import shared_memory
from tritium.core.errors import InternalError, ModelConfigError, UnavailableError

from ..base import InstanceSpec, ModelContext
from . import protocol
from .environments import activated
from .protocol import Arena, Channel
from .settings import Settings

#: The directory holding the ``tritium`` package, put on the stub's PYTHONPATH (any interpreter finds it).
_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
#: Socket buffers of the event channel, which carries the tensors of decoupled responses and BLS calls.
_EVENT_BUFFER_BYTES = 4 << 20


def run_auto_complete(python: str, ctx: ModelContext) -> None:
    """Run the model's static ``auto_complete_config`` in a throw-away stub, as Triton does."""
    path = ctx.model_path
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            if "auto_complete_config" not in f.read():
                return  # nothing to run: spare a process start
    except OSError:
        return  # model_initialize reports the missing file
    config = ctx.config
    control, events, handoff, popen = spawn(python)
    handoff.close()
    try:
        control.send({"mode": "autocomplete", "model_file": path, "version_dir": ctx.import_dir,
                      "config": json.dumps(config_to_dict(config))})
        _, ok, payload = recv_or_exit(control, popen, f"auto-complete of model '{ctx.name}'")
    finally:
        control.close()
        events.close()
        reap(popen, 10.0)
    if not ok:
        raise InternalError(payload)  # the model's own exception, as Triton reports it
    _merge_auto_complete(config, payload, ctx.name)


def start_message(ctx: ModelContext, spec: InstanceSpec, settings: Settings, decoupled: bool, config_json: str,
                  in_arena: Arena, out_arena: Arena) -> dict[str, Any]:
    """What a model's stub is started with (its answer is a ``messages.Started``)."""
    return {
        "mode": "model",
        "model_file": ctx.model_path,
        "version_dir": ctx.import_dir,
        "decoupled": decoupled,
        "in_arena": (0, in_arena.path, in_arena.size),
        "out_arena": (out_arena.path, out_arena.size),
        "growth": settings.shm_growth,
        "shm_default": settings.shm_default,
        "shm_prefix": settings.shm_prefix,
        "spin_s": settings.stub_spin_us / 1e6,
        "nap_s": settings.stub_nap_us / 1e6,
        "args": {
            "model_config": config_json,
            "model_instance_kind": spec.kind.removeprefix("KIND_"),
            "model_instance_name": spec.name,
            "model_instance_device_id": str(spec.device_id),
            "model_repository": ctx.model_dir,
            "model_version": str(ctx.version),
            "model_name": ctx.name,
        },
    }


def _merge_auto_complete(config: mc.ModelConfig, result: dict, name: str) -> None:
    """Take what auto-complete may change: batching, inputs, outputs, transaction policy."""
    try:
        config.max_batch_size = int(result.get("max_batch_size", config.max_batch_size))
        for field in ("input", "output"):
            tensors = result.get(field, [])
            del getattr(config, field)[:]
            for tensor in tensors:
                json_format.ParseDict(tensor, getattr(config, field).add(), ignore_unknown_fields=True)
        if "dynamic_batching" in result and not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()
            json_format.ParseDict(result["dynamic_batching"], config.dynamic_batching, ignore_unknown_fields=True)
        if "model_transaction_policy" in result:
            config.model_transaction_policy.SetInParent()
            json_format.ParseDict(result["model_transaction_policy"], config.model_transaction_policy,
                                  ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as e:
        raise ModelConfigError(f"auto-complete of model '{name}' returned an invalid configuration: {e}") from None


def spawn(python: str) -> tuple[Channel, Channel, socket.socket, subprocess.Popen[bytes]]:
    """Start a stub; returns the server's ends of its control, event and hand-off sockets (the last passes
    the file descriptors of shared-memory blocks, ``core.shared_memory``, that inputs lie in)."""
    control_here, control_there = socket.socketpair()
    events_here, events_there = socket.socketpair()
    handoff_here, handoff_there = socket.socketpair()
    for sock in (events_here, events_there):
        # Tensors of decoupled responses and BLS calls cross here: room for a few MiB in flight spares the
        # sender waiting on the reader every 200 KiB (the kernel caps it at net.core.wmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _EVENT_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _EVENT_BUFFER_BYTES)
    env = activated(dict(os.environ), python)
    env["PYTHONPATH"] = _SRC_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    fds = (control_there.fileno(), events_there.fileno(), handoff_there.fileno())
    try:
        popen = subprocess.Popen(
            [python, "-m", "tritium.backends.python.stub", *map(str, fds)],
            pass_fds=fds, stdin=subprocess.DEVNULL, env=env,
            # its own session: a signal to the server's process group (Ctrl-C, `timeout`, a runtime signalling
            # the group) reaches the server only, which then finalizes its models; the stub still ends with the
            # server, at EOF on its sockets, even if the server is killed
            start_new_session=True,
        )
    finally:
        control_there.close()
        events_there.close()
        handoff_there.close()
    # big messages from the stub (BLS tensors) are received into shared memory: a Python model they go to
    # reads them there
    return Channel(control_here), Channel(events_here, shared_memory.take), handoff_here, popen


def recv_or_exit(control: Channel, popen: subprocess.Popen[bytes], what: str) -> Any:
    try:
        return control.recv()
    except (EOFError, OSError):
        code = reap(popen, 5.0)
        raise UnavailableError(f"{what}: the stub process exited ({exit_text(code)})") from None


def reap(popen: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return popen.wait(timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        return popen.wait()


def exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class StubProcess:
    """One running stub process and what the server holds for it."""

    def __init__(self, control: Channel, events: Channel, handoff: socket.socket, popen: subprocess.Popen[bytes],
                 in_arena: Arena, out_arena: Arena, replies: protocol.BlsArena) -> None:
        self.control = control
        self.events = events
        self.handoff = handoff
        #: Shared-memory blocks (``core.shared_memory``) whose file descriptors this stub has been handed.
        self.blocks: set[int] = set()
        #: When the execution in flight was sent, and a moving average of how long replies take (s).
        self.sent_at = 0.0
        self.reply_s = 0.0
        self.popen = popen
        #: Input arenas by number; one is free when no response array views it any more.
        self.arenas = [in_arena]
        self.out_arena = out_arena
        self.send_lock = threading.Lock()
        self.stopping = False
        #: The event loop whose reader watches ``control`` (registered by the first execute_async); while
        #: it is set, only that reader may close ``control`` (an fd closed under a registered reader
        #: could be reused by the next stub's socket).
        self.watched_by: asyncio.AbstractEventLoop | None = None
        #: What the reader completes with the next reply: (requests, state, done) of the execution in flight.
        self.pending: tuple | None = None
        #: BLS calls in progress by id, so model code can cancel them (``ResponseIterator.cancel``).
        self.bls_calls: dict[int, Any] = {}
        #: Where the big tensors of BLS responses go to this stub.
        self.replies = replies
        #: The stub's arena of big BLS input tensors, mapped when a call first names it (read in place).
        self.calls_arena: Arena | None = None

    def close_sockets(self) -> None:
        self.control.close()
        self.events.close()
        self.handoff.close()
        self.replies.close()

    def send_event(self, message: tuple) -> None:
        """A message on the event socket (``messages``: CANCEL, CALL_RESPONSE, BLS_RESPONSE)."""
        with self.send_lock:
            try:
                self.events.send(message)
            except OSError:
                pass  # the stub is gone; its death is reported elsewhere
