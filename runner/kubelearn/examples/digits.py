"""A DNN classifier on the 8x8 handwritten digits (1797 images, 10 classes).

The data set ships inside the package (``data/digits.npz``; the UCI optical digits as
bundled by scikit-learn). Hyper-parameters: ``train_steps`` (1500), ``learning_rate``
(0.01), ``batch_size`` (64), ``hidden_units`` ([64, 32]), ``dropout`` (0.0 = none),
``optimizer`` (Adam), ``activation`` (relu), ``save_checkpoints_steps`` (250),
``eval_throttle_secs`` (1), ``seed`` (0), ``sync_replicas`` (0). ``hidden_units`` may also
be a string of comma-separated sizes (``"128,64"``), as a sweep's categorical values are.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from kubelearn import Experiment, RunConfig
from kubelearn.estimators import DNNClassifier
from kubelearn.examples import hparam_values, make_experiment, make_optimizer, run_config_for

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


def hidden_units(value: Any) -> list[int]:
    """Layer sizes from a list or a comma-separated string.

    Raises:
      ValueError: naming the value, when a size is not a positive integer.
    """
    parts = value.split(",") if isinstance(value, str) else value
    try:
        units = [int(str(u).strip()) for u in parts]
    except (TypeError, ValueError):
        units = []
    if not units or any(u < 1 for u in units):
        raise ValueError(f"hidden_units {value!r}: give positive layer sizes, e.g. [64, 32] "
                         f"or '64,32'")
    return units


def experiment_fn(run_config: RunConfig | None = None, hparams: Any = None,
                  output_dir: str | None = None) -> Experiment:
    hp = hparam_values(hparams, DEFAULTS)
    run_config = run_config_for(run_config, output_dir, hp)
    x, y = load_digits()
    order = np.random.default_rng(int(hp["seed"])).permutation(len(x))
    x, y = x[order], y[order]
    split = len(x) - 300
    estimator = DNNClassifier(
        hidden_units=hidden_units(hp["hidden_units"]), n_classes=10, config=run_config,
        optimizer=make_optimizer(hp), activation=hp["activation"],
        dropout=float(hp["dropout"]) or None)
    return make_experiment(estimator, (x[:split], y[:split]), (x[split:], y[split:]), hp)
