"""Manifests and progress readers shared by the fault, cancel and load tests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kubelearn.hooks import PROGRESS_FILE

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


def progress(model_dir: Path) -> int:
    """The chief's global step from model_dir/progress.json (0 before the first write)."""
    try:
        return int(json.loads((model_dir / PROGRESS_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def wait_progress(model_dir: Path, step: int, timeout: float = 120,
                  check: Any = None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = progress(model_dir)
        if now >= step:
            return now
        if check is not None:
            check()
        time.sleep(0.05)
    raise AssertionError(f"global step {step} not reached in {timeout}s; last "
                         f"{progress(model_dir)}")


def final_evaluation(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "eval" / "results.jsonl").read_text().splitlines()[-1])
