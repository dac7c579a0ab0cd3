"""A DNN classifier on the 8x8 handwritten digits (1797 images, 10 classes).

The data set ships inside the package (``data/digits.npz``; the UCI optical digits as
bundled by scikit-learn). Hyper-parameters: ``train_steps`` (1500), ``learning_rate``
(0.01), ``batch_size`` (64), ``hidden_units`` ([64, 32]), ``dropout`` (0.0 = none),
``optimizer`` (Adam), ``activation`` (relu), ``save_checkpoints_steps`` (250),
``eval_throttle_secs`` (1), ``seed`` (0), ``sync_replicas`` (0).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kubelearn import Experiment, RunConfig
from kubelearn.estimators import DNNClassifier
from kubelearn.examples import hparam_values, make_optimizer
from kubelearn.inputs import numpy_input_fn

DEFAULTS: dict[str, Any] = {
    "train_steps": 1500,
    "learning_rate": 0.01,
    "batch_size": 64,
    "hidden_units": [64, 32],
    "dropout": 0.0,
    "optimizer": "Adam",
    "activation": "relu",
    "save_checkpoints_steps": 250,
    "eval_throttle_secs": 1,
    "seed": 0,
    "sync_replicas": 0,
}

DATA = os.path.join(os.path.dirname(__file__), "data", "digits.npz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images scaled to [0, 1] as ``[1797, 64]`` float32 and labels 0..9."""
    with np.load(DATA, allow_pickle=False) as data:
        return data["images"].astype(np.float32) / 16.0, data["labels"].astype(np.int64)


def experiment_fn(run_config: RunConfig | None = None, hparams: Any = None,
                  output_dir: str | None = None) -> Experiment:
    hp = hparam_values(hparams, DEFAULTS)
    if run_config is None:
        run_config = RunConfig(model_dir=output_dir)
    run_config = run_config.replace(save_checkpoints_steps=int(hp["save_checkpoints_steps"]),
                                    tf_random_seed=int(hp["seed"]))
    x, y = load_digits()
    order = np.random.default_rng(int(hp["seed"])).permutation(len(x))
    x, y = x[order], y[order]
    split = len(x) - 300
    estimator = DNNClassifier(
        hidden_units=[int(u) for u in hp["hidden_units"]], n_classes=10, config=run_config,
        optimizer=make_optimizer(hp),
        activation=hp["activation"], dropout=float(hp["dropout"]) or None)
    train_input_fn = numpy_input_fn(x[:split], y[:split], batch_size=int(hp["batch_size"]),
                                    num_epochs=None, shuffle=True,
                                    seed=int(hp["seed"]) + run_config.task_id + 1)
    eval_input_fn = numpy_input_fn(x[split:], y[split:], batch_size=300, num_epochs=1,
                                   shuffle=False)
    return Experiment(estimator, train_input_fn, eval_input_fn,
                      train_steps=int(hp["train_steps"]), eval_steps=None, eval_delay_secs=0,
                      continuous_eval_throttle_secs=float(hp["eval_throttle_secs"]))
