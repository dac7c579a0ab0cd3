"""Example experiments shipped with every image: ``kubelearn.examples.linear:experiment_fn``
and ``kubelearn.examples.digits:experiment_fn``."""

from __future__ import annotations

from typing import Any


def hparam_values(hparams: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """Defaults overridden by ``hparams`` (an HParams, a dict or None)."""
    values = dict(defaults)
    if hparams is None:
        return values
    given = hparams.values() if hasattr(hparams, "values") and callable(hparams.values) else {}
    if isinstance(hparams, dict):
        given = hparams
    values.update(given)
    return values


def make_optimizer(hp: dict[str, Any]) -> Any:
    """The optimiser named by ``hp["optimizer"]``, synchronous across ``hp["sync_replicas"]``
    replicas when that is above 0."""
    from kubelearn.estimators import optimizers

    optimizer = optimizers.get(hp["optimizer"], float(hp["learning_rate"]))
    replicas = int(hp.get("sync_replicas") or 0)
    return optimizers.SyncReplicas(optimizer, replicas) if replicas > 0 else optimizer


def run_config_for(run_config: Any, output_dir: str | None, hp: dict[str, Any]) -> Any:
    """The RunConfig to build with (the deprecated ``output_dir`` form included), with the
    checkpoint interval and seed of ``hp``."""
    from kubelearn.run_config import RunConfig

    if run_config is None:
        run_config = RunConfig(model_dir=output_dir)
    return run_config.replace(save_checkpoints_steps=int(hp["save_checkpoints_steps"]),
                              tf_random_seed=int(hp["seed"]))


def make_experiment(estimator: Any, train: tuple[Any, Any], evaluation: tuple[Any, Any],
                    hp: dict[str, Any]) -> Any:
    """An Experiment that trains on shuffled batches of ``train`` (each task its own order),
    evaluates on one pass over ``evaluation`` and exports the model after each evaluation
    (``<model_dir>/export/model/<ms>``)."""
    from kubelearn.experiment import Experiment
    from kubelearn.export import make_export_strategy
    from kubelearn.inputs import numpy_input_fn

    seed = int(hp["seed"]) + estimator.config.task_id + 1
    train_input_fn = numpy_input_fn(*train, batch_size=int(hp["batch_size"]), num_epochs=None,
                                    shuffle=True, seed=seed)
    eval_input_fn = numpy_input_fn(*evaluation, batch_size=1024, num_epochs=1, shuffle=False)
    return Experiment(estimator, train_input_fn, eval_input_fn,
                      train_steps=int(hp["train_steps"]), eval_steps=None, eval_delay_secs=0,
                      continuous_eval_throttle_secs=float(hp["eval_throttle_secs"]),
                      export_strategies=[make_export_strategy("model", exports_to_keep=3)])
