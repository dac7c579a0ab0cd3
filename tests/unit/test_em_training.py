"""The training hook and evaluation recorder with a real estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kubelearn import RunConfig, em
from kubelearn.em.tensorboard import EventWriter
from kubelearn.em.training import TrainingRecorder, record_evaluation
from kubelearn.estimators import LinearRegressor
from kubelearn.examples import linear
from kubelearn.inputs import numpy_input_fn
from tests.support import scalars


def test_training_and_evaluation_are_recorded(runs_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    x, y, _, _ = linear.make_data(n_features=3, n_examples=200, noise=0.01, seed=1)
    config = RunConfig(model_dir=str(model_dir), tf_random_seed=0, log_step_count_steps=0)
    estimator = LinearRegressor(config=config, learning_rate=0.1)
    run = em.create_run(name="linear", hparams={"learning_rate": 0.1})
    train_tb, eval_tb = EventWriter(model_dir), EventWriter(model_dir / "eval")
    hook = TrainingRecorder(run, train_tb, every_n_steps=10)
    estimator.fit(input_fn=numpy_input_fn(x, y, batch_size=32, num_epochs=None, shuffle=True),
                  steps=35, monitors=[hook])
    results = estimator.evaluate(x=x, y=y)
    recorded = record_evaluation(results, run, eval_tb)
    run.finish()
    train_tb.close()
    eval_tb.close()

    assert results["global_step"] == 35
    assert set(recorded) >= {"loss", "rmse"} and "global_step" not in recorded
    stored = em.load_run(run.path)
    steps, losses = stored.series("train", "loss")
    assert steps == [1, 10, 20, 30, 35]  # the first step, every 10 steps, and the last one
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert stored.series("val", "loss") == ([35], [pytest.approx(results["loss"])])
    assert stored.last("val")["rmse"] == pytest.approx(results["rmse"])
    assert [(t, s) for t, s, _ in scalars(model_dir)] == [("loss", s) for s in steps]
    eval_scalars = {t: (s, v) for t, s, v in scalars(model_dir / "eval")}
    assert eval_scalars["loss"] == (35, pytest.approx(results["loss"], rel=1e-6))


def test_recorders_accept_missing_targets_and_check_arguments(runs_dir: Path) -> None:
    assert record_evaluation({"loss": 1.0, "global_step": 3}) == {"loss": 1.0}
    assert record_evaluation({"global_step": 3, "confusion": np.eye(2)}) == {}
    run = em.create_run(name="e")
    record_evaluation({"loss": np.float32(0.5), "global_step": np.int64(7), "tag": "x"}, run,
                      type="test")
    assert em.load_run(run.path).series("test", "loss") == ([7], [0.5])
    with pytest.raises(ValueError, match="unknown log type"):
        record_evaluation({"loss": 1.0}, run, type="holdout")
    with pytest.raises(ValueError, match="every_n_steps"):
        TrainingRecorder(run, every_n_steps=0)
    run.finish()


def test_recorder_records_when_the_global_step_jumps_past_a_multiple() -> None:
    from kubelearn.hooks import StepContext

    class Sink:
        def __init__(self) -> None:
            self.steps: list[int] = []

        def log(self, kind: str, metrics: dict, step: int | None = None) -> None:
            self.steps.append(step)

    sink = Sink()
    hook = TrainingRecorder(sink, None, every_n_steps=10)  # type: ignore[arg-type]
    context = StepContext(None, None)
    context.step = 3
    hook.begin(context)
    for step in (7, 12, 18, 25, 26):  # other workers move the global step too
        context.step, context.loss = step, 0.5
        hook.after_step(context)
    hook.end(context)
    assert sink.steps == [7, 12, 25, 26]  # this session's first step, then each crossing
