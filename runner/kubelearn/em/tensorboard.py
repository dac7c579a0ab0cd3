"""TensorBoard event files, through tensorboardX's writer (``pip install kubelearn[tensorboard]``).

Without tensorboardX every method is a no-op and one warning is logged, so training never
depends on it. For loss and eval curves side by side, write training scalars with
``EventWriter(model_dir)`` and evaluation scalars with ``EventWriter(model_dir / "eval")``
under the same tags (``loss``, ...), as tf.estimator does; ``tensorboard --logdir model_dir``
then overlays them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from kubelearn.em.values import as_number

log = logging.getLogger(__name__)
_warned = False


def _summary_writer_class() -> Any:
    global _warned
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        if not _warned:
            log.warning(
                "tensorboardX is not installed: TensorBoard events are not written"
                " (install kubelearn[tensorboard])"
            )
            _warned = True
        return None
    return SummaryWriter


class EventWriter:
    """Writes scalar summaries to an event file in ``logdir``."""

    def __init__(self, logdir: str | os.PathLike[str], flush_secs: int = 10) -> None:
        self.logdir = os.fspath(logdir)
        cls = _summary_writer_class()
        self._writer = cls(logdir=self.logdir, flush_secs=flush_secs) if cls else None

    @property
    def enabled(self) -> bool:
        """False when tensorboardX is missing and nothing is written."""
        return self._writer is not None

    def scalar(self, tag: str, value: Any, step: int) -> None:
        number = as_number(value)
        if number is None:
            raise ValueError(f"scalar {tag!r}: {value!r} is not a number")
        if self._writer is not None:
            self._writer.add_scalar(tag, float(number), global_step=int(step))

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """One scalar per key, tagged ``<prefix>/<key>`` (just ``<key>`` when prefix is '')."""
        bad = [f"{k}={v!r}" for k, v in values.items() if as_number(v) is None]
        if bad:
            raise ValueError(f"scalars {prefix!r}: not numbers: {', '.join(bad)}")
        for key, value in values.items():
            self.scalar(f"{prefix}/{key}" if prefix else key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
