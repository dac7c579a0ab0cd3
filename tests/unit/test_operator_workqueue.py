"""The controller's work queue and the client's rate limiter (asyncio, no cluster)."""

from __future__ import annotations

import asyncio

from kubelearn_operator import workqueue
from kubelearn_operator.kube import RateLimiter
from kubelearn_operator.workqueue import WorkQueue, work


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


def test_a_failed_reconcile_is_retried_with_back_off_and_forgotten_on_success(
        monkeypatch) -> None:
    delays: list[float] = []
    attempts: list[int] = []

    async def scenario() -> None:
        queue = WorkQueue()
        monkeypatch.setattr(queue, "add_after", lambda key, delay: (delays.append(delay),
                                                                    queue.add(key)))

        async def reconcile(key: tuple[str, str]) -> None:
            attempts.append(len(attempts))
            if len(attempts) <= 3:
                raise RuntimeError("the API server said no")

        queue.add(("ns", "a"))
        task = asyncio.ensure_future(work(queue, reconcile, "experiment"))
        while len(attempts) < 4:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        assert queue.failures == {}

    asyncio.run(scenario())
    assert delays == [1.0, 2.0, 4.0]
    assert workqueue.MAX_RETRY_SECONDS == 60.0


class FakeClock:
    """A clock that moves only when the limiter sleeps (or the test says): the sleeps the
    limiter asks for are the rate."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_holds_the_rate_after_the_burst() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        limiter = RateLimiter(qps=100, burst=10, clock=clock, sleep=clock.sleep)
        for _ in range(30):
            await limiter.acquire()

    asyncio.run(scenario())
    assert len(clock.slept) == 20  # 10 free, then one token every 1/100 s
    assert all(abs(s - 0.01) < 1e-9 for s in clock.slept)
    assert abs(clock.now - 0.2) < 1e-9


def test_rate_limiter_saves_up_at_most_a_burst() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        limiter = RateLimiter(qps=10, burst=5, clock=clock, sleep=clock.sleep)
        for _ in range(5):
            await limiter.acquire()
        clock.now += 60.0  # idle for a minute: still only 5 saved up
        for _ in range(6):
            await limiter.acquire()

    asyncio.run(scenario())
    assert clock.slept == [0.1]
