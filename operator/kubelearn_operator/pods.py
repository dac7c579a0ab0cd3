"""What the operator needs to know about a pod, read from its manifest (no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubelearn_spec import containers as main_containers
from kubelearn_spec import contract, names

ACTIVE_PHASES = ("Pending", "Running", "Unknown")
#: A container waiting for one of these will not start by itself: the user must act.
STUCK_REASONS = frozenset({
    "CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ImagePullBackOff",
    "ErrImageNeverPull", "InvalidImageName", "CrashLoopBackOff", "RunContainerError"})
#: The kubelet's message is kept up to this many characters.
MAX_WAITING_MESSAGE = 300


@dataclass(frozen=True)
class PodState:
    name: str
    uid: str
    experiment: str
    role: str
    index: int
    phase: str
    exit_code: int | None = None
    restart_count: int = 0
    deleting: bool = False
    reason: str = ""
    termination_message: str | None = None
    owner_uid: str = ""
    pod_ip: str = ""
    #: Why a container of the pod cannot start (one of STUCK_REASONS), and the kubelet's
    #: message; '' while nothing is stuck.
    stuck_reason: str = ""
    stuck_message: str = ""

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES and not self.deleting


def _main_status(pod: Mapping[str, Any], statuses: list[Mapping[str, Any]]
                 ) -> Mapping[str, Any] | None:
    """The main container's status (:mod:`kubelearn_spec.containers` decides which it is
    from the pod's spec), else the first."""
    containers = list((pod.get("spec") or {}).get("containers") or [])
    index = main_containers.main_container_index(containers)
    wanted = containers[index].get("name") if index is not None else contract.CONTAINER_NAME
    for status in statuses:
        if status.get("name") == wanted:
            return status
    return statuses[0] if statuses else None


def _stuck(statuses: list[Mapping[str, Any]], main: Mapping[str, Any] | None
           ) -> tuple[str, str]:
    """The first stuck container's waiting reason and message, the main container first."""
    for status in ([main] if main is not None else []) + statuses:
        waiting = (status.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in STUCK_REASONS:
            message = str(waiting.get("message") or "")[:MAX_WAITING_MESSAGE]
            return str(reason), message
    return "", ""


def pod_state(pod: Mapping[str, Any]) -> PodState | None:
    """Summary of a pod of an experiment; None when the pod is not labelled as one."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        experiment = labels[names.LABEL_EXPERIMENT]
        role = labels[names.LABEL_ROLE]
        index = int(labels[names.LABEL_INDEX])
    except (KeyError, ValueError):
        return None
    status = pod.get("status") or {}
    statuses = list(status.get("containerStatuses") or [])
    main = _main_status(pod, statuses)
    stuck_reason, stuck_message = _stuck(
        [*statuses, *(status.get("initContainerStatuses") or [])], main)
    exit_code = None
    termination_message = None
    if main is not None:
        terminated = (main.get("state") or {}).get("terminated")
        if terminated:
            exit_code = terminated.get("exitCode")
            termination_message = terminated.get("message")
    return PodState(
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        experiment=experiment,
        role=role,
        index=index,
        phase=status.get("phase") or "Pending",
        exit_code=exit_code,
        restart_count=sum(int(s.get("restartCount") or 0) for s in statuses),
        deleting=bool(meta.get("deletionTimestamp")),
        reason=status.get("reason") or "",
        termination_message=termination_message,
        owner_uid=controller_uid(meta),
        pod_ip=status.get("podIP") or "",
        stuck_reason=stuck_reason,
        stuck_message=stuck_message,
    )


def controller_uid(meta: Mapping[str, Any]) -> str:
    """Uid of the object's controlling owner ('' when it has none)."""
    for owner in meta.get("ownerReferences") or []:
        if owner.get("controller"):
            return str(owner.get("uid") or "")
    return ""
