"""Export strategies: what an Experiment exports after an evaluation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kubelearn import atomic, fs


class ExportStrategy(NamedTuple):
    """A named export function ``export_fn(estimator, export_dir_base, checkpoint_path,
    eval_result) -> export path``."""

    name: str
    export_fn: Callable[..., Any]

    def export(self, estimator: Any, export_path: str, checkpoint_path: str | None = None,
               eval_result: dict[str, Any] | None = None) -> Any:
        return self.export_fn(estimator, export_path, checkpoint_path, eval_result)


#: On an object store, the object that says an export is whole: written after every file of
#: the export, under the export's prefix (``export/model/<ms>/export.complete``).
COMPLETE_MARKER = "export.complete"
#: An export without its marker (a writer killed mid-way) older than this is removed when
#: exports are pruned; a younger one may still be being written by another replica.
STALE_PARTIAL_MS = 3600 * 1000


def is_complete(export_dir: str) -> bool:
    """Whether ``export_dir`` is a whole export: always for a path (an export appears there
    by a rename), when its :data:`COMPLETE_MARKER` exists on an object store."""
    if not fs.is_remote(export_dir):
        return fs.exists(export_dir)
    return fs.exists(fs.join(export_dir, COMPLETE_MARKER))


def list_exports(export_dir_base: str) -> list[str]:
    """The whole exports under ``export_dir_base`` (``export/<strategy>``), oldest first."""
    try:
        names = fs.listdir(export_dir_base)
    except FileNotFoundError:
        return []
    stamps = sorted((n for n in names if n.isdigit()), key=int)
    paths = [fs.join(export_dir_base, n) for n in stamps]
    if not fs.is_remote(export_dir_base):
        return paths
    return [p for p in paths if is_complete(p)]


def _export_remote(estimator: Any, export_dir_base: str, stamp: int,
                   checkpoint_path: str | None) -> str:
    """An export on an object store, which cannot rename: the files are written under the
    final prefix, then :data:`COMPLETE_MARKER`; readers count only exports with a marker."""
    path = fs.join(export_dir_base, str(stamp))
    try:
        estimator.export(path, checkpoint_path=checkpoint_path)
        files = sorted(n for n in fs.listdir(path) if n != COMPLETE_MARKER)
        fs.write_text(fs.join(path, COMPLETE_MARKER), json.dumps({"files": files}) + "\n")
    except BaseException:
        with contextlib.suppress(Exception):
            fs.remove_tree(path)
        raise
    return path


def _prune_remote(export_dir_base: str, exports_to_keep: int) -> None:
    """Removes all but the newest ``exports_to_keep`` whole exports, each marker first (so a
    lister stops counting it before its files go), and partial exports that are stale."""
    complete = list_exports(export_dir_base)
    for old in complete[:-exports_to_keep]:
        fs.remove(fs.join(old, COMPLETE_MARKER))
        fs.remove_tree(old)
    try:
        names = fs.listdir(export_dir_base)
    except FileNotFoundError:
        return
    kept = {fs.basename(p) for p in complete[-exports_to_keep:]}
    now = int(time.time() * 1000)
    for name in names:
        if name.isdigit() and name not in kept and now - int(name) > STALE_PARTIAL_MS:
            path = fs.join(export_dir_base, name)
            if not is_complete(path):
                fs.remove_tree(path)


def make_export_strategy(name: str = "model", exports_to_keep: int | None = 5) -> ExportStrategy:
    """Exports with ``estimator.export`` into a timestamped directory, keeping the newest
    ``exports_to_keep``.

    The export is written under a hidden name and renamed into place, so a reader of a
    shared model directory (another pod, TensorBoard, a user loading the model) sees a
    whole export or none; old ones are pruned the same way, renamed away before removal.
    On an object store (a model directory ``s3://...``), which has no rename, the export is
    written under its final prefix and :data:`COMPLETE_MARKER` last; :func:`list_exports`,
    pruning and :func:`~kubelearn.estimators.estimator.load_exported` count only exports
    whose marker exists.
    """

    def export_fn(estimator: Any, export_dir_base: str, checkpoint_path: str | None,
                  eval_result: dict[str, Any] | None) -> str:
        if fs.is_remote(export_dir_base):
            stamp = int(time.time() * 1000)
            while fs.exists(fs.join(export_dir_base, str(stamp))):
                stamp += 1  # two replicas exporting in the same millisecond
            path = _export_remote(estimator, export_dir_base, stamp, checkpoint_path)
            if exports_to_keep:
                _prune_remote(export_dir_base, exports_to_keep)
            return path
        os.makedirs(export_dir_base, exist_ok=True)
        stamp = int(time.time() * 1000)
        while os.path.exists(os.path.join(export_dir_base, str(stamp))):
            stamp += 1  # two replicas exporting in the same millisecond
        path = os.path.join(export_dir_base, str(stamp))
        partial = tempfile.mkdtemp(dir=export_dir_base, prefix=f".{stamp}.")
        try:
            estimator.export(partial, checkpoint_path=checkpoint_path)
            os.chmod(partial, 0o755)  # mkdtemp's 0700 would hide it from readers
            os.rename(partial, path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        atomic.fsync_dir(export_dir_base)
        if exports_to_keep:
            entries = sorted((e for e in os.listdir(export_dir_base) if e.isdigit()), key=int)
            for old in entries[:-exports_to_keep]:
                doomed = os.path.join(export_dir_base, f".{old}.pruned")
                try:
                    os.rename(os.path.join(export_dir_base, old), doomed)
                except OSError:
                    continue  # pruned meanwhile by another replica
                shutil.rmtree(doomed, ignore_errors=True)
        return path

    return ExportStrategy(name, export_fn)
