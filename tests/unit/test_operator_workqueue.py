"""The controller's work queue and the client's rate limiter (asyncio, no cluster)."""

from __future__ import annotations

import asyncio
import time

from kubelearn_operator.workqueue import WorkQueue
from kubelearn_operator.kube import RateLimiter


def test_a_key_is_queued_once_and_requeued_when_dirty() -> None:
    async def scenario() -> list[tuple[str, str]]:
        queue = WorkQueue()
        key = ("ns", "a")
        queue.add(key)
        queue.add(key)
        assert len(queue) == 1
        got = await queue.get()
        queue.add(key)  # an event while it is being reconciled: once more afterwards
        assert len(queue) == 0
        queue.done(got)
        assert len(queue) == 1
        return [got, await queue.get()]

    assert asyncio.run(scenario()) == [("ns", "a"), ("ns", "a")]


def test_rate_limiter_holds_the_rate_after_the_burst() -> None:
    async def scenario() -> float:
        limiter = RateLimiter(qps=100, burst=10)
        start = time.monotonic()
        for _ in range(30):
            await limiter.acquire()
        return time.monotonic() - start

    elapsed = asyncio.run(scenario())
    assert 0.15 <= elapsed < 1.0  # 10 free, then 20 at 100/s
