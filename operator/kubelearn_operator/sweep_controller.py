"""The Sweep controller: Sweeps and their trial Experiments in, trials and status out.

Level-triggered like the Experiment controller: a Sweep's own events, any event of an
Experiment labelled with its name and a resync timer enqueue it; one worker at a time
reconciles it from the cached Sweep and the Experiment controller's cache of Experiments,
through the pure :func:`~.sweep_plan.plan_sweep`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Mapping
from typing import Any

from kubelearn_spec import names
from kubelearn_spec.sweep_model import RUNNING

from . import metrics
from .aio import cancel
from .experiment_controller import Controller, store_newest
from .experiment_plan import status_patch
from .kube import EXPERIMENTS, SWEEPS, ApiError
from .objects import ExperimentRef
from .sweep_plan import SweepPlan, plan_sweep, trial_number
from .workqueue import Key, WorkQueue, work

#: Sweeps reconciled at once: each reconcile is a few requests and a search.
WORKERS = 2


def _owner_uid(body: Mapping[str, Any]) -> str | None:
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == names.SWEEP_KIND:
            return ref.get("uid")
    return None


class SweepController:
    """Runs beside the Experiment controller, sharing its client, events and cache."""

    def __init__(self, experiments: Controller) -> None:
        self.experiments = experiments
        self.client = experiments.client
        self.events = experiments.events
        self.clock = experiments.clock
        self.resync_seconds = experiments.settings.resync_seconds
        self.queue = WorkQueue()
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._seeds: dict[str, int] = {}  # uid -> seed drawn when the spec gives none
        self._conflicts: dict[str, dict[int, str]] = {}  # uid -> trial names taken by others
        self._tasks: list[asyncio.Task[None]] = []
        experiments.on_experiment = self.experiment_changed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(work(self.queue, self.reconcile, "sweep"),
                                        name=f"kubelearn-sweeps-{i}") for i in range(WORKERS)]
        self._tasks.append(loop.create_task(self._resync(), name="kubelearn-sweeps-resync"))

    async def stop(self) -> None:
        await cancel(self._tasks)

    # -- inputs ----------------------------------------------------------------------------
    def observe_sweep(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Sweep's event; its trials go with it by their owner references."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.bodies.pop(key, None)
            self._seeds.pop(meta.get("uid", ""), None)
            self._conflicts.pop(meta.get("uid", ""), None)
            return
        self._store(key, body)
        self.queue.add(key)

    def experiment_changed(self, body: Mapping[str, Any]) -> None:
        """An Experiment's event: enqueue its Sweep, if it is a trial."""
        meta = body.get("metadata") or {}
        sweep = (meta.get("labels") or {}).get(names.LABEL_SWEEP)
        key = (meta.get("namespace", ""), sweep or "")
        if sweep and key in self.bodies:
            self.queue.add(key)

    def _store(self, key: Key, body: Mapping[str, Any]) -> None:
        store_newest(self.bodies, key, body)

    def children(self, key: Key, uid: str) -> dict[int, dict[str, Any]]:
        """The cached trial Experiments this Sweep owns, by trial number."""
        namespace, name = key
        found = {}
        for (ns, _), body in list(self.experiments.bodies.items()):
            labels = (body.get("metadata") or {}).get("labels") or {}
            if ns == namespace and labels.get(names.LABEL_SWEEP) == name \
                    and _owner_uid(body) == uid and (number := trial_number(body)) is not None:
                found[number] = body
        return found

    # -- the loop --------------------------------------------------------------------------
    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            for key in list(self.bodies):
                self.queue.add(key)

    async def _confirm_missing(self, key: Key, uid: str,
                               children: dict[int, dict[str, Any]]) -> None:
        """Trials the status says are running but the cache lacks (just after a restart, the
        Experiments may not all be listed yet) are read from the API server: only a 404
        makes one a deleted trial."""
        status = self.bodies[key].get("status") or {}
        for entry in status.get("history") or []:
            number = entry.get("number")
            if entry.get("state", RUNNING) != RUNNING or number in children:
                continue
            try:
                body = await self.client.request(
                    "GET", EXPERIMENTS.path(key[0], entry.get("name", "")))
            except ApiError as error:
                if error.status == 404:
                    continue
                raise
            if _owner_uid(body) == uid:
                children[number] = body

    async def reconcile(self, key: Key) -> SweepPlan | None:
        body = self.bodies.get(key)
        if body is None:
            return None
        started = time.perf_counter()
        uid = body["metadata"].get("uid", "")
        children = self.children(key, uid)
        await self._confirm_missing(key, uid, children)
        seed = self._seeds.setdefault(uid, secrets.randbelow(2**31))
        result = plan_sweep(body, list(children.values()), self.clock(), seed,
                            self._conflicts.get(uid, {}))
        ref = ExperimentRef(key[1], key[0], uid, names.SWEEP_KIND)
        for stop in result.stops:
            try:
                updated = await self.client.merge_patch(
                    EXPERIMENTS.path(key[0], stop.name), stop.patch())
            except ApiError as error:
                if error.status != 404:
                    raise
            else:
                self.experiments.observe_experiment("MODIFIED", updated)
        for manifest in result.creates:
            if not await self._create(key, uid, manifest):
                # It exists already: plan again knowing it, before any status is written.
                self.queue.add_after(key, 0.0)
                return result
        await self._write_status(key, body, result)
        for event in result.events:
            self.events.post(ref, event)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _create(self, key: Key, uid: str, manifest: Mapping[str, Any]) -> bool:
        """Creates a trial's Experiment; False when one of that name exists. If it is this
        Sweep's (a create before a restart), it is taken into the cache; if not, the trial
        is recorded as failed and its number is never used again."""
        path = EXPERIMENTS.path(key[0])
        name = manifest["metadata"]["name"]
        try:
            created = await self.client.request("POST", path, body=manifest)
        except ApiError as error:
            if error.status != 409:
                raise
            existing = await self.client.request("GET", f"{path}/{name}")
            if _owner_uid(existing) == uid:
                self.experiments.observe_experiment("ADDED", existing)
            else:
                number = trial_number(manifest)
                assert number is not None
                self._conflicts.setdefault(uid, {})[number] = (
                    f"an Experiment named {name} exists and is not this Sweep's")
            return False
        # Into the cache at once: the Experiment controller starts its pods now, and the
        # next plan of this Sweep sees it even before the watch delivers it.
        self.experiments.observe_experiment("ADDED", created)
        return True

    async def _write_status(self, key: Key, body: Mapping[str, Any], result: SweepPlan) -> None:
        patch = status_patch(body.get("status") or {}, result.status)
        if not patch:
            return
        try:
            updated = await self.client.merge_patch(SWEEPS.path(*key, subresource="status"),
                                                    {"status": patch})
        except ApiError as error:
            if error.status == 404:
                return
            raise
        self._store(key, updated)
