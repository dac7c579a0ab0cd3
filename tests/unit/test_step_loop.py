"""What the step loop's shortcuts must keep: the same math, hooks and files as the general
paths they stand in for."""

import json
import os

import numpy as np
import pytest

from kubelearn import RunConfig, atomic, fs
from kubelearn.estimators import LinearRegressor, optimizers
from kubelearn.estimators import network as net
from kubelearn.hooks import PROGRESS_FILE, Hook, ProgressHook, StepContext
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
