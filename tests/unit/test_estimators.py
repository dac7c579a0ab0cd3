"""Estimator math (gradients against finite differences), training, checkpoints, export."""

import os

import numpy as np
import pytest

from kubelearn import RunConfig, checkpoints, learn_runner
from kubelearn.estimators import (
    DNNClassifier,
    DNNRegressor,
    LinearClassifier,
    LinearRegressor,
    NotFittedError,
    load_exported,
    optimizers,
)
from kubelearn.estimators import metrics as metrics_lib
from kubelearn.estimators import network as net
from kubelearn.examples import digits, linear
from kubelearn.inputs import numpy_input_fn


def _numeric_grads(network, params, x, y, seed, eps=1e-6):
    grads = {}
    for name, value in params.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            orig = value[idx]
            value[idx] = orig + eps
            up, _ = network.loss_and_grads(params, x, y, np.random.default_rng(seed))
            value[idx] = orig - eps
            down, _ = network.loss_and_grads(params, x, y, np.random.default_rng(seed))
            value[idx] = orig
            g[idx] = (up - down) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize(
    ("head", "outputs", "hidden", "activation", "dropout", "l2"),
    [
        (net.REGRESSION, 1, (), "linear", None, 0.0),
        (net.REGRESSION, 2, (), "linear", None, 0.1),
        (net.BINARY, 1, (), "linear", None, 0.0),
        (net.MULTICLASS, 4, (), "linear", None, 0.01),
        (net.REGRESSION, 1, (5, 3), "tanh", None, 0.0),
        (net.BINARY, 1, (4,), "sigmoid", None, 0.05),
        (net.MULTICLASS, 3, (6, 4), "relu", None, 0.0),
        (net.MULTICLASS, 3, (6,), "elu", 0.3, 0.0),
        (net.REGRESSION, 1, (5,), "relu", 0.5, 0.01),
    ],
)
def test_analytic_gradients_match_finite_differences(head, outputs, hidden, activation,
                                                     dropout, l2):
    rng = np.random.default_rng(0)
    network = net.Network("dnn" if hidden else "linear", head, outputs, hidden, activation,
                          dropout, l2, dtype=np.float64)
    x = rng.normal(size=(7, 4))
    if head == net.REGRESSION:
        y = rng.normal(size=(7, outputs))
    else:
        y = rng.integers(0, max(outputs, 2), size=7)
    params = network.init_params(4, rng)
    for value in params.values():  # non-zero everywhere, away from relu kinks
        value += rng.normal(scale=0.3, size=value.shape)
    _, grads = network.loss_and_grads(params, x, y, np.random.default_rng(5))
    numeric = _numeric_grads(network, params, x, y, seed=5)
    for name in params:
        np.testing.assert_allclose(grads[name], numeric[name], rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def test_optimizers_first_steps_match_their_formulas():
    g = np.array([0.5, -2.0])
    for name, expected in [
        ("SGD", 1.0 - 0.1 * g),
        ("Momentum", 1.0 - 0.1 * g),
        ("Adagrad", 1.0 - 0.1 * g / np.sqrt(0.1 + g * g)),
        ("Adam", 1.0 - 0.1 * np.sign(g)),
    ]:
        opt = optimizers.get(name, 0.1)
        params = {"w": np.ones(2)}
        opt.apply(params, {"w": g})
        np.testing.assert_allclose(params["w"], expected, rtol=1e-6, err_msg=name)
    momentum = optimizers.get("Momentum", 0.1)
    params = {"w": np.ones(2)}
    momentum.apply(params, {"w": g})
    momentum.apply(params, {"w": g})
    np.testing.assert_allclose(params["w"], 1.0 - 0.1 * g - 0.1 * (0.9 * g + g))
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optimizers.get("Ftrl2", 0.1)
    restored = optimizers.from_spec(optimizers.spec(optimizers.Adam(0.01, beta1=0.8)))
    assert isinstance(restored, optimizers.Adam) and restored.beta1 == 0.8


def test_auc_and_classification_metrics():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.4])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert metrics_lib.auc(labels, scores) == pytest.approx(brute)
    probs = np.stack([1 - scores, scores], axis=1)
    out = metrics_lib.classification(labels, probs)
    predicted = scores > 0.5
    assert out["accuracy"] == pytest.approx(np.mean(predicted == labels))
    assert out["precision"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx(2 / 3)
    reg = metrics_lib.regression(np.array([1.0, 2.0]), np.array([1.5, 2.5]))
    assert reg["rmse"] == pytest.approx(0.5) and reg["mae"] == pytest.approx(0.5)


def _config(tmp_path, **kwargs):
    kwargs.setdefault("log_step_count_steps", 0)
    return RunConfig(model_dir=str(tmp_path), tf_random_seed=0, **kwargs)


def test_linear_regressor_recovers_generating_weights(tmp_path):
    x, y, weights, bias = linear.make_data(n_features=5, n_examples=2000, noise=0.01, seed=3)
    est = LinearRegressor(config=_config(tmp_path), learning_rate=0.1)
    est.fit(input_fn=numpy_input_fn(x, y, batch_size=64, num_epochs=None, shuffle=True),
            steps=1500)
    np.testing.assert_allclose(est.get_variable_value("linear/logits/kernel")[:, 0], weights,
                               atol=1e-2)
    assert est.get_variable_value("linear/logits/bias")[0] == pytest.approx(bias, abs=1e-2)
    result = est.evaluate(x=x, y=y)
    assert result["global_step"] == 1500 and result["rmse"] < 0.02


def test_digits_dnn_reaches_090_accuracy(tmp_path):
    result, _ = learn_runner.run(digits.experiment_fn,
                                 run_config=RunConfig(model_dir=str(tmp_path),
                                                      log_step_count_steps=0),
                                 hparams=None)
    assert result["accuracy"] >= 0.9
    assert set(result) >= {"loss", "global_step", "accuracy", "precision", "recall", "auc"}


def test_linear_classifier_binary_and_multiclass(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 2)).astype(np.float32)
    y2 = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    binary = LinearClassifier(config=_config(tmp_path / "b"), learning_rate=0.5)
    binary.fit(x=x, y=y2, steps=300, batch_size=60)
    assert binary.evaluate(x=x, y=y2)["accuracy"] > 0.95
    y3 = np.digitize(x[:, 0], [-0.5, 0.5])
    multi = LinearClassifier(n_classes=3, config=_config(tmp_path / "m"), learning_rate=0.5)
    multi.fit(x=x, y=y3, steps=600, batch_size=60)
    result = multi.evaluate(x=x, y=y3)
    assert result["accuracy"] > 0.9 and 0.9 < result["auc"] <= 1.0
    preds = multi.predict(x=x[:5], as_iterable=False)
    assert preds["probabilities"].shape == (5, 3)
    np.testing.assert_allclose(preds["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="Labels"):
        multi.fit(x=x, y=y3 + 5, steps=1)


def test_dnn_regressor_dict_features_and_export(tmp_path):
    rng = np.random.default_rng(2)
    features = {"a": rng.normal(size=(400, 1)).astype(np.float32),
                "b": rng.normal(size=(400, 2)).astype(np.float32)}
    y = np.sin(features["a"][:, 0]) + features["b"][:, 0] * features["b"][:, 1]
    est = DNNRegressor(hidden_units=[16, 8], config=_config(tmp_path), optimizer="Adam",
                       learning_rate=0.02)
    est.fit(input_fn=numpy_input_fn(features, y, batch_size=50, num_epochs=None,
                                    shuffle=True), steps=800)
    assert est.evaluate(input_fn=numpy_input_fn(features, y, batch_size=100,
                                                shuffle=False))["rmse"] < 0.5
    path = est.export(str(tmp_path / "export"))
    exported = load_exported(path)
    direct = est.predict(input_fn=numpy_input_fn(features, None, batch_size=400,
                                                 shuffle=False), as_iterable=False)
    np.testing.assert_allclose(exported.predict(features)["predictions"],
                               direct["predictions"], rtol=1e-5)
    first = next(est.predict(input_fn=numpy_input_fn(features, None, batch_size=10,
                                                     shuffle=False)))
    assert set(first) == {"predictions"}


def test_dnn_classifier_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_classes"):
        DNNClassifier(hidden_units=[4], n_classes=1, config=_config(tmp_path))
    with pytest.raises(ValueError, match="activation"):
        DNNClassifier(hidden_units=[4], activation="swishy", config=_config(tmp_path))
    with pytest.raises(ValueError, match="dropout"):
        DNNClassifier(hidden_units=[4], dropout=1.5, config=_config(tmp_path))
    with pytest.raises(ValueError, match="optimizer"):
        DNNClassifier(hidden_units=[4], optimizer="nope", config=_config(tmp_path))


def test_fit_argument_rules_and_not_fitted(tmp_path):
    est = LinearRegressor(config=_config(tmp_path))
    x, y = np.ones((4, 2), np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match="both steps and max_steps"):
        est.fit(x=x, y=y, steps=1, max_steps=2)
    with pytest.raises(ValueError, match="steps > 0"):
        est.fit(x=x, y=y, steps=0)
    with pytest.raises(NotFittedError, match="Couldn't find trained model"):
        est.evaluate(x=x, y=y)
    with pytest.raises(ValueError, match="different"):
        LinearRegressor(model_dir=str(tmp_path / "other"), config=_config(tmp_path))


def test_checkpoints_keep_max_and_index(tmp_path):
    est = LinearRegressor(config=_config(tmp_path, save_checkpoints_steps=5,
                                         keep_checkpoint_max=3))
    x, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    est.fit(x=x, y=y, steps=23)
    # Saved at the first step, then every 5 steps (1, 6, 11, 16, 21), and at the end (23).
    paths = checkpoints.checkpoint_paths(str(tmp_path))
    assert [checkpoints.step_of(p) for p in paths] == [16, 21, 23]
    npz = sorted(f for f in os.listdir(tmp_path) if f.endswith(".npz"))
    assert npz == ["model.ckpt-16.npz", "model.ckpt-21.npz", "model.ckpt-23.npz"]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
    variables, step = checkpoints.load(paths[-1])
    assert step == 23 and "linear/logits/kernel" in variables


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    np.savez(tmp_path / "model.ckpt-1.npz", evil=np.array([object()], dtype=object))
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-1"\n'
                                         'all_model_checkpoint_paths: "model.ckpt-1"\n')
    with pytest.raises(ValueError, match="pickle"):
        checkpoints.load(checkpoints.latest_checkpoint(str(tmp_path)))


def test_fit_resumes_from_latest_checkpoint_and_optimizer_state(tmp_path):
    x, y, _, _ = linear.make_data(3, 256, 0.0, 0)
    config = _config(tmp_path, save_checkpoints_steps=10)
    LinearRegressor(config=config, optimizer="Adam", learning_rate=0.01).fit(
        x=x, y=y, steps=30)
    resumed = LinearRegressor(config=config, optimizer="Adam", learning_rate=0.01)
    resumed.fit(x=x, y=y, steps=5)
    assert checkpoints.latest_global_step(str(tmp_path)) == 35
    variables, _ = checkpoints.load(checkpoints.latest_checkpoint(str(tmp_path)))
    assert int(variables["linear/logits/kernel/Adam_t"]) == 35
    resumed.fit(x=x, y=y, max_steps=35)
    assert checkpoints.latest_global_step(str(tmp_path)) == 35


def test_checkpoint_from_another_model_is_rejected(tmp_path):
    x, y = np.ones((8, 2), np.float32), np.ones(8, np.float32)
    LinearRegressor(config=_config(tmp_path)).fit(x=x, y=y, steps=2)
    with pytest.raises(ValueError, match="dnn/hiddenlayer_0/kernel"):
        DNNRegressor(hidden_units=[3], config=_config(tmp_path)).fit(x=x, y=y, steps=2)


def test_numpy_input_fn_batches_and_validation():
    x = np.arange(10).reshape(10, 1)
    y = np.arange(10)
    batches = list(numpy_input_fn(x, y, batch_size=4, num_epochs=2, shuffle=False)())
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    np.testing.assert_array_equal(batches[0][0][:, 0], [0, 1, 2, 3])
    shuffled = np.concatenate([b[1] for b in numpy_input_fn(x, y, batch_size=3,
                                                            shuffle=True, seed=1)()])
    assert sorted(shuffled) == list(range(10)) and list(shuffled) != list(range(10))
    with pytest.raises(ValueError, match="shuffle"):
        numpy_input_fn(x, y)
    with pytest.raises(ValueError, match="mismatched"):
        numpy_input_fn(x, y[:5], shuffle=False)
    with pytest.raises(ValueError, match="mismatched"):
        numpy_input_fn({"a": x, "b": x[:3]}, None, shuffle=False)
