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
from kubelearn.examples import hparam_values, make_experiment, make_optimizer, run_config_for

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
    run_config = run_config_for(run_config, output_dir, hp)
    x, y, _, _ = make_data(int(hp["n_features"]), int(hp["n_examples"]), float(hp["noise"]),
                           int(hp["seed"]))
    split = len(x) * 4 // 5
    estimator = LinearRegressor(config=run_config, optimizer=make_optimizer(hp))
    return make_experiment(estimator, (x[:split], y[:split]), (x[split:], y[split:]), hp)
