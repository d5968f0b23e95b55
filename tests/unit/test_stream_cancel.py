"""ResponseStream: a consumer leaving early is a cancellation; an error that is not final keeps the stream."""

from __future__ import annotations

import asyncio

from tritium.core.errors import InvalidArgumentError
from tritium.core.streaming import ResponseStream


def test_consumer_cancelled_before_final_calls_back_once() -> None:
    async def main() -> list[str]:
        stream = ResponseStream(asyncio.get_running_loop())
        seen: list[str] = []
        stream.on_cancel(lambda: seen.append("cancelled"))

        async def consume() -> None:
            async for _ in stream.items():
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert stream.cancelled
        return seen

    assert asyncio.run(main()) == ["cancelled"]


def test_finished_stream_is_not_cancelled_and_non_final_error_keeps_it_open() -> None:
    async def main() -> tuple[list, bool, list[str]]:
        stream = ResponseStream(asyncio.get_running_loop())
        seen: list[str] = []
        stream.on_cancel(lambda: seen.append("cancelled"))
        stream.fail(InvalidArgumentError("boom"), final=False)
        stream.send(None, final=True)
        items = [(item.error is not None, item.final) async for item in stream.items()]
        return items, stream.cancelled, seen

    assert asyncio.run(main()) == ([(True, False), (False, True)], False, [])
