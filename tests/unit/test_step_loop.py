"""What the step loop's shortcuts must keep: the same math, hooks and files as the general
paths they stand in for."""

import json
import math
import os
import time

import numpy as np
import pytest

from kubelearn import RunConfig, atomic, checkpoints, fs, hooks
from kubelearn.estimators import LinearRegressor, optimizers
from kubelearn.estimators import network as net
from kubelearn.estimators.session import SaveTimer
from kubelearn.hooks import PROGRESS_FILE, Hook, LoggingHook, ProgressHook, StepContext
from kubelearn.inputs import numpy_input_fn


@pytest.mark.parametrize(("head", "outputs"), [(net.REGRESSION, 1), (net.REGRESSION, 3),
                                               (net.BINARY, 1), (net.MULTICLASS, 4)])
def test_linear_shortcut_is_bitwise_the_general_formula(head, outputs):
    rng = np.random.default_rng(1)
    network = net.Network("linear", head, outputs)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    y = (rng.normal(size=(32, outputs)).astype(np.float32) if head == net.REGRESSION
         else rng.integers(0, max(outputs, 2), 32))
    params = {k: rng.normal(size=v.shape).astype(np.float32)
              for k, v in network.init_params(5, rng).items()}
    loss, grads = network.loss_and_grads(params, x, y)
    logits = x @ params["linear/logits/kernel"] + params["linear/logits/bias"]
    want_loss, delta = net.head_loss(head, logits, y)
    assert loss == float(want_loss)
    assert list(grads) == ["linear/logits/kernel", "linear/logits/bias"]
    np.testing.assert_array_equal(grads["linear/logits/kernel"], x.T @ delta)
    np.testing.assert_array_equal(grads["linear/logits/bias"], delta.sum(axis=0))
    assert all(g.dtype == np.float32 for g in grads.values())


def test_layer_names_are_a_fresh_list_each_time():
    network = net.Network("dnn", net.REGRESSION, 1, (3,))
    names = network.layer_names()
    names.append("dnn/extra")
    assert network.layer_names() == ["dnn/hiddenlayer_0", "dnn/logits"]
    assert list(network.shapes(2)) == ["dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias",
                                       "dnn/logits/kernel", "dnn/logits/bias"]


def test_sgd_apply_matches_update_for_small_and_blocked_variables():
    rng = np.random.default_rng(2)
    shapes = {"small": (3, 4), "large": (optimizers._CHUNK + 17,)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    grads = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    expected = {k: v.copy() for k, v in params.items()}
    reference = optimizers.GradientDescent(0.1)
    for name in shapes:
        reference.update(name, expected[name], grads[name])
    optimizers.GradientDescent(0.1).apply(params, grads)
    for name in shapes:
        np.testing.assert_array_equal(params[name], expected[name])


class _Counting(Hook):
    def __init__(self):
        self.calls = {"begin": 0, "after_step": 0, "end": 0}

    def begin(self, context):
        self.calls["begin"] += 1

    def after_step(self, context):
        self.calls["after_step"] += 1

    def end(self, context):
        self.calls["end"] += 1


class _BeginEndOnly(Hook):
    def __init__(self):
        self.seen = []

    def begin(self, context):
        self.seen.append("begin")

    def end(self, context):
        self.seen.append(("end", context.step))


class _DuckTyped:  # not a Hook: called the same way
    def __init__(self):
        self.steps = []

    def begin(self, context):
        pass

    def after_step(self, context):
        self.steps.append(context.step)

    def end(self, context):
        pass


def test_every_hook_runs_as_before(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(axis=1)
    counting, begin_end, duck = _Counting(), _BeginEndOnly(), _DuckTyped()
    estimator = LinearRegressor(config=RunConfig(model_dir=str(tmp_path)))
    estimator.fit(input_fn=numpy_input_fn(x, y, batch_size=16, num_epochs=None,
                                          shuffle=False),
                  steps=7, monitors=[counting, begin_end, duck])
    assert counting.calls == {"begin": 1, "after_step": 7, "end": 1}
    assert begin_end.seen == ["begin", ("end", 7)]
    assert duck.steps == list(range(1, 8))


def test_dict_features_are_batched_per_column():
    x = {"a": np.arange(5, dtype=np.float32), "b": np.arange(5, 10, dtype=np.float32)}
    batches = list(numpy_input_fn(x, np.arange(5), batch_size=2, shuffle=False)())
    assert [sorted(f) for f, _ in batches] == [["a", "b"]] * 3
    np.testing.assert_array_equal(batches[2][0]["b"], [9.0])
    np.testing.assert_array_equal(batches[1][1], [2, 3])


def _count_fsyncs(monkeypatch):
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_atomic_write_is_durable_unless_told_otherwise(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    path = tmp_path / "f"
    atomic.write_text(path, "one")
    assert path.read_text() == "one" and len(calls) == 2  # the file, then the directory
    atomic.write_text(path, "two", durable=False)
    fs.write_text(str(path), "three", durable=False)
    assert path.read_text() == "three" and len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary left behind


def test_progress_is_replaced_without_fsync_and_written_at_the_end(tmp_path, monkeypatch):
    calls = _count_fsyncs(monkeypatch)
    hook = ProgressHook(str(tmp_path), every_secs=3600)
    context = StepContext(None, None)
    context.step = 4
    hook.begin(context)
    context.step, context.loss = 5, 0.25
    hook.after_step(context)  # the first step writes
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["global_step"] == 5
    context.step = 6
    hook.after_step(context)  # within every_secs: no write
    assert json.loads((tmp_path / PROGRESS_FILE).read_text())["global_step"] == 5
    context.step, context.loss = 9, float("nan")
    hook.end(context)
    record = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert record["global_step"] == 9 and record["loss"] is None
    assert calls == []


def test_logging_hook_logs_every_n_steps_from_where_training_starts(caplog):
    from kubelearn.hooks import LoggingHook

    hook = LoggingHook(every_n_steps=100)
    context = StepContext(None, None)
    context.step = 250  # restored from a checkpoint
    hook.begin(context)
    with caplog.at_level("INFO", logger="kubelearn"):
        for step in range(251, 600):
            context.step, context.loss = step, 0.5
            hook.after_step(context)
    logged = [r.getMessage().split(",")[0] for r in caplog.records]
    assert logged == ["global_step = 350", "global_step = 450", "global_step = 550"]


def test_logging_hook_with_no_interval_stays_quiet(caplog):
    from kubelearn.hooks import LoggingHook

    hook = LoggingHook(every_n_steps=0)
    context = StepContext(None, None)
    hook.begin(context)
    with caplog.at_level("INFO", logger="kubelearn"):
        for step in range(1, 50):
            context.step = step
            hook.after_step(context)
    assert caplog.records == []


@pytest.mark.parametrize(("hidden", "l2", "linear"), [((), 0.0, True), ((), 0.1, False),
                                                      ((4,), 0.0, False)])
def test_the_step_function_is_the_shortcut_only_where_it_applies(hidden, l2, linear):
    rng = np.random.default_rng(3)
    network = net.Network("linear" if linear else "dnn", net.REGRESSION, 1, hidden, l2=l2)
    params = network.init_params(5, rng)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.normal(size=(16, 1)).astype(np.float32)
    step_fn = network.loss_and_grads_function()
    assert (step_fn == network._linear_loss_and_grads) is linear
    loss, grads = step_fn(params, x, y, None)
    want_loss, want_grads = network.loss_and_grads(params, x, y)
    assert loss == want_loss and list(grads) == list(want_grads)
    for name in grads:
        np.testing.assert_array_equal(grads[name], want_grads[name])


@pytest.mark.parametrize("shape", [(256, 1), (7, 3), (1, 5), (33, 128)])
def test_bias_gradient_is_bitwise_the_row_sum(shape):
    delta = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(net._sum_rows(delta), delta.sum(axis=0))
    assert net._sum_rows(delta).shape == (shape[1],)


def test_regression_labels_take_the_short_path_only_when_no_conversion_is_needed(tmp_path):
    from kubelearn.estimators import LinearClassifier

    est = LinearRegressor(config=RunConfig(model_dir=str(tmp_path / "r")))
    y = np.arange(6, dtype=np.float32)
    labels = est._labels(y)
    assert labels.shape == (6, 1) and np.shares_memory(labels, y)
    two = y.reshape(6, 1)
    assert est._labels(two) is two
    assert est._labels(np.ones((2, 3, 2), np.float32)).shape == (2, 6)
    converted = est._labels(np.arange(6, dtype=np.float64))
    assert converted.dtype == np.float32 and converted.shape == (6, 1)
    assert est._labels([1.0, 2.0]).dtype == np.float32
    classifier = LinearClassifier(n_classes=3, config=RunConfig(model_dir=str(tmp_path / "c")))
    with pytest.raises(ValueError, match="Labels must be in"):
        classifier._labels(np.array([0.0, 5.0], np.float32))


def test_a_batch_is_converted_as_features_and_labels_are_one_by_one(tmp_path):
    from kubelearn.estimators import LinearClassifier

    regressor = LinearRegressor(config=RunConfig(model_dir=str(tmp_path / "r")))
    classifier = LinearClassifier(n_classes=3, config=RunConfig(model_dir=str(tmp_path / "c")))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    cases = [(regressor, x, np.arange(4, dtype=np.float32)),
             (regressor, x, np.ones((4, 1), np.float32)),
             (regressor, x.astype(np.float64), np.arange(4)),
             (regressor, {"a": x[:, 0], "b": x[:, 1:]}, np.arange(4, dtype=np.float32)),
             (classifier, x, np.array([0, 2, 1, 0]))]
    for estimator, features, labels in cases:
        xb, yb = estimator._batch(features, labels)
        want_x, want_y = estimator._features(features), estimator._labels(labels)
        assert xb.dtype == want_x.dtype and yb.dtype == want_y.dtype
        np.testing.assert_array_equal(xb, want_x)
        np.testing.assert_array_equal(yb, want_y)
        assert yb.shape == want_y.shape
    with pytest.raises(ValueError, match="Labels must be in"):
        classifier._batch(x, np.array([0, 3, 1, 0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_sgd_apply_is_bitwise_the_python_float_formula(dtype):
    rng = np.random.default_rng(5)
    param = rng.normal(size=(7, 3)).astype(dtype)
    grad = rng.normal(size=(7, 3)).astype(dtype)
    optimizer = optimizers.GradientDescent(0.037)
    for rate in (0.037, 0.5):  # a new rate takes effect at once
        optimizer.learning_rate = rate
        expected = param - rate * grad
        optimizer.apply({"w": param}, {"w": grad})
        np.testing.assert_array_equal(param, expected)
        assert param.dtype == dtype


def test_sgd_rate_for_a_non_float_gradient_stays_the_float():
    optimizer = optimizers.GradientDescent(0.25)
    assert optimizer._rate_as(np.dtype(np.int64)) == 0.25
    rate = optimizer._rate_as(np.dtype(np.float32))
    assert rate.dtype == np.float32 and rate.shape == () and not rate.flags.writeable


class _EveryThird(Hook):
    """Says when it is due; the loop must call it then, and may skip the steps between."""

    def __init__(self):
        self.seen = []
        self._next = 3

    def after_step(self, context):
        if context.step >= self._next:
            self.seen.append((context.step, context.loss))
            self._next = context.step + 3

    def next_due(self):
        return self._next, math.inf


class _LoudLogging(LoggingHook):
    """Overrides after_step without next_due: LoggingHook's schedule no longer says when
    it has work, so it is called at every step."""

    def __init__(self):
        super().__init__(every_n_steps=100)
        self.steps = []

    def after_step(self, context):
        self.steps.append(context.step)


def test_hooks_with_a_schedule_see_their_due_steps_and_the_rest_every_step(tmp_path, caplog):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(axis=1)
    every_third, loud, counting = _EveryThird(), _LoudLogging(), _Counting()
    estimator = LinearRegressor(config=RunConfig(model_dir=str(tmp_path / "a"),
                                                 log_step_count_steps=4))
    with caplog.at_level("INFO", logger="kubelearn"):
        estimator.fit(input_fn=numpy_input_fn(x, y, batch_size=16, num_epochs=None,
                                              shuffle=False),
                      steps=10, monitors=[every_third, loud, counting])
    assert [step for step, _ in every_third.seen] == [3, 6, 9]
    assert all(np.isfinite(loss) and loss > 0 for _, loss in every_third.seen)
    assert loud.steps == list(range(1, 11)) and counting.calls["after_step"] == 10
    logged = [r.getMessage().split(",")[0] for r in caplog.records
              if r.getMessage().startswith("global_step")]
    assert logged == ["global_step = 4", "global_step = 8"]


def test_next_due_trusts_only_a_schedule_defined_beside_after_step():
    assert hooks.next_due(_EveryThird()) == (3, math.inf)
    assert hooks.next_due(_LoudLogging()) == hooks.EVERY_STEP
    assert hooks.next_due(_Counting()) == hooks.EVERY_STEP
    assert hooks.next_due(_DuckTyped()) == hooks.EVERY_STEP
    assert hooks.next_due(LoggingHook(every_n_steps=5)) == (5, math.inf)
    assert hooks.next_due(hooks.StopAtStepHook(last_step=7)) == (7, math.inf)
    assert hooks.next_due(ProgressHook("unused"))[0] == math.inf


def test_a_stop_hook_still_stops_at_its_step(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    estimator = LinearRegressor(config=RunConfig(model_dir=str(tmp_path)))
    estimator.fit(input_fn=numpy_input_fn(x, x.sum(axis=1), batch_size=16, num_epochs=None,
                                          shuffle=False),
                  steps=50, monitors=[hooks.StopAtStepHook(num_steps=6)])
    assert checkpoints.latest_global_step(str(tmp_path)) == 6


def test_checkpoints_by_time_are_saved_between_the_first_and_the_last(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    config = RunConfig(model_dir=str(tmp_path), save_checkpoints_secs=1e-4,
                       save_checkpoints_steps=None, keep_checkpoint_max=None)
    LinearRegressor(config=config).fit(
        input_fn=numpy_input_fn(x, x.sum(axis=1), batch_size=16, num_epochs=None,
                                shuffle=False), steps=40)
    # Each save takes longer than the interval, so the step after a save is due again.
    assert len(checkpoints.checkpoint_paths(str(tmp_path))) >= 10


def test_save_timer_on_another_clock_is_asked_at_every_step():
    now = [100.0]
    timer = SaveTimer(None, 5.0, clock=lambda: now[0])
    assert timer.next_due() == (0, -math.inf)
    timer.saved(1)
    assert timer.next_due() == (math.inf, -math.inf)
    monotonic = SaveTimer(None, 5.0)
    before = time.monotonic()
    monotonic.saved(1)
    after = time.monotonic()
    # On time.monotonic the timer gives its deadline: the save's time plus the interval.
    due_step, due_time = monotonic.next_due()
    assert due_step == math.inf and before + 5.0 <= due_time <= after + 5.0
    assert SaveTimer(10, None).next_due() == (0, math.inf)
