"""Reading runs back: what the ``kubelearn runs`` command and training reports use.

Readers never write. A torn last metrics line (a crash mid-write) is skipped; a run killed
before it ended still reads, with status Running.

Run files are outside input. Nothing is read outside the directory a reader was given (the
runs directory, or the run directory itself): a link out of it is refused, not followed
(:mod:`kubelearn.paths`). Every read is bounded: ``run.yaml`` and ``hparams.yaml`` at
``bounded_input.MAX_FILE_BYTES`` (4 MiB) each, at most ``MAX_METRIC_FILES`` metrics files,
each at most ``MAX_JSONL_BYTES`` when a run is loaded whole, or only its last
``LIST_TAIL_BYTES`` (1 MiB) for a summary (``kubelearn runs list``), which keeps one record
per log type, so listing costs the same however long the runs are.
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

from kubelearn import bounded_input, paths
from kubelearn.em.files import MAX_JSONL_BYTES, decode_number, iter_jsonl
from kubelearn.em.run import HPARAMS_FILE, METRICS_DIR, parent_dir
from kubelearn.em.store import RUN_FILE
from kubelearn.em.values import LOG_TYPES, PID_MAX, is_pid

log = logging.getLogger(__name__)

#: How much of the end of each metrics file a summary (``kubelearn runs list``) reads.
LIST_TAIL_BYTES = 1 << 20
#: Metrics files read of one run: train, val and test first, then others by name.
MAX_METRIC_FILES = 16
_JSONL = ".jsonl"


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
    #: Loaded as a summary: ``metrics`` hold one record per log type, the latest value of
    #: each metric and the largest step in the end of its file (see ``LIST_TAIL_BYTES``).
    summary: bool = False

    def process_gone(self) -> bool:
        """True when the run says Running but its process, on this host, no longer exists
        (it was killed before it could record how it ended)."""
        if (self.status != "Running" or self.host != socket.gethostname()
                or not is_pid(self.pid)):
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
            "hparams": _json_tree(self.hparams),
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


def _json_tree(value: Any) -> Any:
    """``value`` (YAML: nesting bounded) with its non-finite floats as strict JSON's strings,
    so ``--json`` can print a hyper-parameter of ``.inf``."""
    if isinstance(value, dict):
        return {k: _json_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_tree(v) for v in value]
    return _json_number(value)


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _metric_record(raw: dict[str, Any]) -> MetricRecord | None:
    """The record of a parsed metrics line; None without a ``metrics`` mapping. Values that
    are not numbers (or are bools) are left out; numbers are those a float can hold, as
    :func:`kubelearn.em.files.parse_jsonl_line` reads them."""
    metrics = raw.get("metrics")
    if not isinstance(metrics, dict):
        return None
    values = {str(k): decode_number(v) for k, v in metrics.items()}
    values = {k: v for k, v in values.items()
              if isinstance(v, int | float) and not isinstance(v, bool)}
    return MetricRecord(
        step=_integer(raw.get("step")),
        epoch=_integer(raw.get("epoch")),
        time=raw.get("time") if isinstance(raw.get("time"), str) else None,
        metrics=values,
    )


def _summarise(records: Any) -> list[MetricRecord]:
    """One record for many: the latest value of each metric, the largest step (and epoch),
    the time of the last record; ``last`` and ``last_step`` answer as on the records."""
    summary = MetricRecord(None, None, None, {})
    for record in records:
        summary.metrics.update(record.metrics)
        if record.step is not None:
            summary.step = record.step if summary.step is None else max(summary.step,
                                                                        record.step)
        if record.epoch is not None:
            summary.epoch = record.epoch if summary.epoch is None else max(summary.epoch,
                                                                           record.epoch)
        summary.time = record.time or summary.time
    return [summary] if summary.metrics or summary.step is not None else []


def _typed(meta: dict[str, Any], key: str, types: Any, where: Path) -> Any:
    value = meta.get(key)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
        raise ValueError(f"{where}: {key} has the wrong type ({type(value).__name__})")
    return value


class MalformedRun(ValueError):
    """A run directory whose files cannot be read as a run; the message names the file."""


def _warn(message: str) -> None:
    log.warning("%s", message)


def load_run(path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
             tail_bytes: int | None = None, warn: Callable[[str], None] = _warn
             ) -> RunRecord:
    """Read the run in directory ``path``; FileNotFoundError when it holds no run,
    :class:`MalformedRun` naming the file when one of its files is malformed or leads
    outside ``base`` (default: ``path`` itself).

    ``tail_bytes``: read only that many bytes at the end of each metrics file and keep a
    summary (``RunRecord.summary``). ``warn`` is called once per metrics file with
    unreadable lines (which are skipped), or with more files than are read."""
    try:
        return _load_run(Path(path), Path(path) if base is None else Path(base), tail_bytes,
                         warn)
    except (ValueError, RecursionError) as exc:
        raise MalformedRun(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from None


def _read_yaml(base: Path, path: Path) -> Any:
    data = paths.read_bytes(base, path, bounded_input.MAX_FILE_BYTES)
    return bounded_input.load_yaml(bounded_input.decode(data, str(path)), str(path))


def _metric_kinds(base: Path, metrics_dir: Path, warn: Callable[[str], None]) -> list[str]:
    """The log types with a metrics file: train, val, test, then others by name; at most
    ``MAX_METRIC_FILES`` (the directory is scanned for at most 64 times as many)."""
    if not os.path.lexists(metrics_dir):
        return []
    if not paths.is_dir(base, metrics_dir):
        raise ValueError(f"{metrics_dir}: not a directory")
    found: list[str] = []
    with os.scandir(paths.resolve(base, metrics_dir)) as entries:
        for entry in entries:
            if entry.name.endswith(_JSONL) and len(entry.name) > len(_JSONL):
                found.append(entry.name[:-len(_JSONL)])
                if len(found) >= 64 * MAX_METRIC_FILES:
                    break
    kinds = [t for t in LOG_TYPES if t in found]
    kinds += sorted(k for k in found if k not in LOG_TYPES)
    if len(kinds) > MAX_METRIC_FILES:
        warn(f"{metrics_dir}: more than {MAX_METRIC_FILES} metrics files; reading "
             f"{', '.join(kinds[:MAX_METRIC_FILES])}")
    return kinds[:MAX_METRIC_FILES]


def _read_metrics(base: Path, path: Path, tail_bytes: int | None,
                  warn: Callable[[str], None]) -> list[MetricRecord]:
    skipped: list[int] = []
    if tail_bytes is None:
        data = paths.read_bytes(base, path, MAX_JSONL_BYTES)
        records = [r for r in map(_metric_record, iter_jsonl(data, str(path), skipped))
                   if r is not None]
        where = f"; the first is line {skipped[0]}" if skipped else ""
    else:
        size, data = paths.read_tail(base, path, tail_bytes)
        if size > len(data):  # begun mid-line: that piece is not a record
            data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
        records = _summarise(r for r in map(_metric_record, iter_jsonl(data, str(path), skipped))
                             if r is not None)
        where = f" in its last {tail_bytes} bytes" if size > tail_bytes else ""
    if skipped:
        warn(f"{path}: skipped {len(skipped)} unreadable line{'s' if len(skipped) > 1 else ''}"
             f" (not a JSON object, or a number no float can hold){where}")
    return records


def _load_run(path: Path, base: Path, tail_bytes: int | None,
              warn: Callable[[str], None]) -> RunRecord:
    meta_path = path / RUN_FILE
    try:
        meta = _read_yaml(base, meta_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a run directory (no {RUN_FILE})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: expected a mapping, got {type(meta).__name__}")
    for key in ("id", "name", "status", "description", "created_at", "finished_at", "error",
                "host"):
        _typed(meta, key, str, meta_path)
    _typed(meta, "upload", dict, meta_path)
    pid = meta.get("pid")
    if pid is not None and not is_pid(pid):
        raise ValueError(f"{meta_path}: pid {str(pid)[:40]} is not a process id (an integer "
                         f"from 1 to {PID_MAX})")
    labels = meta.get("labels") or []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{meta_path}: labels must be a list of strings")
    hparams_path = path / HPARAMS_FILE
    try:
        hparams = _read_yaml(base, hparams_path)
    except FileNotFoundError:
        hparams = {}
    if not isinstance(hparams, dict):
        raise ValueError(f"{hparams_path}: expected a mapping, got {type(hparams).__name__}")
    metrics: dict[str, list[MetricRecord]] = {}
    metrics_dir = path / METRICS_DIR
    for kind in _metric_kinds(base, metrics_dir, warn):
        metrics[kind] = _read_metrics(base, metrics_dir / f"{kind}{_JSONL}", tail_bytes, warn)
    return RunRecord(
        id=str(meta.get("id") or path.name),
        name=str(meta.get("name") or path.name),
        path=path,
        status=str(meta.get("status") or "Unknown"),
        description=meta.get("description") or "",
        labels=list(labels),
        hparams=hparams,
        created_at=meta.get("created_at"),
        finished_at=meta.get("finished_at"),
        error=meta.get("error"),
        upload=meta.get("upload"),
        host=meta.get("host"),
        pid=pid,
        metrics=metrics,
        summary=tail_bytes is not None,
    )


def list_runs(parent: str | os.PathLike[str] | None = None,
              warn: Callable[[str], None] = _warn, *,
              base: str | os.PathLike[str] | None = None,
              summary: bool = False) -> list[RunRecord]:
    """The runs directly under ``parent`` (default ``$EM_RUN_PARENT_DIR``), oldest first.

    A run whose files cannot be read, or lead outside ``base`` (default: ``parent``), is
    left out, with one call of ``warn`` naming it: one malformed run never hides the others.
    ``summary``: each run's metrics as a summary of the end of their files (see
    :func:`load_run`), which bounds what listing reads and keeps."""
    root = parent_dir(parent)
    fence = root if base is None else Path(base)
    try:
        if not paths.is_dir(fence, root):
            return []
    except ValueError as exc:
        warn(f"skipping {root}: {exc}")
        return []
    runs = []
    for path in sorted(root.iterdir()):
        if not os.path.lexists(path / RUN_FILE):
            continue
        try:
            runs.append(load_run(path, base=fence, warn=warn,
                                 tail_bytes=LIST_TAIL_BYTES if summary else None))
        except (OSError, ValueError, RecursionError) as exc:
            warn(f"skipping run {path}: {exc}")
    runs.sort(key=lambda r: (r.created_at or "", r.id))
    return runs


def find_run(ref: str, parent: str | os.PathLike[str] | None = None,
             warn: Callable[[str], None] = _warn) -> RunRecord:
    """The run ``ref`` names: a run directory, an id, a unique id prefix, or a run name
    (the latest run of that name), loaded whole. KeyError listing the candidates otherwise."""
    if os.path.lexists(Path(ref) / RUN_FILE):
        return load_run(ref, warn=warn)
    notes: list[str] = []  # about other runs: said only when none is the one asked for
    runs = list_runs(parent, warn=notes.append, summary=True)
    try:
        found = _pick(ref, runs, parent)
    except KeyError:
        for note in notes:
            warn(note)
        raise
    return load_run(found.path, base=parent_dir(parent), warn=warn)


def _pick(ref: str, runs: list[RunRecord], parent: str | os.PathLike[str] | None
          ) -> RunRecord:
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
