"""Linear regression on generated data: ``y = x . w + b + noise``.

Hyper-parameters: ``train_steps`` (1000), ``learning_rate`` (0.05), ``batch_size`` (32),
``n_features`` (8), ``n_examples`` (4096), ``noise`` (0.01), ``optimizer`` (SGD),
``save_checkpoints_steps`` (100), ``eval_throttle_secs`` (1), ``seed`` (0),
``sync_replicas`` (0: asynchronous; N: average N gradients per step).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kubelearn import Experiment, RunConfig
from kubelearn.estimators import LinearRegressor
from kubelearn.examples import hparam_values, make_optimizer
from kubelearn.inputs import numpy_input_fn

DEFAULTS: dict[str, Any] = {
    "train_steps": 1000,
    "learning_rate": 0.05,
    "batch_size": 32,
    "n_features": 8,
    "n_examples": 4096,
    "noise": 0.01,
    "optimizer": "SGD",
    "save_checkpoints_steps": 100,
    "eval_throttle_secs": 1,
    "seed": 0,
    "sync_replicas": 0,
}


def make_data(n_features: int, n_examples: int, noise: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Features, targets, and the generating weights and bias."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-2.0, 2.0, size=n_features)
    bias = float(rng.uniform(-1.0, 1.0))
    x = rng.normal(size=(n_examples, n_features)).astype(np.float32)
    y = (x @ weights + bias + noise * rng.normal(size=n_examples)).astype(np.float32)
    return x, y, weights, bias


def experiment_fn(run_config: RunConfig | None = None, hparams: Any = None,
                  output_dir: str | None = None) -> Experiment:
    hp = hparam_values(hparams, DEFAULTS)
    if run_config is None:
        run_config = RunConfig(model_dir=output_dir)
    run_config = run_config.replace(save_checkpoints_steps=int(hp["save_checkpoints_steps"]),
                                    tf_random_seed=int(hp["seed"]))
    x, y, _, _ = make_data(int(hp["n_features"]), int(hp["n_examples"]), float(hp["noise"]),
                           int(hp["seed"]))
    split = len(x) * 4 // 5
    estimator = LinearRegressor(config=run_config, optimizer=make_optimizer(hp))
    train_input_fn = numpy_input_fn(x[:split], y[:split], batch_size=int(hp["batch_size"]),
                                    num_epochs=None, shuffle=True,
                                    seed=int(hp["seed"]) + run_config.task_id + 1)
    eval_input_fn = numpy_input_fn(x[split:], y[split:], batch_size=1024, num_epochs=1,
                                   shuffle=False)
    return Experiment(estimator, train_input_fn, eval_input_fn,
                      train_steps=int(hp["train_steps"]), eval_steps=None, eval_delay_secs=0,
                      continuous_eval_throttle_secs=float(hp["eval_throttle_secs"]))
