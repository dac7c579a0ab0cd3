"""Status bookkeeping: conditions, phase and per-role replica counts (pure functions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .pods import PodState

#: Phase is the highest-ranked true condition.
_PHASE_ORDER = ("Failed", "Succeeded", "Suspended", "Restarting", "Running", "Created")


def format_time(moment: datetime, *, round_up: bool = False) -> str:
    """RFC 3339 in whole seconds, as Kubernetes writes times.

    ``round_up`` for times that deadlines count from (start, completion): truncated, they
    would make activeDeadlineSeconds and ttlSecondsAfterFinished fire up to a second early.
    """
    moment = moment.astimezone(timezone.utc)
    if round_up and moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def get_condition(conditions: Sequence[Mapping[str, Any]], ctype: str) -> Mapping[str, Any] | None:
    for condition in conditions:
        if condition.get("type") == ctype:
            return condition
    return None


def is_true(conditions: Sequence[Mapping[str, Any]], ctype: str) -> bool:
    condition = get_condition(conditions, ctype)
    return condition is not None and condition.get("status") == "True"


def set_condition(conditions: Sequence[Mapping[str, Any]], ctype: str, status: bool,
                  reason: str, message: str, now: datetime) -> list[dict[str, Any]]:
    """Conditions with ``ctype`` set; times move only when something about it changes."""
    value = "True" if status else "False"
    stamp = format_time(now)
    result: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        condition = dict(condition)
        if condition.get("type") == ctype:
            found = True
            if condition.get("status") != value:
                condition["lastTransitionTime"] = stamp
                condition["lastUpdateTime"] = stamp
            elif condition.get("reason") != reason or condition.get("message") != message:
                condition["lastUpdateTime"] = stamp
            condition.update(status=value, reason=reason, message=message)
        result.append(condition)
    if not found:
        result.append({"type": ctype, "status": value, "reason": reason, "message": message,
                       "lastUpdateTime": stamp, "lastTransitionTime": stamp})
    return result


def clear_condition(conditions: Sequence[Mapping[str, Any]], ctype: str, reason: str,
                    message: str, now: datetime) -> list[dict[str, Any]]:
    """Set ``ctype`` to False only if it is present and true (absent stays absent)."""
    if is_true(conditions, ctype):
        return set_condition(conditions, ctype, False, reason, message, now)
    return [dict(c) for c in conditions]


def phase(conditions: Sequence[Mapping[str, Any]]) -> str:
    for ctype in _PHASE_ORDER:
        if is_true(conditions, ctype):
            return ctype
    return "Pending"


def replica_statuses(counts: Mapping[str, int], pods: Iterable[PodState],
                     pod_restarts: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per role: active, succeeded, failed pods and restarts (by the operator and the kubelet)."""
    result = {role: {"active": 0, "succeeded": 0, "failed": 0, "restarts": 0}
              for role, n in counts.items() if n > 0}
    for pod in pods:
        entry = result.get(pod.role)
        if entry is None:
            continue
        if pod.active:
            entry["active"] += 1
        elif pod.phase == "Succeeded":
            entry["succeeded"] += 1
        elif pod.phase == "Failed":
            entry["failed"] += 1
        entry["restarts"] += pod.restart_count
    for record in pod_restarts.values():
        entry = result.get(str(record.get("role")))
        if entry is not None:
            entry["restarts"] += int(record.get("count") or 0)
    return result


def total_restarts(statuses: Mapping[str, Mapping[str, int]]) -> int:
    return sum(s["restarts"] for s in statuses.values())
