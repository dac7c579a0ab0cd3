"""Reading runs back: what the ``kubelearn runs`` command and training reports use.

Readers never write. A torn last metrics line (a crash mid-write) is skipped; a run killed
before it ended still reads, with status Running.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubelearn.em.files import decode_number, read_jsonl, read_yaml
from kubelearn.em.run import HPARAMS_FILE, METRICS_DIR, parent_dir
from kubelearn.em.store import RUN_FILE
from kubelearn.em.values import LOG_TYPES

log = logging.getLogger(__name__)


@dataclass
class MetricRecord:
    step: int | None
    epoch: int | None
    time: str | None
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "time": self.time,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
        }


@dataclass
class RunRecord:
    """A run as read from its directory."""

    id: str
    name: str
    path: Path
    status: str
    description: str = ""
    labels: list[str] = field(default_factory=list)
    hparams: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    upload: dict[str, Any] | None = None
    host: str | None = None
    pid: int | None = None
    metrics: dict[str, list[MetricRecord]] = field(default_factory=dict)

    def process_gone(self) -> bool:
        """True when the run says Running but its process, on this host, no longer exists
        (it was killed before it could record how it ended)."""
        if self.status != "Running" or self.host != socket.gethostname() or not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    def metric_names(self, type: str) -> list[str]:
        names: dict[str, None] = {}
        for record in self.metrics.get(type, []):
            names.update(dict.fromkeys(record.metrics))
        return list(names)

    def series(self, type: str, name: str) -> tuple[list[int], list[float]]:
        """Steps and values of one metric; a record without a step counts by position."""
        xs: list[int] = []
        ys: list[float] = []
        for index, record in enumerate(self.metrics.get(type, [])):
            if name in record.metrics:
                xs.append(record.step if record.step is not None else index)
                ys.append(record.metrics[name])
        return xs, ys

    def last(self, type: str) -> dict[str, float]:
        """The latest value of each metric of ``type``."""
        out: dict[str, float] = {}
        for record in self.metrics.get(type, []):
            out.update(record.metrics)
        return out

    def last_step(self) -> int | None:
        steps = [r.step for rs in self.metrics.values() for r in rs if r.step is not None]
        return max(steps) if steps else None

    def to_dict(self, with_metrics: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "path": str(self.path),
            "status": self.status,
            "description": self.description,
            "labels": list(self.labels),
            "hparams": self.hparams,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "upload": self.upload,
            "host": self.host,
            "pid": self.pid,
            "process_gone": self.process_gone(),
            "last_step": self.last_step(),
            "last": {
                t: {k: _json_number(v) for k, v in self.last(t).items()} for t in self.metrics
            },
        }
        if with_metrics:
            out["metrics"] = {t: [r.to_dict() for r in rs] for t, rs in self.metrics.items()}
        return out


def _json_number(value: float) -> float | str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _metric_record(raw: dict[str, Any]) -> MetricRecord | None:
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict):
        return None
    values = {str(k): decode_number(v) for k, v in metrics.items()}
    values = {k: v for k, v in values.items() if isinstance(v, int | float)}
    step, epoch = raw.get("step"), raw.get("epoch")
    return MetricRecord(
        step=step if isinstance(step, int) else None,
        epoch=epoch if isinstance(epoch, int) else None,
        time=raw.get("time") if isinstance(raw.get("time"), str) else None,
        metrics=values,
    )


def _typed(meta: dict[str, Any], key: str, types: Any, where: Path) -> Any:
    value = meta.get(key)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise ValueError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


class MalformedRun(ValueError):
    """A run directory whose files cannot be read as a run; the message names the file."""


def load_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read the run in directory ``path``; FileNotFoundError when it holds no run,
    :class:`MalformedRun` naming the file when one of its files is malformed."""
    try:
        return _load_run(Path(path))
    except (ValueError, RecursionError) as exc:
        raise MalformedRun(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _load_run(path: Path) -> RunRecord:
    meta_path = path / RUN_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no {RUN_FILE})")
    meta = read_yaml(meta_path)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a mapping, got {type(meta).__name__}")
    for key in ("id", "name", "status", "description", "created_at", "finished_at", "error",
                "host"):
        _typed(meta, key, str, meta_path)
    _typed(meta, "upload", dict, meta_path)
    labels = meta.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{meta_path}: labels must be a list of strings")
    hparams_path = path / HPARAMS_FILE
    hparams = read_yaml(hparams_path) if hparams_path.is_file() else {}
    if not isinstance(hparams, dict):
        raise ValueError(f"{hparams_path}: expected a mapping, got {type(hparams).__name__}")
    metrics: dict[str, list[MetricRecord]] = {}
    metrics_dir = path / METRICS_DIR
    known = [t for t in LOG_TYPES if (metrics_dir / f"{t}.jsonl").is_file()]
    others = (
        sorted(p.stem for p in metrics_dir.glob("*.jsonl") if p.stem not in LOG_TYPES)
        if metrics_dir.is_dir()
        else []
    )
    for kind in known + others:
        records = [_metric_record(r) for r in read_jsonl(metrics_dir / f"{kind}.jsonl")]
        metrics[kind] = [r for r in records if r is not None]
    return RunRecord(
        id=str(meta.get("id") or path.name),
        name=str(meta.get("name") or path.name),
        path=path,
        status=str(meta.get("status") or "Unknown"),
        description=meta.get("description") or "",
        labels=list(labels),
        hparams=hparams if isinstance(hparams, dict) else {},
        created_at=meta.get("created_at"),
        finished_at=meta.get("finished_at"),
        error=meta.get("error"),
        upload=meta.get("upload"),
        host=meta.get("host"),
        pid=meta.get("pid") if isinstance(meta.get("pid"), int) else None,
        metrics=metrics,
    )


def _warn(message: str) -> None:
    log.warning("%s", message)


def list_runs(parent: str | os.PathLike[str] | None = None,
              warn: Callable[[str], None] = _warn) -> list[RunRecord]:
    """The runs directly under ``parent`` (default ``$EM_RUN_PARENT_DIR``), oldest first.

    A run whose files cannot be read is left out, with one call of ``warn`` naming it:
    one malformed run never hides the others."""
    root = parent_dir(parent)
    if not root.is_dir():
        return []
    runs = []
    for path in sorted(root.iterdir()):
        if not (path / RUN_FILE).is_file():
            continue
        try:
            runs.append(load_run(path))
        except (OSError, ValueError, RecursionError) as exc:
            warn(f"skipping run {path}: {exc}")
    runs.sort(key=lambda r: (r.created_at or "", r.id))
    return runs


def find_run(ref: str, parent: str | os.PathLike[str] | None = None) -> RunRecord:
    """The run ``ref`` names: a run directory, an id, a unique id prefix, or a run name
    (the latest run of that name). KeyError listing the candidates otherwise."""
    if (Path(ref) / RUN_FILE).is_file():
        return load_run(ref)
    runs = list_runs(parent)
    for run in runs:
        if run.id == ref:
            return run
    prefixed = [r for r in runs if r.id.startswith(ref)]
    if len(prefixed) == 1:
        return prefixed[0]
    named = [r for r in runs if r.name == ref]
    if named:
        return named[-1]
    if prefixed:
        raise KeyError(f"{ref!r} matches several runs: {', '.join(r.id for r in prefixed)}")
    raise KeyError(f"no run {ref!r} in {parent_dir(parent)}")
