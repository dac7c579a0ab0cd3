"""Training progress reported by the runner, lifted from pods into the Experiment's status.

While training, the chief serves its progress (``{"global_step": 120, "loss": 0.31, ...}``)
on ``http://<pod IP>:2223/progress``; the controller polls it (the runner needs no API
permissions). When it exits, its termination message holds the final metrics. The replica
that decides success (chief or master, else worker 0) is the one shown.

Everything here comes from the experiment's own pods, so none of it is trusted: a request
to the endpoint carries the experiment's token (``Authorization: Bearer``, read from the
experiment's Secret), a response is read up to MAX_REPORT_BYTES, and what is copied into
the status is capped (:func:`cap_metrics`).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from kubelearn_spec import contract

from .pods import PodState

MAX_REPORT_BYTES = 16 << 10
MAX_DEPTH = 8
#: What the status keeps of a report: entries, key length, string length, nesting.
MAX_STATUS_ENTRIES = 32
MAX_KEY_CHARS = 64
MAX_STRING_CHARS = 256
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _parse(text: str | bytes | None) -> dict[str, Any] | None:
    """A JSON object of at most MAX_REPORT_BYTES and MAX_DEPTH levels, else None."""
    if not text or len(text) > MAX_REPORT_BYTES:
        return None
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = 0
    for byte in data.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > MAX_DEPTH:
            return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _capped(value: Any, depth: int) -> tuple[bool, Any]:
    if value is None or isinstance(value, bool):
        return True, value
    if isinstance(value, int):
        return abs(value) < 1 << 63, value
    if isinstance(value, float):
        return math.isfinite(value), value
    if isinstance(value, str):
        return True, value[:MAX_STRING_CHARS]
    if isinstance(value, Mapping) and depth > 0:
        return True, cap_metrics(value, depth - 1)
    return False, None


def cap_metrics(report: Mapping[str, Any], depth: int = 1) -> dict[str, Any]:
    """What of a runner's report goes into the status: at most MAX_STATUS_ENTRIES entries
    with short string keys, finite numbers, short strings and (one level of) objects."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if len(out) >= MAX_STATUS_ENTRIES:
            break
        if not isinstance(key, str) or len(key) > MAX_KEY_CHARS:
            continue
        keep, capped = _capped(value, depth)
        if keep:
            out[key] = capped
    return out


def token_from_secret(secret: Mapping[str, Any]) -> str | None:
    """The experiment's token from its Secret (as the API server returns it)."""
    data = secret.get("data") if isinstance(secret, Mapping) else None
    value = data.get(contract.TOKEN_KEY) if isinstance(data, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


async def fetch(session: Any, url: str, token: str) -> dict[str, Any] | None:
    """``GET url`` with the experiment's token; the report, or None when the chief does not
    answer with a JSON object of at most MAX_REPORT_BYTES."""
    async with session.get(url, headers={"Authorization": f"Bearer {token}"},
                           allow_redirects=False) as response:
        if response.status != 200:
            return None
        body = await response.content.read(MAX_REPORT_BYTES + 1)
    return _parse(body)


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
    from the running chief. ``loss`` is for the LOSS column of ``kubectl get``, rounded to 4
    significant digits (0.0001098, not 0.00010981909567263068); ``metrics.loss`` keeps every
    digit.
    """
    pod = reporter(pods, leader_role)
    if pod is None:
        return {}
    metrics = _parse(pod.termination_message) or (polled if isinstance(polled, dict) else None)
    if metrics is None:
        return {}
    metrics = cap_metrics(metrics)
    result: dict[str, Any] = {"metrics": metrics}
    step = metrics.get("step", metrics.get("global_step"))
    if isinstance(step, (int, float)) and not isinstance(step, bool):
        result["step"] = int(step)
    loss = metrics.get("loss")
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss):
        result["loss"] = float(f"{loss:.4g}")
    return result
