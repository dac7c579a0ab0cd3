"""``create_run`` and ``Run``: the record of one training run, kept in files a person can read.

A run directory ``$EM_RUN_PARENT_DIR/<name>_<yymmdd>_<HHMMSS>_<6 chars>/`` holds

* ``run.yaml``     metadata: id, name, description, labels, status, times, host, pid, error,
                   where it was uploaded; rewritten atomically on every change;
* ``hparams.yaml`` the hyper-parameters, rewritten atomically on every change;
* ``metrics/<type>.jsonl`` for type ``train``, ``val`` and ``test``: one JSON object a line,
  ``{"step": 10, "epoch": 1, "time": "...", "metrics": {"loss": 0.25}}``, appended with one
  ``write`` per line. NaN and infinities are numbers, kept as the strings ``"NaN"``,
  ``"Infinity"`` and ``"-Infinity"`` (strict JSON has no literal for them).

The parent directory may be a URL (``s3://bucket/prefix/runs``, as when the model directory
is one; see :mod:`kubelearn.fs`). An object store cannot append, and rewriting a metrics
object for every record would cost a whole upload per line, so the run is then kept in a
local staging directory (``Run.path``) exactly as above, and mirrored to
``<parent URL>/<run id>/`` (``Run.location``): every file that changed is uploaded whole,
``run.yaml`` last, at once when the run is created and when it ends, and in between at most
every ``$EM_UPLOAD_INTERVAL_SECS`` (5) after a change. Each object is written with one PUT,
so a reader sees whole files; a process killed without running its exit handlers leaves the
mirror as of its last upload.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import string
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubelearn import fs
from kubelearn.em import lifecycle
from kubelearn.em.files import JsonlAppender, encode_number, read_yaml, write_yaml
from kubelearn.em.store import RUN_FILE, stored_run_id, sync_run, upload_run
from kubelearn.em.values import (
    check_bool,
    check_conflict_strategy,
    check_labels,
    check_log_type,
    check_metrics,
    check_name,
    check_step,
    check_str,
    plain_hparams,
    plain_value,
)

log = logging.getLogger(__name__)

PARENT_DIR_ENV = "EM_RUN_PARENT_DIR"
DEFAULT_PARENT_DIR = ".em/runs"
FSYNC_ENV = "EM_FSYNC_SECS"
UPLOAD_INTERVAL_ENV = "EM_UPLOAD_INTERVAL_SECS"
HPARAMS_FILE = "hparams.yaml"
METRICS_DIR = "metrics"

RUNNING, COMPLETE, FAILED = "Running", "Complete", "Failed"

_CONFIG_KEYS = (
    "name",
    "hparams",
    "labels",
    "description",
    "auto_upload",
    "folder",
    "make_folder",
    "conflict_strategy",
    "folder_path",
)
_ID_ALPHABET = string.ascii_lowercase + string.digits


def parent_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where runs live: ``path``, else ``$EM_RUN_PARENT_DIR``, else ``.em/runs`` (a
    ``file://`` URL as the path it names)."""
    return Path(fs.local_path(os.fspath(
        path if path is not None else os.environ.get(PARENT_DIR_ENV) or DEFAULT_PARENT_DIR)))


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="microseconds")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"${name} must be a number of seconds, got {raw!r}") from None


class RunHParams(MutableMapping[str, Any]):
    """The run's hyper-parameters: a dict whose every change is saved at once.

    Editable until training starts, i.e. until the first ``log('train', ...)``; after that
    a change raises ``RuntimeError`` so the record says what the model was trained with.
    """

    def __init__(self, run: Run, values: dict[str, Any]) -> None:
        self._run = run
        self._data = values

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        check_str("hparams key", key)
        value = plain_value(value, f"hparams[{key!r}]")
        self._run._change_hparams(lambda d: d.__setitem__(key, value))

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._run._change_hparams(lambda d: d.__delitem__(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"RunHParams({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        return dict(self._data)


class _AutoUploader:
    """Syncs the run to the store in the background, at most every ``interval`` seconds
    (``sync``: the run's method that does it, ``_sync_upload`` by default)."""

    def __init__(self, run: Run, interval: float, sync: str = "_sync_upload") -> None:
        self._run = run
        self._interval = interval
        self._sync = getattr(run, sync)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"em-{sync}-{run.id}",
                                        daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._dirty.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._dirty.clear()
            try:
                self._sync()
            except Exception as exc:  # keep training; the next change retries
                log.warning("run %s: background upload failed: %s", self._run.id, exc)
                self._dirty.set()
            self._stop.wait(self._interval)

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)


class Run:
    """One run: metadata, hyper-parameters and metrics in a directory, optionally uploaded.

    Made by :func:`create_run`. ``status`` is Running, then Complete after :meth:`finish`,
    or Failed when the process ends with an uncaught exception (or the ``with`` block it
    manages raises). Methods are safe to call from several threads.
    """

    def __init__(
        self,
        name: str,
        hparams: dict[str, Any],
        labels: list[str],
        description: str,
        auto_upload: bool = False,
        folder: str = "default",
        make_folder: bool = False,
        conflict_strategy: str = "new",
        parent: str | os.PathLike[str] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._name = name
        self._labels = list(labels)
        self._description = description
        self._status = RUNNING
        self._error: str | None = None
        self._training_started = False
        self._created_at = _now()
        self._finished_at: str | None = None
        self._upload: dict[str, Any] | None = None
        self._appenders: dict[str, JsonlAppender] = {}
        self._fsync_secs = _env_float(FSYNC_ENV, 1.0)
        self.pid = os.getpid()
        raw_parent = fs.local_path(os.fspath(parent) if parent is not None else (
            os.environ.get(PARENT_DIR_ENV) or DEFAULT_PARENT_DIR))
        self._mirror_url: str | None = None
        self._mirror_lock = threading.Lock()
        self._mirrored: dict[str, tuple[int, int, int]] = {}
        self._mirror: _AutoUploader | None = None
        if fs.is_url(raw_parent) and fs.is_remote(raw_parent):
            staging = Path(tempfile.mkdtemp(prefix="kubelearn-run-"))
            self.path = self._make_dir(staging, name)
            self._mirror_url = fs.join(raw_parent, self.path.name)
        else:
            self.path = self._make_dir(parent_dir(parent), name)
        self.id = self.path.name
        (self.path / METRICS_DIR).mkdir()
        self._hparams = RunHParams(self, hparams)
        write_yaml(self.path / HPARAMS_FILE, hparams)
        self._write_meta()
        if self._mirror_url is not None:
            # The first copy is made here, so that a store that cannot be written raises in
            # the caller; the background thread keeps it up to date.
            try:
                self._sync_mirror()
            except BaseException:
                shutil.rmtree(self.path.parent, ignore_errors=True)
                raise
            self._mirror = _AutoUploader(self, _env_float(UPLOAD_INTERVAL_ENV, 5.0),
                                         "_sync_mirror")
        self._uploader: _AutoUploader | None = None
        self._auto = (folder, make_folder, conflict_strategy) if auto_upload else None
        if self._auto is not None:
            # The first upload is made here so that a missing folder or a conflict raises
            # in the caller; the background thread only keeps the copy up to date.
            try:
                self.upload(*self._auto)
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
            self._uploader = _AutoUploader(self, _env_float(UPLOAD_INTERVAL_ENV, 5.0))
        lifecycle.register(self)

    @staticmethod
    def _make_dir(parent: Path, name: str) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%y%m%d_%H%M%S", time.localtime())
        while True:
            suffix = "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))
            path = parent / f"{name}_{stamp}_{suffix}"
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return path

    # -- properties -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def status(self) -> str:
        return self._status

    @property
    def error(self) -> str | None:
        """The uncaught exception that failed the run, as one line."""
        return self._error

    @property
    def hparams(self) -> RunHParams:
        return self._hparams

    @hparams.setter
    def hparams(self, values: Mapping[str, Any]) -> None:
        new = plain_hparams(values)
        self._change_hparams(lambda d: (d.clear(), d.update(new)))

    @property
    def labels(self) -> list[str]:
        return list(self._labels)

    @labels.setter
    def labels(self, labels: Sequence[str]) -> None:
        with self._lock:
            self._labels = check_labels(labels)
            self._changed()

    @property
    def description(self) -> str:
        return self._description

    @description.setter
    def description(self, description: str) -> None:
        with self._lock:
            self._description = check_str("description", description)
            self._changed()

    @property
    def location(self) -> str:
        """Where the run is kept: its URL when its parent is one (``Run.path`` is then the
        local staging directory mirrored there), else its directory."""
        return self._mirror_url or str(self.path)

    @property
    def uploaded_to(self) -> Path | None:
        """The run's directory in the run store after an upload."""
        return Path(self._upload["path"]) if self._upload else None

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, status={self._status!r})"

    # -- recording --------------------------------------------------------------------

    def log(
        self,
        type: str,
        metrics: Mapping[str, Any],
        step: int | None = None,
        epoch: int | None = None,
    ) -> None:
        """Append one record of ``metrics`` (names to numbers) of a ``train``/``val``/``test``
        phase; aliases ``training``, ``validate``, ``validation``, ``evaluate``, ``testing``."""
        kind = check_log_type(type)
        values = check_metrics(metrics)
        step = check_step("step", step)
        epoch = check_step("epoch", epoch)
        record = {
            "step": step,
            "epoch": epoch,
            "time": _now(),
            "metrics": {k: encode_number(v) for k, v in values.items()},
        }
        with self._lock:
            self._check_running("log")
            appender = self._appenders.get(kind)
            if appender is None:
                appender = JsonlAppender(
                    self.path / METRICS_DIR / f"{kind}.jsonl", self._fsync_secs
                )
                self._appenders[kind] = appender
            appender.append(record)
            if kind == "train":
                self._training_started = True
        self._poke()

    def finish(self) -> None:
        """Mark the run Complete and flush everything; a no-op once the run has ended."""
        self._end(COMPLETE, None)

    def fail(self, error: BaseException | str) -> None:
        """Mark the run Failed with ``error`` (an exception or a one-line text); for callers
        that catch the exception themselves. A no-op once the run has ended."""
        if isinstance(error, BaseException):
            error = lifecycle._describe(type(error), error, "")
        self._end(FAILED, str(error))

    def upload(
        self, folder: str = "default", make_folder: bool = False, conflict_strategy: str = "new"
    ) -> Path | None:
        """Copy the run into ``folder`` of the run store (see :mod:`kubelearn.em.store`).

        Returns the run's path in the store, or None when ``conflict_strategy='skip'``
        found a run of the same name there. Uploading again updates the same copy.
        """
        check_str("folder", folder)
        check_bool("make_folder", make_folder)
        check_conflict_strategy(conflict_strategy)
        with self._lock:
            self._flush()
            dest = upload_run(
                self.path, self.id, self._name, folder, make_folder, conflict_strategy
            )
            if dest is None:
                return None
            self._upload = {"folder": folder, "path": str(dest.resolve())}
            self._write_meta()
            sync_run(self.path, dest)  # the copy's run.yaml now says where it is
        return dest

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._fail(lifecycle._describe(exc_type, exc, ""))

    # -- internals --------------------------------------------------------------------

    def _check_running(self, what: str) -> None:
        if self._status != RUNNING:
            detail = f" ({self._error})" if self._error else ""
            raise RuntimeError(f"run {self.id} is {self._status}{detail}; cannot {what}")

    def _change_hparams(self, change: Any) -> None:
        with self._lock:
            self._check_running("change hparams")
            if self._training_started:
                raise RuntimeError(f"run {self.id}: hparams cannot change after training started")
            data = dict(self._hparams._data)
            change(data)
            write_yaml(self.path / HPARAMS_FILE, data)
            self._hparams._data = data
        self._poke()

    def _meta(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self._name,
            "description": self._description,
            "labels": list(self._labels),
            "status": self._status,
            "created_at": self._created_at,
            "finished_at": self._finished_at,
            "error": self._error,
            "host": socket.gethostname(),
            "pid": self.pid,
            "upload": self._upload,
        }

    def _write_meta(self) -> None:
        write_yaml(self.path / RUN_FILE, self._meta())

    def _changed(self) -> None:
        self._write_meta()
        self._poke()

    def _poke(self) -> None:
        for syncer in (self._uploader, self._mirror):
            if syncer is not None:
                syncer.poke()

    def _sync_mirror(self) -> None:
        """Uploads whole every file of the run that changed since the last upload, run.yaml
        last (so a reader that finds a run.yaml finds the files it was written after)."""
        if self._mirror_url is None:
            return
        with self._mirror_lock:
            with self._lock:  # a consistent snapshot: no record half-way through a write
                files = sorted(p for p in self.path.rglob("*")
                               if p.is_file() and not p.name.startswith("."))
                files.sort(key=lambda p: p.name == RUN_FILE)
                changed: list[tuple[str, bytes, tuple[int, int, int]]] = []
                for src in files:
                    rel = src.relative_to(self.path).as_posix()
                    stat = src.stat()
                    # A rewrite (os.replace) is a new inode, an append a new size.
                    stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                    if self._mirrored.get(rel) != stamp:
                        changed.append((rel, src.read_bytes(), stamp))
            for rel, data, stamp in changed:
                fs.write_bytes(fs.join(self._mirror_url, rel), data)
                self._mirrored[rel] = stamp

    def _flush(self) -> None:
        for appender in self._appenders.values():
            appender.sync()

    def _fail(self, error: str) -> None:
        self._end(FAILED, error)

    def _end(self, status: str, error: str | None) -> None:
        with self._lock:
            if self._status != RUNNING:
                return
            for appender in self._appenders.values():
                appender.close()
            self._appenders.clear()
            self._status = status
            self._error = error
            self._finished_at = _now()
            self._write_meta()
        lifecycle.unregister(self)
        if self._mirror is not None:
            self._mirror.stop()
        if self._mirror_url is not None:
            try:
                self._sync_mirror()
            except Exception as exc:
                log.warning("run %s: final upload to %s failed: %s", self.id,
                            self._mirror_url, exc)
        if self._uploader is not None:
            self._uploader.stop()
        if self._auto is not None:
            try:
                self._sync_upload()
            except Exception as exc:
                log.warning("run %s: final upload failed: %s", self.id, exc)

    def _sync_upload(self) -> None:
        """Bring the uploaded copy up to date; it stays where the first upload put it."""
        with self._lock:
            if self._auto is None or self._upload is None:
                return  # not auto-uploaded, or skipped because of a conflict
            dest = Path(self._upload["path"])
            if stored_run_id(dest) != self.id:
                log.warning(
                    "run %s: its copy at %s was replaced or removed; auto upload stops",
                    self.id,
                    dest,
                )
                self._auto = None
                return
            self._flush()
            sync_run(self.path, dest)


def _read_config(config_path: str | os.PathLike[str]) -> dict[str, Any]:
    data = read_yaml(config_path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"run config {config_path}: expected a mapping of keys, got {data!r}")
    unknown = sorted(str(k) for k in data if k not in _CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"run config {config_path}: unknown keys {', '.join(unknown)}"
            f" (known: {', '.join(_CONFIG_KEYS)})"
        )
    return data


def _merge_folder_path(args: dict[str, Any], folder_path: Any, where: str) -> None:
    if folder_path is None:
        return
    if "folder" in args and args["folder"] not in ("default", folder_path):
        raise ValueError(
            f"{where}: folder {args['folder']!r} and folder_path {folder_path!r} disagree"
        )
    args["folder"] = folder_path


def create_run(
    config_path: str | os.PathLike[str] | None = None,
    name: str = "default",
    hparams: Mapping[str, Any] | None = None,
    labels: Sequence[str] | None = None,
    description: str = "",
    auto_upload: bool = False,
    folder: str = "default",
    make_folder: bool = False,
    conflict_strategy: str = "new",
    *,
    folder_path: str | None = None,
) -> Run:
    """Create and start a Run; its files go under ``$EM_RUN_PARENT_DIR`` (``.em/runs``).

    ``config_path`` names a YAML file with any of the other arguments as keys; where the
    file and the arguments both give a key, the file wins. With ``auto_upload`` the run is
    uploaded to ``folder`` of the run store at once and kept up to date in the background;
    ``folder``, ``make_folder`` and ``conflict_strategy`` work as in :meth:`Run.upload`.
    ``folder_path`` is another name for ``folder`` (one of the t9k examples uses it).
    """
    args: dict[str, Any] = {
        "name": name,
        "hparams": hparams,
        "labels": labels,
        "description": description,
        "auto_upload": auto_upload,
        "folder": folder,
        "make_folder": make_folder,
        "conflict_strategy": conflict_strategy,
    }
    _merge_folder_path(args, folder_path, "arguments")
    if config_path is not None:
        config = _read_config(config_path)
        _merge_folder_path(config, config.pop("folder_path", None), f"run config {config_path}")
        args.update(config)
    return Run(
        name=check_name(args["name"]),
        hparams=plain_hparams(args["hparams"]),
        labels=check_labels(args["labels"]),
        description=check_str("description", args["description"] or ""),
        auto_upload=check_bool("auto_upload", args["auto_upload"]),
        folder=check_str("folder", args["folder"]),
        make_folder=check_bool("make_folder", args["make_folder"]),
        conflict_strategy=check_conflict_strategy(args["conflict_strategy"]),
    )
