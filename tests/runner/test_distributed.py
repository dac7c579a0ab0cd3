"""Distributed training with real processes on loopback: the ps protocol, `kubelearn local`,
and faults (SIGKILL of a worker, the ps, the master) that training survives."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubelearn import checkpoints
from kubelearn.distributed.client import PSClient, PSError
from kubelearn.estimators import optimizers
from kubelearn.local import free_port
from tests.processes import pids_with_env
from tests.support import final_evaluation, progress, runner_env, still_running, wait_progress

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ps_process(tmp_path):
    port = free_port()
    tf_config = {"cluster": {"ps": [f"127.0.0.1:{port}"], "worker": ["127.0.0.1:1"]},
                 "task": {"type": "ps", "index": 0}, "environment": "cloud"}
    log = open(tmp_path / "ps.log", "w")  # noqa: SIM115  (outlives this block: the fixture's)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn",
         "kubelearn.examples.linear:experiment_fn", "--model-dir", str(tmp_path / "m")],
        env=runner_env(TF_CONFIG=json.dumps(tf_config), KUBELEARN_TOKEN="s3cret"),
        stdout=log, stderr=subprocess.STDOUT)
    yield proc, f"127.0.0.1:{port}", tmp_path / "ps.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_ps_refuses_bad_token_rejects_bad_tensors_and_keeps_serving(ps_process):
    proc, address, log_path = ps_process
    intruder = PSClient([address], token="wrong", request_timeout=10, deadline=60)
    for _ in range(3):
        with pytest.raises(PSError, match="unauthenticated"):
            intruder.call(0, "status")
    intruder.close()
    client = PSClient([address], token="s3cret", request_timeout=10, deadline=60)
    with pytest.raises(PSError, match="uninitialized"):
        client.call(0, "pull")
    spec = optimizers.spec(optimizers.GradientDescent(0.5))
    client.call(0, "init", {"variables": ["w"], "optimizer": spec, "global_step": 0},
                {"w": np.ones((2, 3), np.float32)})
    for bad in ({"w": np.ones((2, 3), np.float64)}, {"w": np.ones((3, 2), np.float32)},
                {"v": np.ones((2, 3), np.float32)}):
        with pytest.raises(PSError, match="bad_request"):
            client.call(0, "push", {"step": True}, bad)
    header, tensors = client.call(0, "push", {"step": True}, {"w": np.ones((2, 3), np.float32)})
    assert header["global_step"] == 1
    np.testing.assert_allclose(tensors["w"], 0.5)
    client.call(0, "stop")
    assert proc.wait(timeout=30) == 0
    client.close()
    log = log_path.read_text()
    assert log.count("Refused a peer at the handshake") == 1, log  # once per address
    assert "expected float32 [2, 3], got float64 [2, 3]" in log


def _manifest(tmp_path: Path, name: str, hparams: dict, replicas: dict,
              policy: str = "ExitCode", evaluator: bool = False,
              experiment_fn: str = "kubelearn.examples.linear:experiment_fn") -> Path:
    specs = {role: {"replicas": count, "restartPolicy": policy}
             for role, count in replicas.items()}
    if evaluator:
        specs["evaluator"] = {"replicas": 1, "restartPolicy": "OnFailure"}
    manifest = {
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {"experimentFn": experiment_fn,
                 "hparams": hparams, "replicaSpecs": specs,
                 "runPolicy": {"backoffLimit": 10}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _launch(manifest: Path, model_dir: Path,
            module_dir: Path | None = None) -> subprocess.Popen[str]:
    """``kubelearn local`` on ``manifest``; ``module_dir`` holds the experiment's module."""
    extra = {} if module_dir is None else {"PYTHONPATH": os.pathsep.join(
        [str(module_dir), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "local", str(manifest), "--model-dir",
         str(model_dir), "--no-progress"],
        env=runner_env(**extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


def _task_type(pid: int) -> str | None:
    """The task type in a process's TF_CONFIG (None once it is gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in environ:
        if entry.startswith(b"TF_CONFIG="):
            return json.loads(entry[len(b"TF_CONFIG="):])["task"]["type"]
    return None


def _pids_of(model_dir: Path, role: str | None = None) -> list[int]:
    """Processes started for this experiment (of one role: by their TF_CONFIG's task)."""
    pids = pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}")
    return [p for p in pids if role is None or _task_type(p) == role]


def _finish(proc: subprocess.Popen, timeout=240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-5000:]
    return out


HP = {"train_steps": 6000, "n_features": 256, "batch_size": 256, "n_examples": 8192,
      "learning_rate": 0.02, "save_checkpoints_steps": 300}


def test_local_experiment_trains_evaluates_and_every_process_exits(tmp_path):
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "full", {**HP, "train_steps": 1500},
                         {"ps": 2, "worker": 2, "master": 1}, policy="Never", evaluator=True)
    out = _finish(_launch(manifest, model_dir))
    assert "Experiment full Succeeded" in out
    assert re.search(r"replica exit codes: ps-0=0, ps-1=0, master-0=0, worker-0=0, "
                     r"worker-1=0, evaluator-0=0", out), out[-2000:]
    final = final_evaluation(model_dir)
    assert final["global_step"] >= 1500 and final["loss"] < 1e-2
    assert checkpoints.latest_global_step(str(model_dir)) >= 1500
    assert (model_dir / "eval_continuous" / "results.jsonl").exists()  # the evaluator's
    assert "[worker-1]" in out and "[ps-1]" in out
    assert _pids_of(model_dir) == []


@pytest.mark.parametrize("role", ["worker", "ps", "master"])
def test_training_survives_sigkill(tmp_path, role):
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, f"kill-{role}", HP, {"ps": 1, "worker": 2, "master": 1})
    proc = _launch(manifest, model_dir)
    wait_progress(model_dir, 1500, check=still_running(proc))
    checkpoint_before = checkpoints.latest_global_step(str(model_dir))
    victims = _pids_of(model_dir, role)
    assert victims, f"no {role} process found"
    os.kill(victims[0], signal.SIGKILL)
    step_at_kill = progress(model_dir)
    out = _finish(proc)
    assert f"exited with code {128 + signal.SIGKILL}; restarting" in out
    final = final_evaluation(model_dir)
    assert final["global_step"] >= HP["train_steps"]
    assert final["loss"] < 1e-2
    if role == "ps":
        # The restarted ps got its shard back from the newest checkpoint: only the steps
        # since that checkpoint were lost.
        restored = [int(m) for m in re.findall(r"Restoring ps \[0\] from \S+ \(global step "
                                               r"(\d+)\)", out)]
        assert restored and restored[0] >= checkpoint_before, out[-3000:]
        assert step_at_kill - restored[0] <= HP["save_checkpoints_steps"] + 500
    else:
        # The ps kept the variables: nothing was lost.
        assert "Restoring ps" not in out and "Initializing variables" in out
    assert _pids_of(model_dir) == []


def test_sigterm_stops_every_process(tmp_path):
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "stopme", {**HP, "train_steps": 10**7},
                         {"ps": 1, "worker": 1, "master": 1})
    proc = _launch(manifest, model_dir)
    wait_progress(model_dir, 200, check=still_running(proc))
    assert len(_pids_of(model_dir)) == 3
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert _pids_of(model_dir) == []


def test_bad_manifest_starts_nothing(tmp_path):
    manifest = _manifest(tmp_path, "bad", HP, {"ps": 1, "worker": -1, "master": 1})
    proc = subprocess.run([sys.executable, "-m", "kubelearn.cli", "local", str(manifest),
                           "--model-dir", str(tmp_path / "m")], capture_output=True, text=True,
                          env=runner_env(), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "kubelearn local: error: spec.replicaSpecs.worker.replicas: must be >= 0, got -1"]
    assert not (tmp_path / "m").exists()


def test_sync_replicas_steps_in_lockstep(tmp_path):
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "sync", {**HP, "train_steps": 300, "sync_replicas": 3},
                         {"ps": 2, "worker": 2, "master": 1}, policy="Never")
    out = _finish(_launch(manifest, model_dir))
    final = final_evaluation(model_dir)
    # Every global step averages one gradient from each of the 3 replicas, so the step
    # count lands exactly on train_steps (asynchronous training overshoots).
    assert final["global_step"] == 300, out[-3000:]
    assert _pids_of(model_dir) == []


def test_worker_only_cluster_is_led_by_worker_0(tmp_path):
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "workers", {**HP, "train_steps": 400},
                         {"ps": 1, "worker": 2}, policy="Never")
    out = _finish(_launch(manifest, model_dir))
    assert "[worker-0]" in out and "Initializing variables on ps [0]" in out
    assert checkpoints.latest_global_step(str(model_dir)) >= 400
    assert (model_dir / "training_done").exists()


CHECKPOINT_AND_EXPORT_FN = '''
from kubelearn import Experiment, make_export_strategy
from kubelearn.estimators import LinearRegressor
from kubelearn.examples import hparam_values, linear, run_config_for
from kubelearn.inputs import numpy_input_fn


def experiment_fn(run_config, hparams):
    hp = hparam_values(hparams, linear.DEFAULTS)
    config = run_config_for(run_config, None, hp)
    x, y, _, _ = linear.make_data(int(hp["n_features"]), 2048, 0.01, 0)
    return Experiment(
        LinearRegressor(config=config, learning_rate=float(hp["learning_rate"])),
        numpy_input_fn(x, y, batch_size=64, num_epochs=None, shuffle=True,
                       seed=config.task_id),
        numpy_input_fn(x, y, batch_size=2048, num_epochs=1, shuffle=False),
        train_steps=int(hp["train_steps"]), eval_steps=None, eval_delay_secs=0,
        checkpoint_and_export=True, export_strategies=make_export_strategy("every"))
'''


def test_chief_evaluates_and_exports_after_every_checkpoint_it_saves(tmp_path):
    (tmp_path / "ckpt_export.py").write_text(CHECKPOINT_AND_EXPORT_FN)
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "ckpt", {"train_steps": 600, "n_features": 8,
                                            "save_checkpoints_steps": 150},
                         {"ps": 1, "worker": 1, "master": 1}, policy="Never",
                         experiment_fn="ckpt_export:experiment_fn")
    out = _finish(_launch(manifest, model_dir, module_dir=tmp_path))
    lines = (model_dir / "eval_intermediate_export" / "results.jsonl").read_text().splitlines()
    evaluated = [json.loads(line)["global_step"] for line in lines]
    # One evaluation per checkpoint the master saved, the last one at the end of training.
    assert len(evaluated) >= 3 and evaluated == sorted(set(evaluated)), out[-3000:]
    assert evaluated[-1] == checkpoints.latest_global_step(str(model_dir)) >= 600
    assert not (model_dir / "eval" / "results.jsonl").exists()  # no separate final pass
    assert (model_dir / "export" / "every").is_dir()
    assert _pids_of(model_dir) == []


DELAYED_WORKER_FN = '''
import logging
import time

from kubelearn.examples import linear
from kubelearn.hooks import GlobalStepWaiterHook, Hook

log = logging.getLogger("kubelearn")


class Pause(Hook):
    """The master waits after initialising the variables, so the worker reads them first."""

    def begin(self, context):
        time.sleep(1.5)


class FirstLoss(Hook):
    def after_step(self, context):
        if not getattr(self, "logged", False):
            log.info("first loss %.9g at global step %d", context.loss, context.step)
            self.logged = True


def experiment_fn(run_config, hparams):
    experiment = linear.experiment_fn(run_config, hparams)
    if run_config.task_type == "worker":
        experiment.extend_train_hooks([GlobalStepWaiterHook(300, poll_secs=0.01), FirstLoss()])
    elif run_config.task_type == "master":
        experiment.extend_train_hooks([Pause()])
    return experiment
'''


def test_a_worker_that_waited_in_a_hook_trains_from_the_current_variables(tmp_path):
    """A worker reads the variables when it starts, then its hooks may wait (here for
    global step 300, as ``delay_workers_by_global_step`` does) while the master trains.
    Its first gradient must come from the values of its first step, as in a TF session,
    not from those it read at the start: that gradient, from the initial values, would
    undo the master's training (a loss back near its initial 11)."""
    (tmp_path / "delayed_worker.py").write_text(DELAYED_WORKER_FN)
    model_dir = tmp_path / "model"
    manifest = _manifest(tmp_path, "delayed", {"train_steps": 3000, "n_features": 8,
                                               "batch_size": 64, "n_examples": 2048,
                                               "save_checkpoints_steps": 1000},
                         {"ps": 1, "worker": 1, "master": 1}, policy="Never",
                         experiment_fn="delayed_worker:experiment_fn")
    out = _finish(_launch(manifest, model_dir, module_dir=tmp_path))
    assert "[worker-0]" in out and "Waiting for global step 300" in out, out[-3000:]
    first = re.search(r"\[worker-0\].* first loss (\S+) at global step (\d+)", out)
    assert first, out[-3000:]
    loss, step = float(first[1]), int(first[2])
    assert step > 300 and loss < 0.01, out[-3000:]
    final = final_evaluation(model_dir)
    assert final["loss"] < 0.01


def test_local_storage_rules_match_the_cluster(tmp_path):
    """As on a cluster: the model directory is kept by default (a second run resumes from
    it), and ``storage: {ephemeral: true}`` gives a run a directory of its own that is
    removed at its end."""
    kept = _manifest(tmp_path, "kept", {**HP, "train_steps": 200}, {"worker": 1})
    run = [sys.executable, "-m", "kubelearn.cli", "local", "--no-progress"]
    first = subprocess.run([*run, str(kept)], cwd=tmp_path, env=runner_env(), capture_output=True,
                           text=True, timeout=240)
    assert first.returncode == 0, first.stdout[-3000:]
    model_dir = tmp_path / "output" / "kept"
    assert checkpoints.latest_global_step(str(model_dir)) >= 200

    throwaway = yaml.safe_load(kept.read_text())
    throwaway["metadata"]["name"] = "gone"
    throwaway["spec"]["storage"] = {"ephemeral": True}
    path = tmp_path / "gone.yaml"
    path.write_text(yaml.safe_dump(throwaway))
    proc = subprocess.run([*run, str(path)], cwd=tmp_path, env=runner_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if "(spec.storage.ephemeral)" in x]
    removed = Path(line.split("model dir ", 1)[1].split(" removed", 1)[0])
    assert removed.name.startswith("kubelearn-gone-") and not removed.exists()
    assert not (tmp_path / "output" / "gone").exists()
