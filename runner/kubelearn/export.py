"""Export strategies: what an Experiment exports after an evaluation."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from kubelearn import atomic


class ExportStrategy(NamedTuple):
    """A named export function ``export_fn(estimator, export_dir_base, checkpoint_path,
    eval_result) -> export path``."""

    name: str
    export_fn: Callable[..., Any]

    def export(self, estimator: Any, export_path: str, checkpoint_path: str | None = None,
               eval_result: dict[str, Any] | None = None) -> Any:
        return self.export_fn(estimator, export_path, checkpoint_path, eval_result)


def make_export_strategy(name: str = "model", exports_to_keep: int | None = 5) -> ExportStrategy:
    """Exports with ``estimator.export`` into a timestamped directory, keeping the newest
    ``exports_to_keep``.

    The export is written under a hidden name and renamed into place, so a reader of a
    shared model directory (another pod, TensorBoard, a user loading the model) sees a
    whole export or none; old ones are pruned the same way, renamed away before removal.
    """

    def export_fn(estimator: Any, export_dir_base: str, checkpoint_path: str | None,
                  eval_result: dict[str, Any] | None) -> str:
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
