"""Scaling: steps/s of asynchronous training with 1, 2 and 4 workers against one ps, and the
wall time until the chief's training loss first falls below a target.

Each configuration runs as real processes through the local launcher, in one invocation.
Workers start at once here (the default start delay of ``min(60, 5 * i)`` seconds would
measure the delay, not the training).

    python bench/scaling.py [--steps 4000] [--target-loss 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from typing import Any

from kubelearn.examples import linear
from kubelearn.local import Console, Launcher
from kubelearn.manifest import parse

HPARAMS = {"n_features": 512, "batch_size": 128, "n_examples": 16384, "learning_rate": 0.01,
           "save_checkpoints_steps": 1000}


def experiment_fn(run_config: Any, hparams: Any) -> Any:
    """The linear example, with workers that start training at once."""
    experiment = linear.experiment_fn(run_config, hparams)
    train = experiment.train
    experiment.train = lambda delay_secs=None: train(delay_secs=0)  # type: ignore[method-assign]
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
        reached: dict[str, float] = {}

        def watch() -> None:
            path = os.path.join(model_dir, "progress.json")
            while "done" not in reached:
                try:
                    with open(path, encoding="utf-8") as handle:
                        report = json.load(handle)
                except (OSError, ValueError):
                    report = {}
                step = report.get("global_step", 0)
                if step and "first_step" not in reached:
                    reached["first_step"] = time.monotonic()
                loss = report.get("loss")
                if loss is not None and loss < target_loss and "target" not in reached:
                    reached["target"] = time.monotonic()
                time.sleep(0.01)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        code = launcher.run()
        end = time.monotonic()
        reached["done"] = end
        thread.join()
        if code != 0:
            raise SystemExit(f"{workers} workers: the experiment failed")
        with open(os.path.join(model_dir, "progress.json"), encoding="utf-8") as handle:
            final_step = json.load(handle)["global_step"]
        start = reached.get("first_step", launcher.started)
        return {"steps_per_sec": final_step / (end - start),
                "to_target": reached.get("target", float("nan")) - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--target-loss", type=float, default=0.05)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])
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
