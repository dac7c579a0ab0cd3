"""The controller: experiments in, reconciles out.

Level-triggered: every experiment, pod and service event enqueues its experiment, and a resync
timer enqueues all of them; a worker reconciles one experiment at a time (never two workers on
the same key), from the latest cached Experiment and the operator's pod and service caches,
and the executor carries the plan out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import aiohttp

from kubelearn_spec import contract, names

from . import metrics, progress
from .aio import cancel, gather
from .events import EventRecorder
from .executor import Executor
from .experiment_plan import (
    Observed,
    Plan,
    SpecError,
    StorageClasses,
    claim_to_check,
    parse_spec,
    plan,
)
from .informer import Informer
from .kube import (
    CLAIMS,
    PODGROUPS,
    PODS,
    SECRETS,
    SERVICES,
    STORAGE_CLASSES,
    ApiError,
    KubeClient,
)
from .pods import PodState, controller_uid, pod_state
from .progress import reporter
from .settings import Settings
from .workqueue import Key, WorkQueue, work

logger = logging.getLogger("kubelearn_operator")

#: How long the list of storage classes is reused (it is read only while an experiment
#: has no pods and its claim is to be made).
STORAGE_CLASSES_SECONDS = 10.0
DEFAULT_CLASS_ANNOTATIONS = (names.DEFAULT_CLASS_ANNOTATION,
                             "storageclass.beta.kubernetes.io/is-default-class")


def _resource_version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def store_newest(bodies: dict[Key, dict[str, Any]], key: Key, body: Mapping[str, Any]) -> None:
    """Keep the newest version of an object in a cache: a watch event may lag behind the
    body our own write returned."""
    cached = bodies.get(key)
    if (cached is None or cached["metadata"].get("uid") != body["metadata"].get("uid")
            or _resource_version(body) >= _resource_version(cached)):
        bodies[key] = dict(body)


class Controller:
    def __init__(self, settings: Settings, client: KubeClient,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.queue = WorkQueue()
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._pods: dict[str, Informer[PodState]] = {}
        self._services: dict[str, Informer[str]] = {}
        self._informer_tasks: dict[str, list[asyncio.Task[None]]] = {}
        self.events = EventRecorder(client, self.clock)
        self.executor = Executor(client, self.events, self.clock, self._store)
        self._tasks: list[asyncio.Task[None]] = []
        self._podgroup: tuple[float, bool] = (0.0, False)
        self._classes: tuple[float, StorageClasses] = (-STORAGE_CLASSES_SECONDS, StorageClasses())
        self._progress: dict[str, dict[str, Any]] = {}  # uid -> last polled chief progress
        self._progress_tokens: dict[str, str] = {}  # uid -> its token, for the poll
        #: Told of every Experiment event (the Sweep controller follows its trials).
        self.on_experiment: Callable[[Mapping[str, Any]], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(max(self.settings.workers, 1)):
            self._tasks.append(loop.create_task(work(self.queue, self.reconcile, "experiment"),
                                                name=f"kubelearn-worker-{i}"))
        self.events.start()
        self._tasks.append(loop.create_task(self._resync(), name="kubelearn-resync"))
        self._tasks.append(loop.create_task(self._warm_up(), name="kubelearn-warm-up"))
        if self.settings.progress_seconds > 0:
            self._tasks.append(loop.create_task(self._poll_progress(),
                                                name="kubelearn-progress"))

    async def _warm_up(self) -> None:
        """Open a few connections now, so the first experiment's creates do not each pay a
        TLS handshake (they are kept alive for minutes)."""
        count = min(self.settings.create_concurrency, 16)
        await asyncio.gather(*(self.client.request("GET", "/version") for _ in range(count)),
                             return_exceptions=True)

    async def stop(self) -> None:
        await cancel(self._tasks)
        await self.events.stop()
        await self.client.close()

    def healthy(self) -> dict[str, Any]:
        return {"experiments": len(self.bodies), "queued": len(self.queue),
                "tasks": sum(1 for t in self._tasks if not t.done())}

    # -- inputs from the watches -----------------------------------------------------------
    def observe_experiment(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.bodies.pop(key, None)
            self._forget(meta.get("uid", ""))
            asyncio.get_running_loop().create_task(self._delete_owned(key, meta.get("uid", "")))
        else:
            self._store(key, body)
            if (body.get("status") or {}).get("conditions"):
                self._watch_namespace(key[0])
            # else they start once it has a status, which its first reconcile writes beside
            # its creates (or when that reconcile ends): the caches' list and watch requests
            # do not reach the API server ahead of the first pods (that reconcile needs no
            # cache)
            self.queue.add(key)
        if self.on_experiment is not None:
            self.on_experiment(body)

    def _watch_namespace(self, namespace: str) -> None:
        """Start the pod and service caches of a namespace when its first Experiment shows."""
        if namespace in self._pods:
            return
        selector = names.LABEL_EXPERIMENT

        def parse_pod(obj: dict[str, Any]) -> tuple[str, PodState] | None:
            state = pod_state(obj)
            return (state.experiment, state) if state else None

        def parse_service(obj: dict[str, Any]) -> tuple[str, str] | None:
            meta = obj.get("metadata") or {}
            labels = meta.get("labels") or {}
            experiment = labels.get(names.LABEL_EXPERIMENT)
            # Replicas' services only: not TensorBoard's, which scaling must not remove.
            if not experiment or names.LABEL_ROLE not in labels:
                return None
            return experiment, controller_uid(meta)

        def changed(ns: str, experiment: str) -> None:
            if (ns, experiment) in self.bodies:
                self.queue.add((ns, experiment))

        loop = asyncio.get_running_loop()
        for store, plural, parse in ((self._pods, "pods", parse_pod),
                                     (self._services, "services", parse_service)):
            # A dead watch is noticed within one resync period (informer.py).
            informer: Informer[Any] = Informer(self.client, namespace, plural, selector, parse,
                                               changed, self.settings.resync_seconds / 2)
            store[namespace] = informer
            task = loop.create_task(informer.run(), name=f"kubelearn-{plural}-{namespace}")
            self._tasks.append(task)
            self._informer_tasks.setdefault(namespace, []).append(task)

    def _unwatch_namespace(self, namespace: str) -> None:
        """Stop the pod and service caches of a namespace that holds no Experiment any more
        (its last one was deleted, or the namespace is going): their watches would otherwise
        be opened again every half resync period for good, each a request of the budget.
        The next Experiment there starts them again."""
        if any(ns == namespace for ns, _ in self.bodies):
            return
        self._pods.pop(namespace, None)
        self._services.pop(namespace, None)
        for task in self._informer_tasks.pop(namespace, []):
            task.cancel()
            with contextlib.suppress(ValueError):
                self._tasks.remove(task)

    async def synced(self, namespace: str, timeout: float = 30.0) -> None:
        """Wait for the namespace's caches to be filled; a timeout fails the reconcile, which
        is retried, so a cache that cannot list never holds a worker for good."""
        self._watch_namespace(namespace)
        for store in (self._pods, self._services):
            await asyncio.wait_for(store[namespace].synced.wait(), timeout)

    def _store(self, key: Key, body: Mapping[str, Any]) -> None:
        store_newest(self.bodies, key, body)

    def _forget(self, uid: str) -> None:
        self.executor.expectations.forget(uid)
        self._progress.pop(uid, None)
        self._progress_tokens.pop(uid, None)

    def observed(self, key: Key, uid: str) -> Observed:
        """Pods and services of the experiment with this uid (not of a deleted namesake)."""
        namespace, name = key
        pod_cache, service_cache = self._pods.get(namespace), self._services.get(namespace)
        pods = {n: p for n, p in (pod_cache.get(name) if pod_cache else {}).items()
                if p.owner_uid == uid}
        services = {n for n, owner in (service_cache.get(name) if service_cache else {}).items()
                    if owner == uid}
        self.executor.expectations.add_pending(uid, name, pods, services)
        return Observed(pods=pods, services=frozenset(services), podgroup_available=False,
                        progress=self._progress.get(uid))

    # -- the loop --------------------------------------------------------------------------
    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self.bodies):
                self.queue.add(key)

    async def _poll_progress(self) -> None:
        """Every few seconds, ask each running chief for its progress (``GET /progress`` on
        its pod address); a change is reconciled into the Experiment's status."""
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.sleep(self.settings.progress_seconds)
                targets = []
                for key, body in list(self.bodies.items()):
                    if (body.get("status") or {}).get("phase") != "Running":
                        continue
                    uid = body["metadata"].get("uid", "")
                    try:
                        leader = parse_spec(body.get("spec") or {}, name=key[1],
                                            namespace=key[0],
                                            default_image=self.settings.image
                                            ).leader_role
                    except SpecError:
                        continue
                    pod = reporter(self.observed(key, uid).pods.values(), leader)
                    if pod is not None and pod.pod_ip and pod.phase == "Running":
                        targets.append((key, uid, pod.pod_ip))
                results = await asyncio.gather(
                    *(self._fetch_progress(session, *t) for t in targets),
                    return_exceptions=True)
                for error in (r for r in results if isinstance(r, Exception)):
                    logger.warning("progress poll failed: %s", error)

    async def _fetch_progress(self, session: aiohttp.ClientSession, key: Key, uid: str,
                              ip: str) -> None:
        host = f"[{ip}]" if ":" in ip else ip
        url = f"http://{host}:{contract.PROGRESS_PORT}{contract.PROGRESS_PATH}"
        try:
            token = self._progress_tokens.get(uid)
            if not token:  # the chief asks for the experiment's token, kept in its Secret
                token = progress.token_from_secret(await self.client.request(
                    "GET", SECRETS.path(key[0], names.secret_name(key[1]))))
                if token:
                    self._progress_tokens[uid] = token
            report = await progress.fetch(session, url, token) if token else None
        except (aiohttp.ClientError, asyncio.TimeoutError, ApiError, ValueError):
            return  # not up yet, or gone: the next poll tries again
        if isinstance(report, dict) and report != self._progress.get(uid):
            self._progress[uid] = report
            self.queue.add(key)

    async def podgroup_available(self) -> bool:
        checked, available = self._podgroup
        if time.monotonic() - checked < self.settings.podgroup_check_seconds:
            return available
        try:
            group = await self.client.request(
                "GET", PODGROUPS.group_version)
            available = any(r.get("name") == names.PODGROUP_PLURAL
                            for r in group.get("resources") or [])
        except ApiError as error:
            if error.status != 404:
                raise
            available = False
        self._podgroup = (time.monotonic(), available)
        return available

    async def claim_exists(self, namespace: str, claim: str) -> bool:
        try:
            await self.client.request(
                "GET", CLAIMS.path(namespace, claim))
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def storage_classes(self) -> StorageClasses:
        """The cluster's storage classes and its default one, read at most every
        STORAGE_CLASSES_SECONDS."""
        checked, classes = self._classes
        if time.monotonic() - checked < STORAGE_CLASSES_SECONDS:
            return classes
        listing = await self.client.request("GET", STORAGE_CLASSES.path())
        found, default = set(), None
        for item in listing.get("items") or []:
            meta = item.get("metadata") or {}
            found.add(meta.get("name", ""))
            annotations = meta.get("annotations") or {}
            if any(annotations.get(a) == "true" for a in DEFAULT_CLASS_ANNOTATIONS):
                default = meta.get("name")
        classes = StorageClasses(frozenset(found), default)
        self._classes = (time.monotonic(), classes)
        return classes

    async def observe_storage(self, body: Mapping[str, Any], observed: Observed) -> Observed:
        """Add what the plan needs to know of the model directory's claim, when it does."""
        check = claim_to_check(body, observed, self.settings)
        if check is None:
            return observed
        claim, creates = check
        namespace = body["metadata"].get("namespace", "")
        exists = await self.claim_exists(namespace, claim)
        classes = await self.storage_classes() if creates and not exists else None
        return dataclasses.replace(observed, claim_exists=exists, storage_classes=classes)

    async def _to_reconcile(self, key: Key) -> dict[str, Any] | None:
        """The cached Experiment, once the caches it is decided on are full; None if gone."""
        body = self.bodies.get(key)
        if body is not None and (body.get("status") or {}).get("conditions"):
            # Reconciled before, so objects of it may exist: decide only on a full cache.
            # A first reconcile need not wait: at worst its creates meet 409 AlreadyExists.
            await self.synced(key[0])
            body = self.bodies.get(key)
        return body

    async def reconcile(self, key: Key) -> Plan | None:
        body = await self._to_reconcile(key)
        if body is None:
            return None
        started = time.perf_counter()
        uid = body["metadata"].get("uid", "")
        observed = self.observed(key, uid)
        if (body.get("spec") or {}).get("runPolicy", {}).get("schedulingPolicy") is not None:
            observed = dataclasses.replace(observed,
                                           podgroup_available=await self.podgroup_available())
        observed = await self.observe_storage(body, observed)
        result = plan(body, observed, self.clock(), self.settings)
        try:
            await self.executor.execute(key, body, result)
        finally:
            if key in self.bodies:
                self._watch_namespace(key[0])
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after + 0.05)
        return result

    async def _delete_owned(self, key: Key, uid: str) -> None:
        """After an Experiment is deleted, remove what the garbage collector has not yet; in
        the background (kube.RateLimiter): the collector does it anyway, and the next
        experiment's creates go first. Then the namespace's caches stop if it holds no other
        Experiment."""
        namespace, experiment = key
        pods = self._pods.get(namespace)
        services = self._services.get(namespace)
        if pods is None or services is None:
            return
        try:
            await gather(
                [self.client.delete(PODS.path(namespace, p.name), p.uid,
                                    background=True)
                 for p in list(pods.get(experiment).values()) if p.owner_uid == uid]
                + [self.client.delete(SERVICES.path(namespace, name),
                                      background=True)
                   for name, owner in list(services.get(experiment).items()) if owner == uid])
        except Exception as error:
            logger.warning("clean-up after %s/%s was deleted failed: %s", *key, error)
        finally:
            self._unwatch_namespace(namespace)
