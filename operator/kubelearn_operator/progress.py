"""Training progress reported by the runner, lifted from pods into the Experiment's status.

While training, the chief serves its progress (``{"global_step": 120, "loss": 0.31, ...}``)
on ``http://<pod IP>:2223/progress``; the controller polls it (the runner needs no API
permissions). When it exits, its termination message holds the final metrics. The replica
that decides success (chief or master, else worker 0) is the one shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

from .pods import PodState


def _parse(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def reporter(pods: Iterable[PodState], leader_role: str | None) -> PodState | None:
    """The pod whose progress the experiment shows."""
    role = leader_role or "worker"
    for pod in pods:
        if pod.role == role and pod.index == 0:
            return pod
    return None


def progress_from_pods(pods: Iterable[PodState], leader_role: str | None,
                       polled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Status fields (``metrics``, ``step``, ``loss``) from the reporting replica; {} if none.

    The termination message wins (it is the runner's final word), then the progress polled
    from the running chief.
    """
    pod = reporter(pods, leader_role)
    if pod is None:
        return {}
    metrics = _parse(pod.termination_message) or (polled if isinstance(polled, dict) else None)
    if metrics is None:
        return {}
    result: dict[str, Any] = {"metrics": metrics}
    step = metrics.get("step", metrics.get("global_step"))
    if isinstance(step, (int, float)) and not isinstance(step, bool):
        result["step"] = int(step)
    loss = metrics.get("loss")
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
        result["loss"] = float(loss)
    return result
