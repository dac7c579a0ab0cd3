"""The Experiment's types and defaults, and the one parser that fills them in.

:func:`parse_manifest` reads a whole manifest (``kubelearn local``); :func:`parse_spec` the
spec of an object the API server already holds (the operator). Both check it first against
the schema the CRD is generated from (:mod:`.validate`), so a manifest either runs in both
places or is refused in both, with the same field named.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import names
from .schema import (
    DEFAULT_ACCESS_MODES,
    DEFAULT_BACKOFF_LIMIT,
    DEFAULT_CLEAN_POD_POLICY,
    DEFAULT_RESTART_POLICY,
    DEFAULT_STORAGE_SIZE,
    DEFAULT_SUCCESS_POLICY,
    is_url,
    role_count,
)
from .validate import UNKNOWN, check_experiment, manifest_namespace


@dataclass(frozen=True)
class ReplicaSpec:
    """One role: how many replicas, how they restart, their pod template."""

    role: str
    replicas: int
    restart_policy: str = DEFAULT_RESTART_POLICY
    template: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SchedulingPolicy:
    """Gang scheduling through a scheduler-plugins PodGroup."""

    min_available: int | None = None
    queue: str | None = None
    priority_class: str | None = None
    scheduler_name: str = names.DEFAULT_GANG_SCHEDULER
    schedule_timeout_seconds: int | None = None


@dataclass(frozen=True)
class RunPolicy:
    """What happens around the replicas: clean-up, restarts, deadlines, suspension."""

    clean_pod_policy: str = DEFAULT_CLEAN_POD_POLICY
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False
    scheduling: SchedulingPolicy | None = None


@dataclass(frozen=True)
class Storage:
    """Where the model directory lives.

    ``ephemeral``: in each pod, lost with it. ``object_store``: the model directory is a
    URL, reached through fsspec with the credentials in Secret ``secret_name``; no volume.
    Otherwise a claim mounted at the model directory: ``claim_name`` when the spec names an
    existing one, else the claim the operator creates (``<name>-model``) with ``size``,
    ``storage_class`` (None: the cluster's default class) and ``access_modes``.
    """

    ephemeral: bool = False
    claim_name: str | None = None
    size: str = DEFAULT_STORAGE_SIZE
    storage_class: str | None = None
    access_modes: tuple[str, ...] = DEFAULT_ACCESS_MODES
    delete_with_experiment: bool = False
    object_store: bool = False
    secret_name: str | None = None

    @property
    def on_volume(self) -> bool:
        """Whether a claim holds the model directory."""
        return not (self.ephemeral or self.object_store)

    @property
    def creates_claim(self) -> bool:
        return self.on_volume and self.claim_name is None


@dataclass(frozen=True)
class ExperimentSpec:
    """A checked Experiment with its defaults; ``image`` and ``model_dir`` stay None
    where the spec leaves them to whoever runs it."""

    name: str
    namespace: str
    #: None: no runner is injected; each main container runs its own program.
    experiment_fn: str | None
    hparams: Mapping[str, Any]
    replicas: Mapping[str, ReplicaSpec]
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    success_policy: str = DEFAULT_SUCCESS_POLICY
    image: str | None = None  # None: the operator's default image
    model_dir: str | None = None  # None: where the launcher or operator puts it
    schedule: str | None = None  # None: the default schedule of the replica's role
    storage: Storage = field(default_factory=Storage)
    tensorboard: bool = False

    def count(self, role: str) -> int:
        spec = self.replicas.get(role)
        return spec.replicas if spec else 0

    def counts(self) -> dict[str, int]:
        return {role: r.replicas for role, r in self.replicas.items()}

    @property
    def total_replicas(self) -> int:
        return sum(s.replicas for s in self.replicas.values())

    @property
    def leader_role(self) -> str | None:
        """The chief or master role when one is present: its replica decides success."""
        for role in names.LEADER_ROLES:
            if self.count(role):
                return role
        return None

    def replica_keys(self) -> list[tuple[str, int]]:
        """Every (role, index) the experiment runs, in creation order."""
        return [(role, i) for role in names.ROLES for i in range(self.count(role))]


def _replicas(spec: Mapping[str, Any]) -> dict[str, ReplicaSpec]:
    full = spec.get("replicaSpecs") or {}
    result = {}
    for role in names.ROLES:
        if role not in full and role not in (spec.get("replicas") or {}):
            continue
        entry = full.get(role) or {}
        result[role] = ReplicaSpec(role, role_count(spec, role),
                                   entry.get("restartPolicy") or DEFAULT_RESTART_POLICY,
                                   dict(entry.get("template") or {}))
    return result


def _run_policy(value: Mapping[str, Any]) -> RunPolicy:
    scheduling = None
    sp = value.get("schedulingPolicy")
    if sp is not None:
        scheduling = SchedulingPolicy(
            min_available=sp.get("minAvailable"),
            queue=sp.get("queue") or None,
            priority_class=sp.get("priorityClass") or None,
            scheduler_name=sp.get("schedulerName") or names.DEFAULT_GANG_SCHEDULER,
            schedule_timeout_seconds=sp.get("scheduleTimeoutSeconds"))
    backoff = value.get("backoffLimit")
    return RunPolicy(
        clean_pod_policy=value.get("cleanPodPolicy") or DEFAULT_CLEAN_POD_POLICY,
        backoff_limit=DEFAULT_BACKOFF_LIMIT if backoff is None else backoff,
        active_deadline_seconds=value.get("activeDeadlineSeconds"),
        ttl_seconds_after_finished=value.get("ttlSecondsAfterFinished"),
        suspend=bool(value.get("suspend", False)),
        scheduling=scheduling)


def _storage(value: Mapping[str, Any], model_dir: str | None) -> Storage:
    claim = value.get("persistentVolumeClaim")
    return Storage(
        ephemeral=bool(value.get("ephemeral", False)),
        claim_name=claim["claimName"] if claim else None,
        size=value.get("size") or DEFAULT_STORAGE_SIZE,
        storage_class=value.get("storageClassName"),
        access_modes=tuple(value.get("accessModes") or DEFAULT_ACCESS_MODES),
        delete_with_experiment=bool(value.get("deleteWithExperiment", False)),
        object_store=is_url(model_dir),
        secret_name=value.get("secretName"))


def _build(body: Mapping[str, Any], namespace: str) -> ExperimentSpec:
    name = body["metadata"]["name"]
    spec = body["spec"]
    return ExperimentSpec(
        name=name,
        namespace=namespace,
        experiment_fn=spec.get("experimentFn"),
        hparams=dict(spec.get("hparams") or {}),
        replicas=_replicas(spec),
        run_policy=_run_policy(spec.get("runPolicy") or {}),
        success_policy=spec.get("successPolicy") or DEFAULT_SUCCESS_POLICY,
        image=spec.get("image"),
        model_dir=spec.get("modelDir"),
        schedule=spec.get("schedule"),
        storage=_storage(spec.get("storage") or {}, spec.get("modelDir")),
        tensorboard=bool(spec.get("tensorboard", False)))


def parse_spec(spec: Any, *, name: str, namespace: str, stored: bool = False
               ) -> ExperimentSpec:
    """The spec of the Experiment ``namespace/name``, checked and with its defaults.

    ``stored``: the spec is read back from the API server, which checked the rules that
    compare it with the one it replaced (a scaled spec may give a count twice).

    Raises:
        SpecError: naming the offending field.
    """
    body = check_experiment({"metadata": {"name": name}, "spec": spec},
                            UNKNOWN if stored else None)
    return _build(body, namespace)


def parse_manifest(manifest: Any, old: Mapping[str, Any] | None = None) -> ExperimentSpec:
    """A whole manifest (the YAML a user would ``kubectl apply``), checked; as an update of
    ``old`` when given (the rules that compare with the stored object see it).

    Raises:
        SpecError: naming the offending field.
    """
    namespace = manifest_namespace(manifest, names.KIND)
    return _build(check_experiment(manifest, old), namespace)


def scaled_manifest(manifest: Mapping[str, Any], workers: int) -> dict[str, Any]:
    """The manifest as the scale subresource (``kubectl scale``) leaves it: the worker
    count in ``spec.replicas.worker``, which wins over ``replicaSpecs.worker.replicas``."""
    result = copy.deepcopy(dict(manifest))
    spec = result.setdefault("spec", {})
    spec["replicas"] = {**(spec.get("replicas") or {}), names.SCALED_ROLE: workers}
    return result
