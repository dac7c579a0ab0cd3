"""Experiment spec: defaults and validation, turning the two accepted forms into one model.

The CRD's schema and CEL rules reject invalid specs at the API server; the same rules are
checked here so that the operator never acts on a spec the server would not have accepted
(for example one stored before the CRD was updated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import naming

RESTART_POLICIES = ("Never", "OnFailure", "Always", "ExitCode")
CLEAN_POD_POLICIES = ("None", "Running", "All")
SUCCESS_POLICIES = ("", "default", "AllWorkers")

DEFAULT_RESTART_POLICY = "ExitCode"
DEFAULT_CLEAN_POD_POLICY = "Running"
DEFAULT_BACKOFF_LIMIT = 6

_EXPERIMENT_FN = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: The CRD's ``maximum`` for a role's replica count (crds/experiments.kubelearn.dev.yaml).
MAX_REPLICAS = 100_000


class SpecError(ValueError):
    """An Experiment spec the operator cannot run; the message names the field."""


@dataclass(frozen=True)
class ReplicaSpec:
    role: str
    replicas: int
    restart_policy: str = DEFAULT_RESTART_POLICY
    template: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SchedulingPolicy:
    min_available: int | None = None
    queue: str | None = None
    priority_class: str | None = None
    scheduler_name: str = naming.DEFAULT_GANG_SCHEDULER
    schedule_timeout_seconds: int | None = None


@dataclass(frozen=True)
class RunPolicy:
    clean_pod_policy: str = DEFAULT_CLEAN_POD_POLICY
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    suspend: bool = False
    scheduling: SchedulingPolicy | None = None


@dataclass(frozen=True)
class ExperimentSpec:
    experiment_fn: str
    hparams: Mapping[str, Any]
    image: str
    model_dir: str
    schedule: str | None
    replicas: Mapping[str, ReplicaSpec]
    run_policy: RunPolicy
    success_policy: str = "default"

    def count(self, role: str) -> int:
        spec = self.replicas.get(role)
        return spec.replicas if spec else 0

    @property
    def total_replicas(self) -> int:
        return sum(s.replicas for s in self.replicas.values())

    @property
    def leader_role(self) -> str | None:
        """The chief or master role when one is present: its replica decides success."""
        for role in naming.LEADER_ROLES:
            if self.count(role):
                return role
        return None

    def replica_keys(self) -> list[tuple[str, int]]:
        """Every (role, index) the experiment runs, in creation order."""
        return [(role, i) for role in naming.ROLES for i in range(self.count(role))]


def _int(value: Any, path: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path} must be an integer, got {str(value)[:100]!r}")
    if value < minimum:
        raise SpecError(f"{path} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{path} must be <= {maximum}, got {value}")
    return value


def _optional_int(value: Any, path: str, minimum: int) -> int | None:
    return None if value is None else _int(value, path, minimum)


def _role_map(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path} must be an object keyed by role")
    for key in value:
        if key not in naming.ROLES:
            raise SpecError(
                f"{path} keys must be roles: ps, worker, master, chief, evaluator; got {key!r}")
    return value


def _replica_specs(spec: Mapping[str, Any]) -> dict[str, ReplicaSpec]:
    counts = _role_map(spec.get("replicas"), "spec.replicas")
    full = _role_map(spec.get("replicaSpecs"), "spec.replicaSpecs")
    result: dict[str, ReplicaSpec] = {}
    for role in naming.ROLES:
        entry = full.get(role)
        if entry is not None and not isinstance(entry, Mapping):
            raise SpecError(f"spec.replicaSpecs.{role} must be an object")
        entry = entry or {}
        if role in counts and "replicas" in entry:
            raise SpecError(f"spec.replicas.{role} and spec.replicaSpecs.{role}.replicas are "
                            "both set; give the count once")
        if "replicas" in entry:
            count = _int(entry["replicas"], f"spec.replicaSpecs.{role}.replicas", 0,
                         MAX_REPLICAS)
        elif role in counts:
            count = _int(counts[role], f"spec.replicas.{role}", 0, MAX_REPLICAS)
        elif role in full:
            count = 1
        else:
            continue
        policy = entry.get("restartPolicy") or DEFAULT_RESTART_POLICY
        if policy not in RESTART_POLICIES:
            raise SpecError(f"spec.replicaSpecs.{role}.restartPolicy must be one of "
                            f"{', '.join(RESTART_POLICIES)}; got {policy!r}")
        template = entry.get("template") or {}
        if not isinstance(template, Mapping):
            raise SpecError(f"spec.replicaSpecs.{role}.template must be a PodTemplateSpec object")
        result[role] = ReplicaSpec(role, count, policy, template)
    return result


def _run_policy(value: Any) -> RunPolicy:
    value = value or {}
    if not isinstance(value, Mapping):
        raise SpecError("spec.runPolicy must be an object")
    clean = value.get("cleanPodPolicy") or DEFAULT_CLEAN_POD_POLICY
    if clean not in CLEAN_POD_POLICIES:
        raise SpecError(f"spec.runPolicy.cleanPodPolicy must be one of "
                        f"{', '.join(CLEAN_POD_POLICIES)}; got {clean!r}")
    backoff = value.get("backoffLimit")
    scheduling = None
    sp = value.get("schedulingPolicy")
    if sp is not None:
        if not isinstance(sp, Mapping):
            raise SpecError("spec.runPolicy.schedulingPolicy must be an object")
        scheduling = SchedulingPolicy(
            min_available=_optional_int(sp.get("minAvailable"),
                                        "spec.runPolicy.schedulingPolicy.minAvailable", 1),
            queue=sp.get("queue") or None,
            priority_class=sp.get("priorityClass") or None,
            scheduler_name=sp.get("schedulerName") or naming.DEFAULT_GANG_SCHEDULER,
            schedule_timeout_seconds=_optional_int(
                sp.get("scheduleTimeoutSeconds"),
                "spec.runPolicy.schedulingPolicy.scheduleTimeoutSeconds", 1),
        )
    suspend = value.get("suspend", False)
    if not isinstance(suspend, bool):
        raise SpecError(f"spec.runPolicy.suspend must be true or false, got {suspend!r}")
    return RunPolicy(
        clean_pod_policy=clean,
        backoff_limit=DEFAULT_BACKOFF_LIMIT if backoff is None
        else _int(backoff, "spec.runPolicy.backoffLimit", 0),
        active_deadline_seconds=_optional_int(
            value.get("activeDeadlineSeconds"), "spec.runPolicy.activeDeadlineSeconds", 1),
        ttl_seconds_after_finished=_optional_int(
            value.get("ttlSecondsAfterFinished"), "spec.runPolicy.ttlSecondsAfterFinished", 0),
        suspend=suspend,
        scheduling=scheduling,
    )


def max_name_length(counts: Mapping[str, int]) -> int:
    """Longest experiment name whose ``<name>-<role>-<index>`` names all fit a DNS label."""
    limits = [naming.MAX_DNS_LABEL - len(role) - 2 - len(str(n - 1))
              for role, n in counts.items() if n > 0]
    return min(limits, default=naming.MAX_DNS_LABEL)


def parse_spec(spec: Mapping[str, Any], *, name: str, namespace: str,
               default_image: str) -> ExperimentSpec:
    """Validate an Experiment's spec and fill in the defaults.

    Raises:
        SpecError: naming the offending field.
    """
    if not isinstance(spec, Mapping):
        raise SpecError("spec must be an object")
    fn = spec.get("experimentFn")
    if not isinstance(fn, str) or not _EXPERIMENT_FN.fullmatch(fn):
        raise SpecError("spec.experimentFn must be of the form module:function, "
                        "e.g. kubelearn.examples.linear:experiment_fn")
    hparams = spec.get("hparams") or {}
    if not isinstance(hparams, Mapping):
        raise SpecError("spec.hparams must be an object")
    replicas = _replica_specs(spec)
    counts = {role: r.replicas for role, r in replicas.items()}
    for role in naming.LEADER_ROLES:
        if counts.get(role, 0) > 1:
            raise SpecError(f"spec.replicas.{role} (or spec.replicaSpecs.{role}.replicas) must "
                            f"be 0 or 1: at most one {role}")
    if counts.get("master", 0) and counts.get("chief", 0):
        raise SpecError("spec.replicas: master and chief are exclusive; set one of them")
    if not (counts.get("worker", 0) or counts.get("master", 0) or counts.get("chief", 0)):
        raise SpecError("spec.replicas: at least one worker or master (or chief) is required")
    if not _DNS_1035.fullmatch(name):
        raise SpecError("metadata.name must be a DNS-1035 label (lower-case letters, digits "
                        "and '-', starting with a letter): it names the experiment's services")
    if len(name) > max_name_length(counts):
        raise SpecError("metadata.name is too long: every pod and service name "
                        "<name>-<role>-<index> must fit in 63 characters")
    success = spec.get("successPolicy") or "default"
    if success not in SUCCESS_POLICIES:
        raise SpecError(f"spec.successPolicy must be default or AllWorkers; got {success!r}")
    schedule = spec.get("schedule") or None
    return ExperimentSpec(
        experiment_fn=fn,
        hparams=dict(hparams),
        image=spec.get("image") or default_image,
        model_dir=spec.get("modelDir") or f"/tmp/kubelearn/{namespace}/{name}",
        schedule=schedule,
        replicas=replicas,
        run_policy=_run_policy(spec.get("runPolicy")),
        success_policy=success,
    )
