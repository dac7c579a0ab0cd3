"""What the step loop's shortcuts must keep: the same math, hooks and files as the general
paths they stand in for."""

import numpy as np
import pytest

from kubelearn import RunConfig
from kubelearn.estimators import LinearRegressor, optimizers
from kubelearn.estimators import network as net
from kubelearn.hooks import Hook
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
