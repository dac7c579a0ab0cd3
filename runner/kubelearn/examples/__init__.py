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
