"""Manifests and progress readers shared by the fault, cancel and load tests."""

from __future__ import annotations

from typing import Any

from tests.support import final_evaluation, progress, wait_progress  # noqa: F401

#: A model big enough that training takes several seconds: kills land mid-training.
FAULT_HPARAMS = {"train_steps": 6000, "n_features": 256, "batch_size": 256,
                 "n_examples": 8192, "learning_rate": 0.02, "save_checkpoints_steps": 300}


def experiment(name: str, hparams: dict[str, Any], replicas: dict[str, int] | None = None,
               *, policy: str = "ExitCode", backoff_limit: int = 10,
               experiment_fn: str = "kubelearn.examples.linear:experiment_fn",
               ) -> dict[str, Any]:
    replicas = replicas or {"ps": 1, "worker": 2, "master": 1}
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"experimentFn": experiment_fn, "hparams": hparams,
                     "replicaSpecs": {role: {"replicas": n, "restartPolicy": policy}
                                      for role, n in replicas.items()},
                     "runPolicy": {"backoffLimit": backoff_limit}}}
