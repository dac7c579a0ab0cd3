"""Two asyncio patterns the controller, the executor and the event recorder share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


async def gather(calls: Iterable[Any]) -> None:
    """Run API calls concurrently (the client bounds concurrency and QPS); raise the first
    error only after all have finished, so one failure never strands the rest."""
    for outcome in await asyncio.gather(*calls, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome


async def cancel(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel background tasks and wait until each has ended, whatever it raised."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
