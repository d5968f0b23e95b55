"""Composition: a :class:`~tritium.server.Server` with the frontends its options ask for, in a tuned process.

The command line (:mod:`tritium.cli`) only parses flags and calls :func:`run`; code that embeds
tritium calls the same :func:`run`, or drives :class:`App` on its own event loop, and gets the
same server: descriptor limit, garbage-collector and GIL settings, event loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Protocol

from tritium.api import InferenceAPI
from tritium.core.errors import TritiumError
from tritium.frontends.busy_poll import BUSY_POLL
from tritium.frontends.limits import raise_descriptor_limit
from tritium.logsettings import LogManager
from tritium.options import ServerOptions
from tritium.server import Server, StartupError

log = logging.getLogger(__name__)

#: Allocations between young-generation collections (CPython's default is 700): request objects are
#: freed by reference counting, so the collector mostly finds nothing and only costs latency.
GC_THRESHOLD = 20_000


class Frontend(Protocol):
    """A protocol endpoint (HTTP, gRPC, metrics) the app starts and stops."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_frontends(api: InferenceAPI, options: ServerOptions) -> list[Frontend]:
    """The endpoints ``options`` turn on (each imported only when used)."""
    frontends: list[Frontend] = []
    if options.allow_http:
        from tritium.frontends.http.listener import HttpFrontend

        frontends.append(HttpFrontend(api, options))
    if options.allow_grpc:
        from tritium.frontends.grpc.listener import GrpcFrontend

        frontends.append(GrpcFrontend(api, options))
    if options.allow_metrics:
        from tritium.frontends.metrics import MetricsFrontend

        frontends.append(MetricsFrontend(api, options))
    return frontends


def tune_process(options: ServerOptions) -> None:
    """What start-up made (modules, configs, sessions) lives as long as the server: keep it out of the
    collector's scans and collect young objects less often, so pauses stay off request latency; and let
    a waiting thread (an instance worker) take the GIL from the event loop sooner than CPython's 5 ms; and
    let the loop poll a while after each answer (``frontends/busy_poll.py``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    sys.setswitchinterval(options.switch_interval_us / 1e6)
    BUSY_POLL.configure(options.busy_poll_us)


class App:
    """A server and its endpoints: start (models, then listeners), serve, stop (listeners, then models)."""

    def __init__(self, options: ServerOptions, logs: LogManager | None = None,
                 frontends: Callable[[InferenceAPI, ServerOptions], list[Frontend]] = make_frontends,
                 tune: bool = True) -> None:
        self.options = options
        self.server = Server(options, logs)
        self._make_frontends = frontends
        self._tune = tune  # False when embedded in a program that is not only this server
        self.frontends: list[Frontend] = []
        self._stopping: asyncio.Event | None = None

    async def start(self) -> None:
        """Raises :class:`StartupError` (a model failed with ``--exit-on-error``), :class:`TritiumError`
        or :class:`OSError` (e.g. a port is taken); call :meth:`stop` after a failed start."""
        self._stopping = asyncio.Event()
        raise_descriptor_limit()  # before model processes are started: they inherit it
        await self.server.start()
        for frontend in self._make_frontends(self.server, self.options):
            await frontend.start()
            self.frontends.append(frontend)
        self.server.open()
        if self._tune:
            tune_process(self.options)

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM (or :meth:`request_stop`), then shut down gracefully."""
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        log.info("signal received, shutting down")
        await self.stop()

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def stop(self) -> None:
        """Stop accepting requests, let in-flight ones finish (bounded), unload models."""
        await self.close_frontends()
        await self.server.stop()

    async def close_frontends(self) -> None:
        """Stop reporting ready, then close every endpoint (each bounded by the exit timeout)."""
        await self.server.quiesce()
        for frontend in reversed(self.frontends):
            try:
                await asyncio.wait_for(frontend.stop(), timeout=self.options.exit_timeout_secs)
            except (asyncio.TimeoutError, Exception):
                log.exception("frontend failed to stop cleanly")
        self.frontends.clear()


async def serve(options: ServerOptions, logs: LogManager | None = None) -> int:
    """Start, serve until a signal, stop; 1 when the server could not start (the reason is logged)."""
    app = App(options, logs)
    try:
        await app.start()
    except (StartupError, TritiumError) as e:  # e.g. a model failed, or a repository cannot be read
        logging.getLogger("tritium").error("%s", e)
        await app.stop()
        return 1
    except OSError as e:  # e.g. the port is taken
        logging.getLogger("tritium").error("failed to start: %s", e)
        await app.stop()
        return 1
    await app.serve_forever()
    return 0


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``--event-loop``: uvloop (``auto``: when installed) or asyncio's own (``None``)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("tritium: --event-loop=uvloop needs the uvloop package") from None
        return None
    return uvloop.new_event_loop


def run(options: ServerOptions, logs: LogManager | None = None) -> int:
    """Serve ``options`` on a new event loop until a signal; the process exit status."""
    factory = event_loop_factory(options.event_loop)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(serve(options, logs))
    if factory is not None:  # Python 3.10: no loop factory, only a policy
        import uvloop

        uvloop.install()
    return asyncio.run(serve(options, logs))


__all__ = ["App", "Frontend", "make_frontends", "run", "serve", "tune_process"]
