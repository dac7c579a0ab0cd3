"""Carries out reconcile plans: a work queue of experiments, the API calls and the events.

Level-triggered: every experiment, pod and service event enqueues its experiment, and a resync
timer enqueues all of them; a worker reconciles one experiment at a time (never two workers on
the same key), from the latest cached Experiment and the operator's pod and service caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import aiohttp

from kubelearn_spec import names

from . import metrics, naming, progress
from .builders import ExperimentRef, build_secret
from .informer import Informer
from .kube import ApiError, KubeClient
from .pods import PodState, controller_uid, pod_state
from .progress import reporter
from .reconcile import Event, Observed, Options, Plan, plan, status_patch
from .settings import Settings
from .spec import SpecError, parse_spec
from .status import format_time

logger = logging.getLogger("kubelearn_operator")

Key = tuple[str, str]

#: Creation events posted one by one per kind and reconcile; the rest share one event.
EVENTS_PER_KIND = 10
#: How long an object this process created counts as existing before the cache shows it.
EXPECT_SECONDS = 30.0


class WorkQueue:
    """Deduplicating queue: a key is queued once and never processed by two workers at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()

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


def _resource_version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _experiment_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{naming.GROUP}/{naming.VERSION}/namespaces/{namespace}/{naming.PLURAL}"
    return f"{path}/{name}" if name else path


class Controller:
    def __init__(self, settings: Settings, client: KubeClient,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.options = Options(default_image=settings.image,
                               cluster_domain=settings.cluster_domain,
                               inline_cluster_max=settings.inline_cluster_max,
                               network_policy=settings.network_policy,
                               encrypt_wire=settings.encrypt_wire)
        self.queue = WorkQueue()
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._pods: dict[str, Informer[PodState]] = {}
        self._services: dict[str, Informer[str]] = {}
        self._ensured: set[tuple[str, str]] = set()
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._podgroup: tuple[float, bool] = (0.0, False)
        self._failures: dict[Key, int] = {}
        self._reported: set[tuple[str, str, str]] = set()
        # uid -> "pods/<name>" or "services/<name>" -> (deadline, role, index): created here,
        # not yet in the cache. Without it a reconcile racing the watch would create again
        # (harmless, 409) a thousand times.
        self._expected: dict[str, dict[str, tuple[float, str, int]]] = {}
        self._progress: dict[str, dict[str, Any]] = {}  # uid -> last polled chief progress
        self._progress_tokens: dict[str, str] = {}  # uid -> its token, for the poll
        self.instance = socket.gethostname()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(max(self.settings.workers, 1)):
            self._tasks.append(loop.create_task(self._worker(), name=f"kubelearn-worker-{i}"))
        for i in range(4):
            self._tasks.append(loop.create_task(self._event_poster(), name=f"kubelearn-events-{i}"))
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
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
            return
        self._store(key, body)
        self._watch_namespace(key[0])
        self.queue.add(key)

    def _watch_namespace(self, namespace: str) -> None:
        """Start the pod and service caches of a namespace when its first Experiment shows."""
        if namespace in self._pods:
            return
        selector = naming.LABEL_EXPERIMENT

        def parse_pod(obj: dict[str, Any]) -> tuple[str, PodState] | None:
            state = pod_state(obj)
            return (state.experiment, state) if state else None

        def parse_service(obj: dict[str, Any]) -> tuple[str, str] | None:
            meta = obj.get("metadata") or {}
            experiment = (meta.get("labels") or {}).get(naming.LABEL_EXPERIMENT)
            return (experiment, controller_uid(meta)) if experiment else None

        def changed(ns: str, experiment: str) -> None:
            if (ns, experiment) in self.bodies:
                self.queue.add((ns, experiment))

        loop = asyncio.get_running_loop()
        for store, plural, parse in ((self._pods, "pods", parse_pod),
                                     (self._services, "services", parse_service)):
            informer: Informer[Any] = Informer(self.client, namespace, plural, selector, parse,
                                               changed)
            store[namespace] = informer
            self._tasks.append(loop.create_task(informer.run(),
                                                name=f"kubelearn-{plural}-{namespace}"))

    async def synced(self, namespace: str, timeout: float = 30.0) -> None:
        """Wait for the namespace's caches to be filled; a timeout fails the reconcile, which
        is retried, so a cache that cannot list never holds a worker for good."""
        for store in (self._pods, self._services):
            await asyncio.wait_for(store[namespace].synced.wait(), timeout)

    def _store(self, key: Key, body: Mapping[str, Any]) -> None:
        """Keep the newest version: a watch event may lag behind our own status patch."""
        cached = self.bodies.get(key)
        if (cached is None or cached["metadata"].get("uid") != body["metadata"].get("uid")
                or _resource_version(body) >= _resource_version(cached)):
            self.bodies[key] = dict(body)

    def _forget(self, uid: str) -> None:
        self._expected.pop(uid, None)
        self._progress.pop(uid, None)
        self._progress_tokens.pop(uid, None)
        self._ensured = {e for e in self._ensured if e[0] != uid}
        self._reported = {e for e in self._reported if e[0] != uid}

    def observed(self, key: Key, uid: str) -> Observed:
        """Pods and services of the experiment with this uid (not of a deleted namesake)."""
        namespace, name = key
        pods = {n: p for n, p in self._pods[namespace].get(name).items() if p.owner_uid == uid}
        services = {n for n, owner in self._services[namespace].get(name).items()
                    if owner == uid}
        expected = self._expected.get(uid)
        if expected:
            now = time.monotonic()
            for ref, (deadline, role, index) in list(expected.items()):
                plural, obj = ref.split("/", 1)
                seen = obj in pods if plural == "pods" else obj in services
                if seen or deadline < now:
                    del expected[ref]
                elif plural == "pods":
                    pods[obj] = PodState(name=obj, uid="", experiment=name, role=role,
                                         index=index, phase="Pending", owner_uid=uid)
                else:
                    services.add(obj)
        return Observed(pods=pods, services=frozenset(services), podgroup_available=False,
                        progress=self._progress.get(uid))

    # -- the loop --------------------------------------------------------------------------
    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in list(self.bodies):
                self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self.reconcile(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # retried with backoff: the next try sees fresh state
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = min(1.0 * 2 ** (failures - 1), 60.0)
                logger.warning("reconcile of %s/%s failed (retry in %.0fs): %s",
                               key[0], key[1], delay, error)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)

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
                                            default_image=self.options.default_image
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
        url = f"http://{host}:{naming.PROGRESS_PORT}{naming.PROGRESS_PATH}"
        try:
            token = self._progress_tokens.get(uid)
            if not token:  # the chief asks for the experiment's token, kept in its Secret
                token = progress.token_from_secret(await self.client.request(
                    "GET", f"/api/v1/namespaces/{key[0]}/secrets/{names.secret_name(key[1])}"))
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
                "GET", f"/apis/{naming.PODGROUP_GROUP}/{naming.PODGROUP_VERSION}")
            available = any(r.get("name") == naming.PODGROUP_PLURAL
                            for r in group.get("resources") or [])
        except ApiError as error:
            if error.status != 404:
                raise
            available = False
        self._podgroup = (time.monotonic(), available)
        return available

    async def reconcile(self, key: Key) -> Plan | None:
        body = self.bodies.get(key)
        if body is None:
            return None
        if (body.get("status") or {}).get("conditions"):
            # Reconciled before, so objects of it may exist: decide only on a full cache.
            # A first reconcile need not wait: at worst its creates meet 409 AlreadyExists.
            await self.synced(key[0])
            body = self.bodies.get(key)
            if body is None:
                return None
        started = time.perf_counter()
        uid = body["metadata"].get("uid", "")
        observed = self.observed(key, uid)
        if (body.get("spec") or {}).get("runPolicy", {}).get("schedulingPolicy") is not None:
            observed = Observed(observed.pods, observed.services, await self.podgroup_available(),
                                observed.progress)
        result = plan(body, observed, self.clock(), self.options)
        await self.execute(key, body, result)
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after + 0.05)
        return result

    # -- carrying out a plan ---------------------------------------------------------------
    async def execute(self, key: Key, body: Mapping[str, Any], result: Plan) -> None:
        namespace, name = key
        meta = body["metadata"]
        ref = ExperimentRef(name, namespace, meta.get("uid", ""))
        # Creating needs no ordering, so it starts at once, beside the status write;
        # deletions wait for the status: a restart is recorded before its pod goes.
        creates = asyncio.ensure_future(self._create_all(ref, result))
        try:
            present = await self._write_status(key, body, result)
        except BaseException:
            await asyncio.gather(creates, return_exceptions=True)
            raise
        for counter in result.counters:
            metrics.count(counter, namespace)
        for event in result.events:
            self.post_event(ref, event)
        deletes: list[Any] = []
        if present and result.delete_experiment:
            deletes.append(self._delete_experiment(ref))
        elif present:
            deletes += [self._delete_pod(ref, pod, uid) for pod, uid in result.delete_pods]
            deletes += [self._delete_service(ref, svc) for svc in result.delete_services]
        await self._gather([creates, *deletes])

    async def _delete_experiment(self, ref: ExperimentRef) -> None:
        if await self.client.delete(_experiment_path(ref.namespace, ref.name), ref.uid):
            metrics.count("deleted", ref.namespace)

    async def _write_status(self, key: Key, body: Mapping[str, Any], result: Plan) -> bool:
        """Patch the status keys that changed; False when the Experiment is gone."""
        if result.status is None:
            return True
        patch = status_patch(body.get("status") or {}, result.status)
        if not patch:
            return True
        namespace, name = key
        patch["lastReconcileTime"] = format_time(self.clock())
        try:
            updated = await self.client.merge_patch(
                _experiment_path(namespace, name) + "/status", {"status": patch})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        self._store(key, updated)
        return True

    async def _create_all(self, ref: ExperimentRef, result: Plan) -> None:
        """Secret, PodGroup, services and pods, all at once: pods may exist before the Secret
        they refer to (the kubelet waits for it), so nothing here needs ordering."""
        calls: list[Any] = []
        if result.ensure_secret and (ref.uid, "secret") not in self._ensured:
            calls.append(self._ensure(ref, "secret", f"/api/v1/namespaces/{ref.namespace}/secrets",
                                      build_secret(ref, secrets.token_hex(32)), "Secret"))
        if result.configmap is not None:
            digest = hashlib.sha1(result.configmap["data"][naming.CLUSTER_KEY].encode())
            generation = f"configmap-{digest.hexdigest()}"
            if (ref.uid, generation) not in self._ensured:
                calls.append(self._ensure(
                    ref, generation, f"/api/v1/namespaces/{ref.namespace}/configmaps",
                    result.configmap, "ConfigMap", replace=True))
        if result.network_policy is not None and (ref.uid, "netpol") not in self._ensured:
            calls.append(self._ensure(
                ref, "netpol", f"/apis/networking.k8s.io/v1/namespaces/{ref.namespace}/"
                "networkpolicies", result.network_policy, "NetworkPolicy"))
        if result.podgroup is not None and (ref.uid, "podgroup") not in self._ensured:
            calls.append(self._ensure(
                ref, "podgroup", f"/apis/{naming.PODGROUP_GROUP}/{naming.PODGROUP_VERSION}/"
                f"namespaces/{ref.namespace}/{naming.PODGROUP_PLURAL}", result.podgroup,
                "PodGroup"))
        services = [self._create(ref, "services", "Service", s) for s in result.create_services]
        pods = [self._create(ref, "pods", "Pod", p) for p in result.create_pods]
        outcomes = await asyncio.gather(*calls, *services, *pods, return_exceptions=True)
        made_services = outcomes[len(calls):len(calls) + len(services)]
        made_pods = outcomes[len(calls) + len(services):]
        self._creation_events(ref, "Service", result.create_services, made_services)
        self._creation_events(ref, "Pod", result.create_pods, made_pods)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _creation_events(self, ref: ExperimentRef, kind: str,
                         manifests: list[dict[str, Any]], outcomes: list[Any]) -> None:
        """One event per created object, up to a limit; past it, one event lists the rest
        (a 1000-replica experiment posts a few dozen events, not 2000, while it starts)."""
        names = [m["metadata"]["name"] for m, ok in zip(manifests, outcomes, strict=True)
                 if ok is True]
        for name in names[:EVENTS_PER_KIND]:
            self.post_event(ref, Event("Normal", f"SuccessfulCreate{kind}",
                                       f"Created {kind.lower()} {name}"))
        rest = names[EVENTS_PER_KIND:]
        if rest:
            shown = ", ".join(rest[:20]) + (", ..." if len(rest) > 20 else "")
            self.post_event(ref, Event("Normal", f"SuccessfulCreate{kind}",
                                       f"Created {len(rest)} more {kind.lower()}s: {shown}"
                                       f" (last {rest[-1]})"))

    async def _ensure(self, ref: ExperimentRef, what: str, path: str,
                      manifest: Mapping[str, Any], kind: str, replace: bool = False) -> None:
        """Create once per operator process; with ``replace``, an existing object's data is
        brought up to date (a ConfigMap after the spec was scaled)."""
        name = manifest["metadata"]["name"]
        if await self.client.create(path, manifest):
            self.post_event(ref, Event("Normal", f"SuccessfulCreate{kind}",
                                       f"Created {kind.lower()} {name}"))
        elif replace:
            await self.client.merge_patch(f"{path}/{name}", {"data": manifest["data"]})
        self._ensured.add((ref.uid, what))

    async def _gather(self, calls: Iterable[Any]) -> None:
        """Run API calls concurrently (the client bounds concurrency and QPS); raise the first
        error only after all have finished, so one failure never strands the rest."""
        results = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in results:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _create(self, ref: ExperimentRef, plural: str, kind: str,
                      manifest: Mapping[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        try:
            created = await self.client.create(f"/api/v1/namespaces/{ref.namespace}/{plural}",
                                               manifest)
        except ApiError as error:
            # Rejected (quota, admission, a missing PriorityClass...): say so once, on the
            # Experiment, where users look; the reconcile is retried with backoff.
            reason = error.body.get("message") if isinstance(error.body, dict) else str(error)
            if (ref.uid, name, str(reason)) not in self._reported:
                self._reported.add((ref.uid, name, str(reason)))
                self.post_event(ref, Event("Warning", f"FailedCreate{kind}",
                                           f"Error creating {kind.lower()} {name}: {reason}"))
            raise
        if created:
            labels = manifest["metadata"].get("labels") or {}
            self._expected.setdefault(ref.uid, {})[f"{plural}/{name}"] = (
                time.monotonic() + EXPECT_SECONDS, labels.get(naming.LABEL_ROLE, ""),
                int(labels.get(naming.LABEL_INDEX, 0)))
        return created

    async def _delete_pod(self, ref: ExperimentRef, name: str, uid: str) -> None:
        if await self.client.delete(f"/api/v1/namespaces/{ref.namespace}/pods/{name}", uid):
            self.post_event(ref, Event("Normal", "SuccessfulDeletePod", f"Deleted pod {name}"))

    async def _delete_service(self, ref: ExperimentRef, name: str) -> None:
        if await self.client.delete(f"/api/v1/namespaces/{ref.namespace}/services/{name}"):
            self.post_event(ref, Event("Normal", "SuccessfulDeleteService",
                                       f"Deleted service {name}"))

    async def _delete_owned(self, key: Key, uid: str) -> None:
        """After an Experiment is deleted, remove what the garbage collector has not yet."""
        namespace, experiment = key
        pods = self._pods.get(namespace)
        services = self._services.get(namespace)
        if pods is None or services is None:
            return
        try:
            await self._gather(
                [self.client.delete(f"/api/v1/namespaces/{namespace}/pods/{p.name}", p.uid)
                 for p in list(pods.get(experiment).values()) if p.owner_uid == uid]
                + [self.client.delete(f"/api/v1/namespaces/{namespace}/services/{name}")
                   for name, owner in list(services.get(experiment).items()) if owner == uid])
        except Exception as error:
            logger.warning("clean-up after %s/%s was deleted failed: %s", *key, error)

    # -- events ----------------------------------------------------------------------------
    def post_event(self, ref: ExperimentRef, event: Event) -> None:
        stamp = format_time(self.clock())
        self._events.put_nowait({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{ref.name}.", "namespace": ref.namespace},
            "involvedObject": {"apiVersion": naming.API_VERSION, "kind": naming.KIND,
                               "name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
            "type": event.type, "reason": event.reason, "message": event.message[:1024],
            "source": {"component": "kubelearn-operator"},
            "reportingComponent": "kubelearn-operator", "reportingInstance": self.instance,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        })

    async def _event_poster(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self.client.request(
                    "POST", f"/api/v1/namespaces/{event['metadata']['namespace']}/events",
                    body=event)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # events are best effort
                logger.debug("posting event failed: %s", error)
