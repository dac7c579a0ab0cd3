"""The reconcile decision: desired state versus observed state, as a pure function.

``plan()`` reads an Experiment and what exists of it (pods, services) and returns what to do:
objects to create or delete, the status to write, events to post. It performs no I/O, so every
policy is tested without a cluster; ``experiment_controller.py`` carries the plan out. Running
the same plan twice is harmless: names are deterministic and restarts are keyed by the failed
pod's uid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubelearn_spec import model, names, policy
from kubelearn_spec.model import ExperimentSpec
from kubelearn_spec.validate import SpecError

from .builders import (
    PodBuilder,
    TensorBoard,
    build_model_claim,
    build_podgroup,
    build_service,
    build_tensorboard,
    model_claim,
)
from .netpol import build_network_policy
from .objects import Event, ExperimentRef
from .pods import PodState
from .progress import progress_from_pods
from .settings import Settings
from .status import (
    clear_condition,
    format_time,
    get_condition,
    is_true,
    parse_time,
    phase,
    replica_statuses,
    set_condition,
    total_restarts,
)

STORAGE_CONDITION = "StorageReady"
#: True while a replica's container cannot start by itself (pods.STUCK_REASONS).
STUCK_CONDITION = "ReplicasStuck"
#: At most this many stuck pods are named in the condition's message.
STUCK_SHOWN = 5
#: True while a change of the worker count is refused (synchronous training).
SCALE_REFUSED = "ScaleRefused"
PODGROUP_MISSING = (f"PodGroup CRD {names.PODGROUP_GROUP}/{names.PODGROUP_VERSION} is not "
                    "installed: pods are scheduled without gang scheduling")


def model_dir(namespace: str, name: str) -> str:
    """Where an experiment keeps its checkpoints when its spec does not say."""
    return f"/tmp/kubelearn/{namespace}/{name}"


def parse_spec(spec: Any, *, name: str, namespace: str, default_image: str) -> ExperimentSpec:
    """Validate an Experiment's spec and fill in every default, the operator's included.

    Raises:
        SpecError: naming the offending field.
    """
    parsed = model.parse_spec(spec, name=name, namespace=namespace, stored=True)
    return dataclasses.replace(parsed, image=parsed.image or default_image,
                               model_dir=parsed.model_dir or model_dir(namespace, name))


#: How often an experiment waiting for its storage looks again (claims and storage classes
#: are not watched).
STORAGE_RETRY_SECONDS = 10.0


@dataclass(frozen=True)
class StorageClasses:
    """The cluster's storage classes, by name, and its default class (None: it has none)."""

    names: frozenset[str] = frozenset()
    default: str | None = None


@dataclass(frozen=True)
class Observed:
    """What exists of one experiment, as last seen."""

    pods: Mapping[str, PodState] = field(default_factory=dict)
    services: frozenset[str] = frozenset()
    podgroup_available: bool = False
    progress: Mapping[str, Any] | None = None  # polled from the running chief
    #: Whether the model directory's claim exists; None when not looked up (it is looked
    #: up only before the experiment has pods: see :func:`claim_to_check`).
    claim_exists: bool | None = None
    storage_classes: StorageClasses | None = None  # looked up when a claim is to be made


@dataclass
class Replicas:
    """The desired replicas' pods as observed, sorted by what is to be done about them."""

    permanent: list[PodState] = field(default_factory=list)  # failed for good
    restarts: list[PodState] = field(default_factory=list)  # failed, to be recreated
    all_running: bool = True


@dataclass
class Plan:
    status: dict[str, Any] | None = None
    ensure_secret: bool = False
    configmap: dict[str, Any] | None = None
    network_policy: dict[str, Any] | None = None
    podgroup: dict[str, Any] | None = None
    claim: dict[str, Any] | None = None  # created before any pod
    tensorboard: TensorBoard | None = None
    remove_tensorboard: bool = False  # spec.tensorboard turned off: its objects go
    create_services: list[dict[str, Any]] = field(default_factory=list)
    create_pods: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[tuple[str, str]] = field(default_factory=list)
    delete_services: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counters: list[str] = field(default_factory=list)
    delete_experiment: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


FAILURE_DETAIL_MAX = 300


def _describe_failure(pod: PodState) -> str:
    """What failed and, from its termination message, why (e.g. the runner's error)."""
    if pod.exit_code is not None:
        message = f"{pod.name} exited with code {pod.exit_code}"
    else:
        message = f"{pod.name} failed ({pod.reason or 'no exit code'})"
    detail = (pod.termination_message or "").strip()
    if detail.startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            detail = str(json.loads(detail).get("error") or "")
    detail = " ".join(detail.split())
    if detail:
        if len(detail) > FAILURE_DETAIL_MAX:
            detail = "..." + detail[-FAILURE_DETAIL_MAX:]
        message += f": {detail}"
    return message


def cleanup(pods: Mapping[str, PodState], services: frozenset[str], policy: str,
            failed: bool) -> tuple[list[tuple[str, str]], list[str]]:
    """Pods and services to delete once finished: failure always stops the active pods."""
    delete_pods = []
    for pod in pods.values():
        if pod.deleting:
            continue
        if (pod.active and (failed or policy in ("Running", "All"))) or policy == "All":
            delete_pods.append((pod.name, pod.uid))
    delete_services = sorted(services) if policy == "All" else []
    return delete_pods, delete_services


class _Planner:
    def __init__(self, body: Mapping[str, Any], observed: Observed, now: datetime,
                 settings: Settings) -> None:
        meta = body.get("metadata") or {}
        self.body = body
        self.observed = observed
        self.now = now
        self.settings = settings
        self.ref = ExperimentRef(meta.get("name", ""), meta.get("namespace", ""),
                                 meta.get("uid", ""))
        self.generation = meta.get("generation")
        self.old: Mapping[str, Any] = body.get("status") or {}
        self.conditions: list[dict[str, Any]] = [dict(c) for c in
                                                 self.old.get("conditions") or []]
        self.pod_restarts: dict[str, dict[str, Any]] = {
            k: dict(v) for k, v in (self.old.get("podRestarts") or {}).items()}
        self.status: dict[str, Any] = {}
        self.plan = Plan()

    @property
    def key(self) -> str:
        return f"{self.ref.namespace}/{self.ref.name}"

    def transition(self, ctype: str, reason: str, message: str, *, warning: bool = False,
                   counter: str | None = None) -> None:
        """Set a condition true; post an event and count it only when it becomes true."""
        if not is_true(self.conditions, ctype):
            self.plan.events.append(Event("Warning" if warning else "Normal", reason, message))
            if counter:
                self.plan.counters.append(counter)
        self.conditions = set_condition(self.conditions, ctype, True, reason, message, self.now)

    def clear(self, ctype: str, reason: str, message: str) -> None:
        self.conditions = clear_condition(self.conditions, ctype, reason, message, self.now)

    # -- outcome -------------------------------------------------------------------------
    def finish(self, succeeded: bool, reason: str, message: str) -> None:
        if succeeded:
            self.transition("Succeeded", reason, message, counter="succeeded")
        else:
            self.transition("Failed", reason, message, warning=True, counter="failed")
        self.clear("Running", reason, message)
        self.clear("Restarting", reason, message)
        self.status["completionTime"] = (self.old.get("completionTime")
                                         or format_time(self.now, round_up=True))

    def finished(self, spec: ExperimentSpec | None) -> None:
        """Already finished: keep cleaning up per policy and honour ttlSecondsAfterFinished;
        TensorBoard stays, to look at the results."""
        if spec is None:
            return
        self.tensorboard(spec)
        failed = is_true(self.conditions, "Failed")
        pods, services = cleanup(self.observed.pods, self.observed.services,
                                 spec.run_policy.clean_pod_policy, failed)
        self.plan.delete_pods += pods
        self.plan.delete_services += services
        ttl = spec.run_policy.ttl_seconds_after_finished
        done = parse_time(self.status.get("completionTime") or self.old.get("completionTime"))
        if ttl is not None and done is not None:
            left = (done.timestamp() + ttl) - self.now.timestamp()
            if left <= 0:
                self.plan.delete_experiment = True
                self.plan.events.append(Event(
                    "Normal", "ExperimentDeleted",
                    f"Experiment {self.key} deleted {ttl}s after it finished "
                    "(ttlSecondsAfterFinished)."))
            else:
                self.plan.requeue(left)

    # -- the whole decision ----------------------------------------------------------------
    def run(self) -> Plan:
        meta = self.body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return self.plan
        try:
            spec = parse_spec(self.body.get("spec") or {}, name=self.ref.name,
                              namespace=self.ref.namespace,
                              default_image=self.settings.image)
        except SpecError as error:
            self.transition("Failed", "InvalidSpec", str(error), warning=True, counter="failed")
            self.status["completionTime"] = (self.old.get("completionTime")
                                             or format_time(self.now, round_up=True))
            return self.done(None)
        if is_true(self.conditions, "Succeeded") or is_true(self.conditions, "Failed"):
            self.finished(spec)
            return self.done(spec)
        self.transition("Created", "ExperimentCreated", f"Experiment {self.key} is created.",
                        counter="created")
        if spec.run_policy.suspend:
            self.suspend(spec)
            return self.done(spec)
        if is_true(self.conditions, "Suspended"):
            self.conditions = set_condition(self.conditions, "Suspended", False,
                                            "ExperimentResumed",
                                            f"Experiment {self.key} is resumed.", self.now)
            self.plan.events.append(Event("Normal", "ExperimentResumed",
                                          f"Experiment {self.key} is resumed."))
            self.status["startTime"] = format_time(self.now, round_up=True)
        self.active(spec)
        return self.done(spec)

    def suspend(self, spec: ExperimentSpec) -> None:
        message = f"Experiment {self.key} is suspended."
        self.transition("Suspended", "ExperimentSuspended", message)
        self.clear("Running", "ExperimentSuspended", message)
        self.clear("Restarting", "ExperimentSuspended", message)
        for pod in self.observed.pods.values():
            if not pod.deleting and pod.phase != "Succeeded":
                self.plan.delete_pods.append((pod.name, pod.uid))
        # The deadline counts active time: it starts again on resume.
        self.status["startTime"] = None

    def scaling(self, spec: ExperimentSpec) -> ExperimentSpec:
        """The spec to run, with the worker count it may run: the spec's, unless the change
        is refused. Each accepted change of the count gets an event; ``status.workers`` holds
        the count run (the scale subresource's view).

        Synchronous training refuses a change (:func:`kubelearn_spec.policy.scale_refusal`),
        known from its chief's report of ``sync_replicas``: until the chief has reported, a
        change is taken."""
        wanted = spec.count(names.SCALED_ROLE)
        applied = (self.old.get("workers") or {}).get("desired")
        reported = self.observed.progress or self.old.get("metrics") or {}
        sync = reported.get("sync_replicas") if isinstance(reported, Mapping) else None
        if isinstance(applied, int) and applied != wanted and names.SCALED_ROLE in spec.replicas:
            if message := policy.scale_refusal(wanted, applied, sync):
                old = get_condition(self.conditions, SCALE_REFUSED) or {}
                if old.get("status") != "True" or old.get("message") != message:
                    self.plan.events.append(Event("Warning", "ScaleRefused", message))
                self.conditions = set_condition(self.conditions, SCALE_REFUSED, True,
                                                "SynchronousTraining", message, self.now)
                replica = dataclasses.replace(spec.replicas[names.SCALED_ROLE], replicas=applied)
                return dataclasses.replace(spec, replicas={**spec.replicas,
                                                           names.SCALED_ROLE: replica})
            if wanted > applied:
                self.plan.events.append(Event("Normal", "ScaledUp",
                                              f"Workers scaled from {applied} to {wanted}."))
            else:
                leaving = ", ".join(names.replica_name(self.ref.name, names.SCALED_ROLE, i)
                                    for i in range(wanted, min(applied, wanted + 10)))
                if applied - wanted > 10:
                    leaving += f" and {applied - wanted - 10} more"
                self.plan.events.append(Event(
                    "Normal", "ScaledDown",
                    f"Workers scaled from {applied} to {wanted}: {leaving} stop."))
        self.clear(SCALE_REFUSED, "ScaleAccepted",
                   f"spec.replicas.{names.SCALED_ROLE} is the worker count run.")
        return spec

    def workers_status(self, spec: ExperimentSpec,
                       statuses: Mapping[str, Mapping[str, int]]) -> None:
        self.status["workers"] = {
            "desired": spec.count(names.SCALED_ROLE),
            "active": int((statuses.get(names.SCALED_ROLE) or {}).get("active", 0)),
            "selector": f"{names.LABEL_EXPERIMENT}={self.ref.name},"
                        f"{names.LABEL_ROLE}={names.SCALED_ROLE}"}

    def active(self, spec: ExperimentSpec) -> None:
        """An experiment that runs: create what is missing, then decide its outcome."""
        spec = self.scaling(spec)
        start = self.start_time()
        self.plan.ensure_secret = True
        self.network_policy()
        gang = self.gang_scheduling(spec)
        builder = PodBuilder(self.ref, spec, cluster_domain=self.settings.cluster_domain,
                             gang=gang, inline_max=self.settings.inline_cluster_max,
                             encrypt_wire=self.settings.encrypt_wire,
                             image_pull_policy=self.settings.image_pull_policy)
        self.plan.configmap = builder.configmap()
        if not self.storage(spec):
            self.plan.configmap = None
            self.requeue_at_deadline(spec, start)
            self.plan.requeue(STORAGE_RETRY_SECONDS)
            return
        self.tensorboard(spec)
        desired = spec.replica_keys()
        desired_names = {names.replica_name(self.ref.name, r, i) for r, i in desired}
        self.scale_down(desired_names)
        replicas = self.create_missing(spec, builder, desired)
        new_restarts = [p for p in replicas.restarts
                        if self.pod_restarts.get(p.name, {}).get("uid") != p.uid]
        statuses = replica_statuses(
            spec.counts(), [p for n, p in self.observed.pods.items() if n in desired_names],
            self.pod_restarts)
        self.status["replicaStatuses"] = statuses
        self.workers_status(spec, statuses)
        self.progress(spec)
        if self.decide(spec, replicas, total_restarts(statuses) + len(new_restarts), start):
            self.plan.create_pods.clear()
            self.plan.create_services.clear()
            self.plan.configmap = None
            self.finished(spec)
            return
        self.report_evaluators(replicas.permanent, statuses)
        self.restart(replicas.restarts, new_restarts, statuses)
        self.running_conditions(replicas)
        self.stuck_replicas(desired_names)
        self.requeue_at_deadline(spec, start)

    def start_time(self) -> str:
        start = (self.status.get("startTime") or self.old.get("startTime")
                 or format_time(self.now, round_up=True))
        self.status["startTime"] = start
        return start

    def network_policy(self) -> None:
        if self.settings.network_policy is not None:
            self.plan.network_policy = build_network_policy(
                self.ref.name, self.ref.namespace, self.ref.owner_reference(),
                self.settings.network_policy)

    def storage(self, spec: ExperimentSpec) -> bool:
        """Whether the model directory's storage is there, or will be made with the pods;
        if not, say why and how to fix it (condition StorageReady False, an event)."""
        if spec.storage.object_store:
            secret = spec.storage.secret_name
            return self.storage_ready(
                True, "ObjectStore",
                f"The model directory is {spec.model_dir}, read and written through fsspec"
                + (f" with the credentials in Secret {secret}." if secret else "."))
        claim = model_claim(spec)
        if claim is None:
            return self.storage_ready(True, "Ephemeral", "The model directory is ephemeral: "
                                      "each pod has its own, lost with it.")
        ready = f"The model directory is on PersistentVolumeClaim {claim}."
        if self.observed.claim_exists is not False:
            return self.storage_ready(True, "ClaimReady", ready)
        storage = spec.storage
        ns = self.ref.namespace
        if storage.claim_name is not None:
            return self.storage_ready(
                False, "ClaimNotFound",
                f"spec.storage.persistentVolumeClaim.claimName: PersistentVolumeClaim "
                f"{claim} does not exist in namespace {ns}; create it, or name an existing "
                "claim. No pods are created until it exists.")
        classes = self.observed.storage_classes or StorageClasses()
        if storage.storage_class is None and classes.default is None:
            return self.storage_ready(
                False, "NoDefaultStorageClass",
                "The cluster has no default StorageClass, so the model directory's claim "
                f"{claim} cannot be made: set spec.storage.storageClassName, or "
                "spec.storage.persistentVolumeClaim.claimName to an existing claim, or "
                f"annotate a StorageClass {names.DEFAULT_CLASS_ANNOTATION}=true; or set "
                "spec.storage.ephemeral: true for a throwaway run. No pods are created "
                "until then.")
        if storage.storage_class is not None and storage.storage_class not in classes.names:
            return self.storage_ready(
                False, "StorageClassNotFound",
                f"spec.storage.storageClassName: StorageClass {storage.storage_class} does "
                "not exist; name an existing class. No pods are created until it exists.")
        self.plan.claim = build_model_claim(self.ref, spec)
        return self.storage_ready(True, "ClaimReady", ready)

    def tensorboard(self, spec: ExperimentSpec) -> None:
        """TensorBoard while ``spec.tensorboard`` is on. Turned off, its Deployment and
        Service go, and ``status.tensorboard`` with them: the status is what says they may
        exist, so it is cleared only by the status write that follows their deletion."""
        if spec.tensorboard:
            self.plan.tensorboard = build_tensorboard(
                self.ref, spec, self.settings.tensorboard_image, self.settings.image_pull_policy)
            self.status["tensorboard"] = {
                "service": names.tensorboard_name(self.ref.name),
                "url": TensorBoard.url(self.ref, self.settings.cluster_domain)}
        elif self.old.get("tensorboard"):
            self.plan.remove_tensorboard = True
            self.status["tensorboard"] = None

    def storage_ready(self, ready: bool, reason: str, message: str) -> bool:
        old = get_condition(self.conditions, STORAGE_CONDITION) or {}
        if not ready and old.get("reason") != reason:
            self.plan.events.append(Event("Warning", reason, message))
        self.conditions = set_condition(self.conditions, STORAGE_CONDITION, ready, reason,
                                        message, self.now)
        return ready

    def gang_scheduling(self, spec: ExperimentSpec) -> bool:
        """The PodGroup when gang scheduling is asked for and possible; whether it is."""
        if spec.run_policy.scheduling is None:
            return False
        if self.observed.podgroup_available:
            self.plan.podgroup = build_podgroup(self.ref, spec)
            self.status["podGroup"] = {"name": names.podgroup_name(self.ref.name),
                                       "message": ""}
            return True
        if (self.old.get("podGroup") or {}).get("message") != PODGROUP_MISSING:
            self.plan.events.append(Event("Warning", "PodGroupUnavailable", PODGROUP_MISSING))
        self.status["podGroup"] = {"name": "", "message": PODGROUP_MISSING}
        return False

    def scale_down(self, desired_names: set[str]) -> None:
        """Replicas beyond the spec (it was scaled down) go away with their services."""
        for name, pod in self.observed.pods.items():
            if name not in desired_names and not pod.deleting:
                self.plan.delete_pods.append((pod.name, pod.uid))
        self.plan.delete_services += sorted(s for s in self.observed.services
                                            if s not in desired_names)

    def create_missing(self, spec: ExperimentSpec, builder: PodBuilder,
                       desired: list[tuple[str, int]]) -> Replicas:
        """Services and pods that do not exist yet; the failed pods sorted by restart policy."""
        replicas = Replicas()
        for role, index in desired:
            name = names.replica_name(self.ref.name, role, index)
            if name not in self.observed.services:
                self.plan.create_services.append(build_service(self.ref, role, index))
            pod = self.observed.pods.get(name)
            if pod is None:
                count = int(self.pod_restarts.get(name, {}).get("count") or 0)
                self.plan.create_pods.append(builder.pod(role, index, restarts=count))
                replicas.all_running = False
                continue
            if pod.deleting or pod.phase not in ("Running", "Succeeded"):
                replicas.all_running = False
            if pod.deleting or pod.phase != "Failed":
                continue
            if policy.retries_failure(spec.replicas[role].restart_policy, pod.exit_code):
                replicas.restarts.append(pod)
            else:
                replicas.permanent.append(pod)
        return replicas

    def decide(self, spec: ExperimentSpec, replicas: Replicas, restarts: int,
               start: str) -> bool:
        """The outcome, in order: success, permanent failure, restarts past the limit,
        deadline. Whether the experiment is finished now."""
        limit = spec.run_policy.backoff_limit
        started = parse_time(start)
        if policy.succeeded(spec, self.replica_succeeded):
            self.finish(True, "ExperimentSucceeded",
                        f"Experiment {self.key} successfully completed.")
        elif decisive := [p for p in replicas.permanent if policy.decides_outcome(p.role)]:
            details = "; ".join(_describe_failure(p) for p in decisive[:5])
            self.finish(False, "ExperimentFailed",
                        f"Experiment {self.key} has failed because {len(decisive)} replica(s) "
                        f"failed: {details}.")
        elif policy.backoff_exceeded(restarts, limit):
            self.finish(False, "BackoffLimitExceeded",
                        f"Experiment {self.key} has failed because it has reached the "
                        f"specified backoff limit ({limit} restarts).")
        elif started is not None and policy.deadline_passed(
                started.timestamp(), self.now.timestamp(),
                spec.run_policy.active_deadline_seconds):
            self.finish(False, "DeadlineExceeded",
                        f"Experiment {self.key} has failed because it was active longer than "
                        f"activeDeadlineSeconds ({spec.run_policy.active_deadline_seconds}s).")
        return is_true(self.conditions, "Succeeded") or is_true(self.conditions, "Failed")

    def report_evaluators(self, permanent: list[PodState],
                          statuses: Mapping[str, Mapping[str, int]]) -> None:
        """Failed evaluators (all that is left of the permanent failures): reported only."""
        for pod in permanent:
            if statuses[pod.role]["failed"] > self.old_failed(pod.role):
                self.plan.events.append(Event(
                    "Warning", "ReplicaFailed",
                    f"{_describe_failure(pod)}; evaluators do not decide the experiment's "
                    "outcome."))

    def restart(self, restarts: list[PodState], new_restarts: list[PodState],
                statuses: dict[str, dict[str, int]]) -> None:
        """Delete the failed pods to be recreated; count each failure once (by pod uid)."""
        for pod in restarts:
            if pod in new_restarts:
                record = self.pod_restarts.get(pod.name, {})
                self.pod_restarts[pod.name] = {"role": pod.role,
                                               "count": int(record.get("count") or 0) + 1,
                                               "uid": pod.uid}
                statuses[pod.role]["restarts"] += 1
                self.plan.counters.append("restarted")
                self.plan.events.append(Event("Warning", "RestartingPod",
                                              f"Restarting {_describe_failure(pod)}."))
            self.plan.delete_pods.append((pod.name, pod.uid))

    def running_conditions(self, replicas: Replicas) -> None:
        if replicas.restarts:
            self.transition("Restarting", "ExperimentRestarting",
                            f"Experiment {self.key} is restarting because "
                            f"{len(replicas.restarts)} replica(s) failed.", warning=True)
            self.clear("Running", "ExperimentRestarting",
                       f"Experiment {self.key} is restarting.")
        elif replicas.all_running and any(p.phase == "Running"
                                          for p in self.observed.pods.values()):
            self.transition("Running", "ExperimentRunning", f"Experiment {self.key} is running.")
            self.clear("Restarting", "ExperimentRunning", f"Experiment {self.key} is running.")

    def stuck_replicas(self, desired_names: set[str]) -> None:
        """Says which replicas cannot start and why (the kubelet's reason and message), on
        the Experiment, where users look: a condition, and a Warning Event for each pod
        that newly gets stuck or is stuck for a new reason."""
        stuck = sorted((p for n, p in self.observed.pods.items()
                        if n in desired_names and p.active and p.stuck_reason),
                       key=lambda p: p.name)
        if not stuck:
            self.clear(STUCK_CONDITION, "ReplicasStarting",
                       f"No replica of experiment {self.key} is stuck.")
            return
        old = get_condition(self.conditions, STUCK_CONDITION)
        told = (old or {}).get("message", "") if is_true(self.conditions, STUCK_CONDITION) \
            else ""
        lines = [f"pod {p.name}: {p.stuck_reason}: {p.stuck_message}".rstrip(": ")
                 for p in stuck]
        for pod, line in zip(stuck[:STUCK_SHOWN], lines, strict=False):
            if f"pod {pod.name}: {pod.stuck_reason}" not in told:
                self.plan.events.append(Event("Warning", "ReplicaStuck", line))
        message = "; ".join(lines[:STUCK_SHOWN])
        if len(stuck) > STUCK_SHOWN:
            message += f"; and {len(stuck) - STUCK_SHOWN} more"
        self.conditions = set_condition(self.conditions, STUCK_CONDITION, True,
                                        stuck[0].stuck_reason, message, self.now)

    def requeue_at_deadline(self, spec: ExperimentSpec, start: str) -> None:
        deadline = spec.run_policy.active_deadline_seconds
        start_time = parse_time(start)
        if deadline is not None and start_time is not None:
            self.plan.requeue(start_time.timestamp() + deadline - self.now.timestamp())

    def old_failed(self, role: str) -> int:
        return int(((self.old.get("replicaStatuses") or {}).get(role) or {}).get("failed") or 0)

    def replica_succeeded(self, role: str, index: int) -> bool:
        pod = self.observed.pods.get(names.replica_name(self.ref.name, role, index))
        return pod is not None and pod.phase == "Succeeded"

    def progress(self, spec: ExperimentSpec) -> None:
        self.status.update(progress_from_pods(
            self.observed.pods.values(), spec.leader_role,
            dict(self.observed.progress) if self.observed.progress else None))

    def storage_status(self, spec: ExperimentSpec) -> dict[str, str]:
        """Where the model directory is, and the final export once the chief names it."""
        result = {"claimName": model_claim(spec) or "", "modelDir": spec.model_dir or ""}
        export = (self.status.get("metrics") or {}).get("export")
        if not isinstance(export, str):
            export = (self.old.get("storage") or {}).get("export")
        if isinstance(export, str) and export:
            result["export"] = export
        return result

    def done(self, spec: ExperimentSpec | None) -> Plan:
        status = self.status
        status["conditions"] = self.conditions
        status["phase"] = phase(self.conditions)
        status["observedGeneration"] = self.generation
        if self.pod_restarts:
            status["podRestarts"] = self.pod_restarts
        if spec is not None:
            status["storage"] = self.storage_status(spec)
            statuses = status.get("replicaStatuses")
            if statuses is None:
                statuses = replica_statuses(spec.counts(), self.observed.pods.values(),
                                            self.pod_restarts)
                status["replicaStatuses"] = statuses
            _keep_restarts(statuses, self.old.get("replicaStatuses"))
            if is_true(self.conditions, "Succeeded") or is_true(self.conditions, "Failed"):
                _keep_final_counts(statuses, self.old.get("replicaStatuses"))
                shown = sum(s["succeeded"] for s in statuses.values())
            else:
                shown = sum(s["active"] for s in statuses.values())
            status["replicas"] = f"{shown}/{spec.total_replicas}"
        self.plan.status = status
        return self.plan


def _keep_final_counts(statuses: dict[str, dict[str, int]], old: Any) -> None:
    """Once finished, what each replica ended as stays counted, as TFJob keeps it: a pod
    deleted by clean-up (cleanPodPolicy) does not take its success or failure with it."""
    if not isinstance(old, Mapping):
        return
    for role, entry in statuses.items():
        before = old.get(role)
        if not isinstance(before, Mapping):
            continue
        for key in ("succeeded", "failed"):
            value = before.get(key)
            if isinstance(value, int) and value > entry[key]:
                entry[key] = value


def _keep_restarts(statuses: dict[str, dict[str, int]], old: Any) -> None:
    """Restarts only ever grow: a pod deleted at the end (cleanPodPolicy) takes its kubelet's
    restart count with it, but the status keeps what it already reported."""
    if not isinstance(old, Mapping):
        return
    for role, entry in statuses.items():
        before = (old.get(role) or {}).get("restarts") if isinstance(old.get(role), Mapping) \
            else None
        if isinstance(before, int) and before > entry["restarts"]:
            entry["restarts"] = before


def claim_to_check(body: Mapping[str, Any], observed: Observed,
                   settings: Settings | None = None) -> tuple[str, bool] | None:
    """The claim whose existence a reconcile needs to know, and whether the operator would
    create it; None when it needs neither.

    Only an experiment that runs and has no pods yet (first start, resumed, or waiting
    for its storage) asks: once pods mount the claim, its fate is theirs to report.
    """
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp") or observed.pods:
        return None
    conditions = (body.get("status") or {}).get("conditions") or []
    if is_true(conditions, "Succeeded") or is_true(conditions, "Failed"):
        return None
    try:
        spec = parse_spec(body.get("spec") or {}, name=meta.get("name", ""),
                          namespace=meta.get("namespace", ""),
                          default_image=(settings or Settings()).image)
    except SpecError:
        return None
    if spec.run_policy.suspend or (claim := model_claim(spec)) is None:
        return None
    return claim, spec.storage.creates_claim


def plan(body: Mapping[str, Any], observed: Observed, now: datetime,
         settings: Settings | None = None) -> Plan:
    """Decide what to do for one Experiment, under the operator's ``settings``. Pure: no I/O,
    ``now`` is passed in."""
    return _Planner(body, observed, now, settings or Settings()).run()


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch of the status keys that changed (None removes a key)."""
    return {k: v for k, v in new.items() if old.get(k) != v and not (v is None and k not in old)}
