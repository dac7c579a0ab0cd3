"""Experiment functions for end-to-end tests that the shipped examples do not cover."""

from __future__ import annotations

from typing import Any

from kubelearn import Experiment, RunConfig
from kubelearn.examples import linear

BAD_DATA_MESSAGE = "training data has no rows: check the data path in hparams"


def failing_experiment_fn(run_config: RunConfig, hparams: Any) -> Experiment:
    """The linear example whose training input fails at once: an error no restart fixes."""
    experiment = linear.experiment_fn(run_config, hparams)

    def train_input_fn() -> Any:
        raise ValueError(BAD_DATA_MESSAGE)

    experiment._train_input_fn = train_input_fn
    return experiment
