"""Glue between training and run tracking: a training hook and an evaluation recorder.

Both write to a :class:`~kubelearn.em.run.Run` and/or an
:class:`~kubelearn.em.tensorboard.EventWriter`, either of which may be None. Usage::

    run = em.create_run(name="mnist", hparams=hparams)
    train_tb = EventWriter(model_dir)
    eval_tb = EventWriter(os.path.join(model_dir, "eval"))
    estimator.fit(input_fn=..., steps=1000,
                  monitors=[TrainingRecorder(run, train_tb, every_n_steps=100)])
    record_evaluation(estimator.evaluate(input_fn=...), run, eval_tb)
    run.finish()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubelearn.em.run import Run
from kubelearn.em.tensorboard import EventWriter
from kubelearn.em.values import as_number, check_log_type
from kubelearn.hooks import Hook, StepContext

log = logging.getLogger(__name__)


class TrainingRecorder(Hook):
    """Records the training loss at the first step of the session, every ``every_n_steps``
    global steps and at the last one. The first step is where TensorFlow's summary saver
    starts too: without it a curve begins only after a fast model has converged."""

    def __init__(
        self,
        run: Run | None = None,
        writer: EventWriter | None = None,
        every_n_steps: int = 100,
    ) -> None:
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        self.run, self.writer, self.every_n_steps = run, writer, every_n_steps
        self._last_recorded: int | None = None

    def _record(self, step: int, loss: float) -> None:
        if self.run is not None:
            self.run.log("train", {"loss": loss}, step=step)
        if self.writer is not None:
            self.writer.scalar("loss", loss, step)
        self._last_recorded = step

    def begin(self, context: StepContext) -> None:
        self._last_recorded = None

    def after_step(self, context: StepContext) -> None:
        # The global step can jump by more than one (other workers train too): record when
        # it crosses a multiple of every_n_steps, not only when it lands on one.
        if self._last_recorded is None:
            if as_number(context.loss) is not None:
                self._record(context.step, context.loss)
            return
        if context.step // self.every_n_steps > self._last_recorded // self.every_n_steps:
            self._record(context.step, context.loss)

    def end(self, context: StepContext) -> None:
        if self._last_recorded != context.step and as_number(context.loss) is not None:
            self._record(context.step, context.loss)
        if self.writer is not None:
            self.writer.flush()


def record_evaluation(
    results: Mapping[str, Any],
    run: Run | None = None,
    writer: EventWriter | None = None,
    type: str = "val",
) -> dict[str, float]:
    """Record the numbers of an ``evaluate()`` result at its ``global_step``.

    Entries that are not single numbers (arrays, strings) are left out; the metrics
    recorded are returned.
    """
    kind = check_log_type(type)
    step = results.get("global_step")
    step = as_number(step) if step is not None else None
    metrics = {k: v for k, v in results.items() if k != "global_step" and as_number(v) is not None}
    skipped = sorted(set(results) - set(metrics) - {"global_step"})
    if skipped:
        log.debug("not recording non-numeric evaluation results: %s", ", ".join(skipped))
    if not metrics:
        return {}
    int_step = int(step) if step is not None else None
    if run is not None:
        run.log(kind, metrics, step=int_step)
    if writer is not None:
        writer.scalars("", metrics, int_step if int_step is not None else 0)
        writer.flush()
    return {k: float(as_number(v)) for k, v in metrics.items()}


class EvaluationRecorder(Hook):
    """An evaluation hook that records every evaluation's results (see
    :func:`record_evaluation`) and keeps the latest in :attr:`last`."""

    def __init__(self, run: Run | None = None, writer: EventWriter | None = None) -> None:
        self.run, self.writer = run, writer
        self.last: dict[str, float] = {}

    def end(self, context: StepContext) -> None:
        if context.results:
            recorded = record_evaluation(context.results, self.run, self.writer)
            self.last = {"global_step": float(context.step), **recorded}
