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


class YieldingClock(FakeClock):
    """As FakeClock, but a sleep also lets other tasks run, as a real one does."""

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        await asyncio.sleep(0)


def test_background_requests_wait_while_essential_ones_do() -> None:
    clock = YieldingClock()

    async def scenario() -> list[str]:
        limiter = RateLimiter(qps=10, burst=2, clock=clock, sleep=clock.sleep)
        order: list[str] = []

        async def take(name: str, background: bool = False) -> None:
            await limiter.acquire(background=background)
            order.append(name)

        for _ in range(2):
            await limiter.acquire()  # the bucket is empty
        # An event queued first still goes after the creates queued behind it.
        tasks = [asyncio.create_task(take("event", background=True))]
        tasks += [asyncio.create_task(take(f"create-{i}")) for i in range(5)]
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == [f"create-{i}" for i in range(5)] + ["event"]


def test_background_requests_leave_the_burst_to_essential_ones() -> None:
    clock = FakeClock()

    async def scenario() -> None:
        limiter = RateLimiter(qps=10, burst=5, clock=clock, sleep=clock.sleep)
        for _ in range(20):  # a backlog of events: they flow at the rate...
            await limiter.acquire(background=True)
        assert abs(clock.now - 1.9) < 1e-9
        drained = clock.now
        for _ in range(4):  # ...yet burst - 1 tokens stay saved for what comes next
            await limiter.acquire()
        assert clock.now == drained
        await limiter.acquire()
        assert abs(clock.now - drained - 0.1) < 1e-9

    asyncio.run(scenario())


def test_background_and_essential_requests_share_one_budget() -> None:
    """However the two kinds mix, the requests of any interval stay within burst + qps x
    its length: the limits are the client's total."""
    clock = YieldingClock()
    qps, burst = 20.0, 30
    times: list[float] = []

    async def scenario() -> None:
        limiter = RateLimiter(qps=qps, burst=burst, clock=clock, sleep=clock.sleep)

        async def take(background: bool) -> None:
            await limiter.acquire(background=background)
            times.append(clock.now)

        async def wave(start: float, essential: int, background: int) -> None:
            if start > clock.now:
                await clock.sleep(start - clock.now)
            await asyncio.gather(*(take(False) for _ in range(essential)),
                                 *(take(True) for _ in range(background)))

        await wave(0.0, 50, 40)
        await wave(clock.now + 0.5, 10, 60)
        await wave(clock.now + 3.0, 45, 5)

    asyncio.run(scenario())
    assert len(times) == 210
    times.sort()
    for i, first in enumerate(times):
        for j in range(i, len(times)):
            assert j - i + 1 <= burst + qps * (times[j] - first) + 1e-6
