"""Export strategies: what an Experiment exports after an evaluation."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple


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
    ``exports_to_keep``."""

    def export_fn(estimator: Any, export_dir_base: str, checkpoint_path: str | None,
                  eval_result: dict[str, Any] | None) -> str:
        path = os.path.join(export_dir_base, str(int(time.time() * 1000)))
        estimator.export(path, checkpoint_path=checkpoint_path)
        if exports_to_keep:
            entries = sorted(e for e in os.listdir(export_dir_base) if e.isdigit())
            for old in entries[:-exports_to_keep]:
                old_dir = os.path.join(export_dir_base, old)
                for item in os.listdir(old_dir):
                    os.unlink(os.path.join(old_dir, item))
                os.rmdir(old_dir)
        return path

    return ExportStrategy(name, export_fn)
