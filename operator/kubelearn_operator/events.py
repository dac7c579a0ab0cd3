"""The event recorder: Kubernetes Events on an Experiment, posted in the background.

Events are best effort: a failed post is logged, never retried, and never fails a reconcile.
They are background requests (kube.RateLimiter): they share the client's QPS and burst with
everything else, but go only when no create, update or read waits for the budget, so a burst
of events never delays the pods and services they tell of. As in client-go's broadcaster, at
most MAX_QUEUED wait; more are dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from kubelearn_spec import names

from .aio import cancel
from .kube import EVENTS, KubeClient
from .objects import Event, ExperimentRef
from .status import format_time

logger = logging.getLogger("kubelearn_operator")

#: Creation events posted one by one per kind and reconcile; the rest share one event.
EVENTS_PER_KIND = 10
#: Concurrent posters: a burst of events must not wait behind one slow request.
POSTERS = 4
#: Events waiting to be posted, at most (client-go's broadcaster queues 1000 too).
MAX_QUEUED = 1000


class EventRecorder:
    def __init__(self, client: KubeClient, clock: Callable[[], datetime]) -> None:
        self.client = client
        self.clock = clock
        self.instance = socket.gethostname()
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MAX_QUEUED)
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poster(), name=f"kubelearn-events-{i}")
                       for i in range(POSTERS)]

    async def stop(self) -> None:
        await cancel(self._tasks)

    def post(self, ref: ExperimentRef, event: Event) -> None:
        if self._queue.full():
            self.dropped += 1
            logger.debug("event queue full, dropped: %s %s", event.reason, event.message)
            return
        stamp = format_time(self.clock())
        self._queue.put_nowait({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {"apiVersion": names.API_VERSION, "kind": ref.kind,
                               "name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "source": {"component": "kubelearn-operator"},
            "reportingComponent": "kubelearn-operator", "reportingInstance": self.instance,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        })

    def created(self, ref: ExperimentRef, kind: str, names: Sequence[str]) -> None:
        """One event per created object, up to a limit; past it, one event lists the rest
        (a 1000-replica experiment posts a few dozen events, not 2000, while it starts)."""
        for name in names[:EVENTS_PER_KIND]:
            self.post(ref, Event("Normal", f"SuccessfulCreate{kind}",
                                 f"Created {kind.lower()} {name}"))
        rest = names[EVENTS_PER_KIND:]
        if rest:
            shown = ", ".join(rest[:20]) + (", ..." if len(rest) > 20 else "")
            self.post(ref, Event("Normal", f"SuccessfulCreate{kind}",
                                 f"Created {len(rest)} more {kind.lower()}s: {shown}"
                                 f" (last {rest[-1]})"))

    async def _poster(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.client.request(
                    "POST", EVENTS.path(event["metadata"]["namespace"]),
                    body=event, background=True)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # events are best effort
                logger.debug("posting event failed: %s", error)
