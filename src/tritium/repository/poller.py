"""``--model-control-mode=poll``: rescan the repositories every ``--repository-poll-secs``.

Models added or changed (config, version folders, any file) are (re)loaded —
the manager swaps a changed model in only once the new one is ready — and
models removed from the repositories are unloaded.  A change is acted on once:
a model whose reload failed is tried again when its files change again.
"""

from __future__ import annotations

import asyncio
import logging

from tritium.core.errors import TritiumError

from .manager import ModelRepositoryManager

log = logging.getLogger(__name__)


class RepositoryPoller:
    def __init__(self, manager: ModelRepositoryManager, interval: float) -> None:
        self._manager = manager
        self._interval = interval
        #: Model name -> fingerprint of its folder at the last poll.
        self._seen: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def prime(self) -> None:
        """Record the repositories as they are now (before the start-up load), so later edits are seen."""
        found = await self._manager.scan_async([])
        self._seen = await asyncio.get_running_loop().run_in_executor(None, self._manager.fingerprints, found)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll()
            except TritiumError as e:  # e.g. a repository folder went away: keep serving what is loaded
                log.error("failed to poll the model repository: %s", e)
            except Exception:
                log.exception("failed to poll the model repository")

    async def poll(self) -> None:
        """One rescan: load what is new or changed, unload what is gone."""
        manager = self._manager
        failures: list[TritiumError] = []
        found = await manager.scan_async(failures)
        prints = await asyncio.get_running_loop().run_in_executor(None, manager.fingerprints, found)
        changed = sorted(name for name, fp in prints.items() if self._seen.get(name) != fp)
        removed = sorted(name for name in self._seen if name not in prints)
        if failures:
            # a repository that cannot be read now (network, credentials) has not lost its models: they keep
            # serving, and are compared again at the next poll
            prints.update({name: self._seen[name] for name in removed})
            removed = []
        self._seen = prints
        for name in removed:
            log.info("model '%s' was removed from the repository; unloading it", name)
            await manager.unload(name)
        if changed:
            log.info("polling found new or changed models: %s", ", ".join(changed))
        results = await asyncio.gather(*(manager.load(name, found) for name in changed), return_exceptions=True)
        for name, result in zip(changed, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, TritiumError):
                log.error("failed to load '%s': %r", name, result)
