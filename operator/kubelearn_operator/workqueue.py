"""The work queue of experiments: level-triggered, deduplicating, one worker per key."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger("kubelearn_operator")

#: (namespace, experiment name)
Key = tuple[str, str]
#: A failed reconcile is tried again after 1 s, doubling to at most this.
MAX_RETRY_SECONDS = 60.0


class WorkQueue:
    """A key is queued once and never processed by two workers at once; a key added while it
    is processed is queued again when it is done, so no event is lost."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self.failures: dict[Key, int] = {}  # failed reconciles in a row, for the back-off

    def add(self, key: Key) -> None:
        if key in self._processing:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(max(delay, 0.0), self.add, key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return len(self._queued)


async def work(queue: WorkQueue, reconcile: Callable[[Key], Awaitable[Any]], kind: str) -> None:
    """One worker of ``queue``: reconciles key after key. A failure is retried with back-off
    (the next try sees fresh state); a success forgets the failures."""
    while True:
        key = await queue.get()
        try:
            await reconcile(key)
            queue.failures.pop(key, None)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures = queue.failures[key] = queue.failures.get(key, 0) + 1
            delay = min(1.0 * 2 ** (failures - 1), MAX_RETRY_SECONDS)
            logger.warning("reconcile of %s %s/%s failed (retry in %.0fs): %s",
                           kind, key[0], key[1], delay, error)
            queue.add_after(key, delay)
        finally:
            queue.done(key)
