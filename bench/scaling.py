"""Scaling: steps/s of asynchronous training with 1, 2 and 4 workers against one ps (whole runs,
start-up included), and the training time until the chief's loss, averaged over 20 steps,
first falls below a target.

Each configuration runs as real processes through the local launcher, in one invocation.
Workers start at once here (the default start delay of ``min(60, 5 * i)`` seconds would
measure the delay, not the training).

    python bench/scaling.py [--steps 4000] [--target-loss 0.0003]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from kubelearn.examples import linear
from kubelearn.hooks import Hook
from kubelearn.local import Console, Launcher
from kubelearn.manifest import parse

HPARAMS = {"n_features": 512, "batch_size": 128, "n_examples": 16384, "learning_rate": 0.001,
           "save_checkpoints_steps": 1000}


class TargetHook(Hook):
    """On the chief: writes the time training started and the time the loss, averaged over
    the last 20 steps, first fell below the target."""

    def __init__(self, path: str, target: float):
        self.path, self.target = path, target
        self.losses: list[float] = []
        self.start = 0.0
        self.done = False

    def begin(self, context: Any) -> None:
        self.start = time.time()

    def after_step(self, context: Any) -> None:
        self.losses = [*self.losses[-19:], context.loss]
        if not self.done and len(self.losses) == 20 and sum(self.losses) / 20 < self.target:
            self.done = True
            with open(self.path, "w", encoding="utf-8") as handle:
                json.dump({"start": self.start, "reached": time.time()}, handle)


def experiment_fn(run_config: Any, hparams: Any) -> Any:
    """The linear example, with workers that start training at once."""
    experiment = linear.experiment_fn(run_config, hparams)
    train = experiment.train
    experiment.train = lambda delay_secs=None: train(delay_secs=0)  # type: ignore[method-assign]
    if run_config.is_chief:
        experiment.extend_train_hooks([TargetHook(
            os.path.join(run_config.model_dir, "target.json"),
            float(os.environ["SCALING_TARGET_LOSS"]))])
    return experiment


def run(workers: int, steps: int, target_loss: float) -> dict[str, float]:
    manifest = {
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": f"scale-{workers}"},
        "spec": {"experimentFn": "scaling:experiment_fn",
                 "hparams": {**HPARAMS, "train_steps": steps},
                 "replicas": {"ps": 1, "worker": workers}},
    }
    with tempfile.TemporaryDirectory() as model_dir, open(os.devnull, "w") as quiet:
        launcher = Launcher(parse(manifest), model_dir, Console(quiet, progress_tty=False))
        start = time.monotonic()
        code = launcher.run()
        elapsed = time.monotonic() - start
        if code != 0:
            raise SystemExit(f"{workers} workers: the experiment failed")
        with open(os.path.join(model_dir, "progress.json"), encoding="utf-8") as handle:
            final_step = json.load(handle)["global_step"]
        try:
            with open(os.path.join(model_dir, "target.json"), encoding="utf-8") as handle:
                marks = json.load(handle)
            to_target = marks["reached"] - marks["start"]
        except OSError:
            to_target = float("nan")
        return {"steps_per_sec": final_step / elapsed, "to_target": to_target}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--target-loss", type=float, default=0.0003)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
    os.environ["SCALING_TARGET_LOSS"] = str(args.target_loss)
    sys.path.insert(0, here)
    print(f"{'workers':>7} {'steps/s':>9} {'vs 1':>6} {'s to loss<' + str(args.target_loss):>16}")
    base = None
    for workers in (1, 2, 4):
        result = run(workers, args.steps, args.target_loss)
        base = base or result["steps_per_sec"]
        print(f"{workers:>7} {result['steps_per_sec']:9.0f} "
              f"{result['steps_per_sec'] / base:6.2f} {result['to_target']:16.2f}")


if __name__ == "__main__":
    main()
