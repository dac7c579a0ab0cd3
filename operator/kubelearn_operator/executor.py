"""Carries out a reconcile plan through the API, and remembers what it just created.

The expectations bridge the gap between a create and the watch event that shows it in the
cache: without them a reconcile racing the watch would create again (harmless, 409) a
thousand times.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from kubelearn_spec import contract, names

from . import metrics
from .aio import gather
from .builders import build_secret
from .events import EventRecorder
from .experiment_plan import Plan, status_patch
from .kube import (
    CLAIMS,
    CONFIGMAPS,
    DEPLOYMENTS,
    EXPERIMENTS,
    NETWORK_POLICIES,
    PODGROUPS,
    PODS,
    RESOURCES,
    SECRETS,
    SERVICES,
    ApiError,
    KubeClient,
)
from .objects import Event, ExperimentRef
from .pods import PodState
from .status import format_time
from .workqueue import Key

logger = logging.getLogger("kubelearn_operator")

#: How long an object this process created counts as existing before the cache shows it.
EXPECT_SECONDS = 30.0


class Expectations:
    """What this process created or reported per experiment uid, not yet seen in a cache."""

    def __init__(self) -> None:
        #: uid -> "pods/<name>" or "services/<name>" -> (deadline, role, index)
        self.created: dict[str, dict[str, tuple[float, str, int]]] = {}
        #: (uid, what): objects created once per process (Secret, ConfigMap, PodGroup...)
        self.ensured: set[tuple[str, str]] = set()
        #: (uid, object, reason): a rejected create, told once as an event
        self.reported: set[tuple[str, str, str]] = set()
        #: uids of experiments whose namespace is being deleted (a create there was refused
        #: with NamespaceTerminating): nothing is done for them any more, as the namespace
        #: and the Experiment with it are going
        self.doomed: set[str] = set()

    def expect(self, uid: str, plural: str, manifest: Mapping[str, Any]) -> None:
        labels = manifest["metadata"].get("labels") or {}
        self.created.setdefault(uid, {})[f"{plural}/{manifest['metadata']['name']}"] = (
            time.monotonic() + EXPECT_SECONDS, labels.get(names.LABEL_ROLE, ""),
            int(labels.get(names.LABEL_INDEX, 0)))

    def add_pending(self, uid: str, experiment: str, pods: dict[str, PodState],
                    services: set[str]) -> None:
        """Add created objects the caches do not show yet (pods as Pending); drop those they
        show, and those past their deadline (deleted meanwhile, or never made)."""
        expected = self.created.get(uid)
        if not expected:
            return
        now = time.monotonic()
        for ref, (deadline, role, index) in list(expected.items()):
            plural, obj = ref.split("/", 1)
            seen = obj in pods if plural == "pods" else obj in services
            if seen or deadline < now:
                del expected[ref]
            elif plural == "pods":
                pods[obj] = PodState(name=obj, uid="", experiment=experiment, role=role,
                                     index=index, phase="Pending", owner_uid=uid)
            else:
                services.add(obj)

    def forget(self, uid: str) -> None:
        self.created.pop(uid, None)
        self.ensured = {e for e in self.ensured if e[0] != uid}
        self.reported = {e for e in self.reported if e[0] != uid}
        self.doomed.discard(uid)


class Executor:
    def __init__(self, client: KubeClient, events: EventRecorder,
                 clock: Callable[[], datetime],
                 store: Callable[[Key, Mapping[str, Any]], None]) -> None:
        self.client = client
        self.events = events
        self.clock = clock
        self.store = store  # keeps the Experiment our status patch returned
        self.expectations = Expectations()

    async def execute(self, key: Key, body: Mapping[str, Any], result: Plan) -> None:
        namespace, name = key
        ref = ExperimentRef(name, namespace, body["metadata"].get("uid", ""))
        if ref.uid in self.expectations.doomed:
            # Its namespace is being deleted, the Experiment with it: the namespace
            # controller removes everything, and no status or event of it will be read.
            return
        # Creating needs no ordering, so it starts at once, beside the status write;
        # deletions wait for the status: a restart is recorded before its pod goes.
        # TensorBoard's removal is the exception: it goes before the status stops naming it,
        # so an operator killed in between removes it on the next reconcile.
        if result.remove_tensorboard:
            await self._remove_tensorboard(ref)
        creates = asyncio.ensure_future(self._create_all(ref, result))
        try:
            present = await self._write_status(key, body, result)
        except BaseException:
            await asyncio.gather(creates, return_exceptions=True)
            raise
        for counter in result.counters:
            metrics.count(counter, namespace)
        for event in result.events:
            self.events.post(ref, event)
        deletes: list[Any] = []
        if present and result.delete_experiment:
            deletes.append(self._delete_experiment(ref))
        elif present:
            deletes += [self._delete_pod(ref, pod, uid) for pod, uid in result.delete_pods]
            deletes += [self._delete_service(ref, svc) for svc in result.delete_services]
        await gather([creates, *deletes])

    async def _delete_experiment(self, ref: ExperimentRef) -> None:
        if await self.client.delete(EXPERIMENTS.path(ref.namespace, ref.name), ref.uid):
            metrics.count("deleted", ref.namespace)

    async def _write_status(self, key: Key, body: Mapping[str, Any], result: Plan) -> bool:
        """Patch the status keys that changed; False when the Experiment is gone."""
        if result.status is None:
            return True
        patch = status_patch(body.get("status") or {}, result.status)
        if not patch:
            return True
        patch["lastReconcileTime"] = format_time(self.clock())
        try:
            updated = await self.client.merge_patch(
                EXPERIMENTS.path(*key, subresource="status"), {"status": patch})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        self.store(key, updated)
        return True

    async def _create_all(self, ref: ExperimentRef, result: Plan) -> None:
        """The model directory's claim first, then Secret, PodGroup and pods all at once, then
        the services: pods may exist before the Secret they refer to (the kubelet waits for
        it) and before their services (a replica retries a ps it cannot reach yet, for
        minutes). Pods go first, as training-operator orders them: they take longest to
        start, and neither a busy API server nor a tight rate limit holds them behind the
        services."""
        if ref.uid in self.expectations.doomed:
            return
        ensured = self.expectations.ensured
        # The claim goes before the pods that mount it (a 409 when it exists already).
        claims = CLAIMS.path(ref.namespace)
        if result.claim is not None:
            try:
                made = await self.client.create(claims, result.claim)
            except ApiError as error:
                if self._doomed_by(ref, error):
                    return
                raise
            if made:
                self.events.created(ref, "PersistentVolumeClaim",
                                    [result.claim["metadata"]["name"]])
        calls: list[Any] = []
        if result.ensure_secret and (ref.uid, "secret") not in ensured:
            calls.append(self._ensure(ref, "secret", SECRETS.path(ref.namespace),
                                      build_secret(ref, secrets.token_hex(32)), "Secret"))
        if result.configmap is not None:
            digest = hashlib.sha1(result.configmap["data"][contract.CLUSTER_KEY].encode())
            generation = f"configmap-{digest.hexdigest()}"
            if (ref.uid, generation) not in ensured:
                calls.append(self._ensure(ref, generation, CONFIGMAPS.path(ref.namespace),
                                          result.configmap, "ConfigMap", replace=True))
        if result.network_policy is not None and (ref.uid, "netpol") not in ensured:
            calls.append(self._ensure(
                ref, "netpol", NETWORK_POLICIES.path(ref.namespace), result.network_policy,
                "NetworkPolicy"))
        if result.podgroup is not None and (ref.uid, "podgroup") not in ensured:
            calls.append(self._ensure(
                ref, "podgroup", PODGROUPS.path(ref.namespace), result.podgroup, "PodGroup"))
        if result.tensorboard is not None and (ref.uid, "tensorboard") not in ensured:
            calls.append(self._ensure_tensorboard(ref, result))
        pods = [self._create(ref, "pods", "Pod", p) for p in result.create_pods]
        outcomes = await self._settle(ref, [*calls, *pods])
        if ref.uid in self.expectations.doomed:
            return  # the namespace is going: no more to create, nothing to retry or tell
        made_services = await self._settle(ref, [self._create(ref, "services", "Service", s)
                                                 for s in result.create_services])
        if ref.uid in self.expectations.doomed:
            return
        made_pods = outcomes[len(calls):]
        outcomes += made_services
        for kind, manifests, made in (("Pod", result.create_pods, made_pods),
                                      ("Service", result.create_services, made_services)):
            self.events.created(ref, kind, [m["metadata"]["name"] for m, ok
                                            in zip(manifests, made, strict=True) if ok is True])
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _doomed_by(self, ref: ExperimentRef, error: ApiError) -> bool:
        """Whether this refusal says the experiment's namespace is being deleted; if so,
        nothing more is created for it."""
        if not error.namespace_terminating:
            return False
        if ref.uid not in self.expectations.doomed:
            logger.info("namespace %s is being deleted: creating nothing more for %s",
                        ref.namespace, ref.name)
        self.expectations.doomed.add(ref.uid)
        return True

    async def _settle(self, ref: ExperimentRef, calls: list[Awaitable[Any]]) -> list[Any]:
        """Every call's result or exception, as gather(return_exceptions=True) gives them;
        but once one finds the namespace being deleted the others are cancelled, mostly while
        they still wait for the rate limiter: each would be refused the same way (client-go's
        controllers stop their slow-start batches there too)."""
        jobs = [asyncio.ensure_future(c) for c in calls]
        pending: set[asyncio.Future[Any]] = set(jobs)
        try:
            while pending:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                if ref.uid in self.expectations.doomed:
                    break
        finally:
            for job in pending:
                job.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return [asyncio.CancelledError() if job.cancelled() else job.exception() or job.result()
                for job in jobs]

    async def _ensure_tensorboard(self, ref: ExperimentRef, result: Plan) -> None:
        board = result.tensorboard
        assert board is not None
        await asyncio.gather(
            self._ensure(ref, "tensorboard-deployment", DEPLOYMENTS.path(ref.namespace),
                         board.deployment, "Deployment"),
            self._ensure(ref, "tensorboard-service", SERVICES.path(ref.namespace),
                         board.service, "Service"))
        self.expectations.ensured.add((ref.uid, "tensorboard"))

    async def _remove_tensorboard(self, ref: ExperimentRef) -> None:
        """Deletes TensorBoard's Deployment and Service if this Experiment owns them (a
        same-named object of someone else's is left alone)."""
        name = names.tensorboard_name(ref.name)
        for path, kind in ((DEPLOYMENTS.path(ref.namespace, name), "Deployment"),
                           (SERVICES.path(ref.namespace, name), "Service")):
            try:
                found = await self.client.request("GET", path)
            except ApiError as error:
                if error.status == 404:
                    continue
                raise
            meta = found.get("metadata") or {}
            if not any(o.get("uid") == ref.uid and o.get("controller")
                       for o in meta.get("ownerReferences") or []):
                continue
            if await self.client.delete(path, meta.get("uid")):
                self.events.post(ref, Event("Normal", f"SuccessfulDelete{kind}",
                                            f"Deleted {kind.lower()} {name}"))
        self.expectations.ensured -= {(ref.uid, "tensorboard"),
                                      (ref.uid, "tensorboard-deployment"),
                                      (ref.uid, "tensorboard-service")}

    async def _ensure(self, ref: ExperimentRef, what: str, path: str,
                      manifest: Mapping[str, Any], kind: str, replace: bool = False) -> None:
        """Create once per operator process; with ``replace``, an existing object's data is
        brought up to date (a ConfigMap after the spec was scaled)."""
        name = manifest["metadata"]["name"]
        try:
            made = await self.client.create(path, manifest)
        except ApiError as error:
            self._doomed_by(ref, error)
            raise
        if made:
            self.events.created(ref, kind, [name])
        elif replace:
            await self.client.merge_patch(f"{path}/{name}", {"data": manifest["data"]})
        self.expectations.ensured.add((ref.uid, what))

    async def _create(self, ref: ExperimentRef, plural: str, kind: str,
                      manifest: Mapping[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        try:
            created = await self.client.create(RESOURCES[plural].path(ref.namespace),
                                               manifest)
        except ApiError as error:
            if self._doomed_by(ref, error):
                raise  # no event: as client-go's pod control, say nothing of a going namespace
            # Rejected (quota, admission, a missing PriorityClass...): say so once, on the
            # Experiment, where users look; the reconcile is retried with backoff.
            reason = error.body.get("message") if isinstance(error.body, dict) else str(error)
            told = (ref.uid, name, str(reason))
            if told not in self.expectations.reported:
                self.expectations.reported.add(told)
                self.events.post(ref, Event("Warning", f"FailedCreate{kind}",
                                            f"Error creating {kind.lower()} {name}: {reason}"))
            raise
        if created:
            self.expectations.expect(ref.uid, plural, manifest)
        return created

    async def _delete_pod(self, ref: ExperimentRef, name: str, uid: str) -> None:
        if await self.client.delete(PODS.path(ref.namespace, name), uid):
            self.events.post(ref, Event("Normal", "SuccessfulDeletePod", f"Deleted pod {name}"))

    async def _delete_service(self, ref: ExperimentRef, name: str) -> None:
        if await self.client.delete(SERVICES.path(ref.namespace, name)):
            self.events.post(ref, Event("Normal", "SuccessfulDeleteService",
                                        f"Deleted service {name}"))
