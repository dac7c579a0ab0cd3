"""``kubelearn scale`` on a running ``kubelearn local``: real ps, worker and master processes on
loopback. Workers added mid-run join the training (the ps logs their first push), workers
removed stop on SIGTERM, nothing else restarts, and the experiment ends with the example's
loss; synchronous training refuses the change."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import wait_for
from tests.processes import pids_with_env
from tests.support import Local

pytestmark = pytest.mark.slow


def manifest(tmp_path: Path, **hparams: Any) -> Path:
    path = tmp_path / "linear.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "linear"},
        "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                 "hparams": {"learning_rate": 0.05, "train_steps": 60000, **hparams},
                 "replicas": {"ps": 1, "worker": 2, "master": 1}}}))
    return path


def test_workers_join_and_leave_while_training_goes_on(tmp_path: Path) -> None:
    run = Local(manifest(tmp_path), tmp_path / "out")
    try:
        wait_for(lambda: run.step() > 200, 120, "training under way")
        run.scale(4)
        run.wait_said("Workers scaled from 2 to 4")
        # Worker i starts training min(60, 5 i) s after it starts, as in TensorFlow.
        run.wait_said("First push from worker:3", 60)
        assert run.said("First push from worker:2")
        before = run.step()
        wait_for(lambda: run.step() > before + 200, 60, "training going on with 4 workers")
        run.scale(1)
        run.wait_said("Workers scaled from 4 to 1: worker-1, worker-2, worker-3 stop")
        before = run.step()
        wait_for(lambda: run.step() > before + 200, 60, "training going on with 1 worker")
        code = run.finish()
    finally:
        run.kill()
    log = "\n".join(run.lines)
    assert code == 0, log[-4000:]
    assert "Experiment linear Succeeded" in log
    # Nothing but the scale started or stopped a replica.
    assert "restarting" not in log, log[-4000:]
    final = json.loads((tmp_path / "out" / "eval" / "results.jsonl").read_text()
                       .splitlines()[-1])
    assert final["global_step"] >= 60000 and final["loss"] < 1e-2, final
    deadline = time.monotonic() + 10
    while pids_with_env(f"KUBELEARN_MODEL_DIR={tmp_path / 'out'}") and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert pids_with_env(f"KUBELEARN_MODEL_DIR={tmp_path / 'out'}") == []


def test_synchronous_training_refuses_a_scale(tmp_path: Path) -> None:
    run = Local(manifest(tmp_path, sync_replicas=2, train_steps=3000), tmp_path / "out")
    try:
        wait_for(lambda: run.step() > 50, 120, "training under way")
        run.scale(3)
        run.wait_said("Scale refused: spec.replicas.worker: 3 refused: the experiment trains "
                      "synchronously (each step averages 2 gradients), so it keeps 2 workers")
        assert run.finish() == 0, "\n".join(run.lines[-40:])
    finally:
        run.kill()
    assert not run.said("Workers scaled")


def test_a_count_the_manifest_rules_refuse_is_refused_in_the_log(tmp_path: Path) -> None:
    path = manifest(tmp_path, train_steps=3000)
    spec = yaml.safe_load(path.read_text())
    spec["spec"]["replicas"] = {"ps": 1, "worker": 2}  # no master: worker 0 leads
    path.write_text(yaml.safe_dump(spec))
    run = Local(path, tmp_path / "out")
    try:
        wait_for(lambda: run.step() > 50, 120, "training under way")
        run.scale(0)  # would leave no worker, master or chief
        run.wait_said("Scale refused: spec.replicas: needs at least one worker or master")
        assert run.finish() == 0, "\n".join(run.lines[-40:])
    finally:
        run.kill()


def test_scale_refuses_a_directory_that_is_not_a_local_run(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "kubelearn.cli", "scale", str(tmp_path),
                          "--replicas", "2"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.startswith(f"kubelearn scale: error: {tmp_path} is not the model dir")
    assert out.stderr.count("\n") == 1
    out = subprocess.run([sys.executable, "-m", "kubelearn.cli", "scale", str(tmp_path),
                          "--replicas", "-1"], capture_output=True, text=True)
    assert out.returncode == 2 and "--replicas must be >= 0" in out.stderr
