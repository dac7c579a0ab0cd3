"""``kubelearn run`` as a real process: exit codes, one-line errors, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubelearn import checkpoints
from tests.support import still_running, wait_step

LINEAR = "kubelearn.examples.linear:experiment_fn"


def _run(args, env=None, timeout=120):
    full_env = {**os.environ, **(env or {})}
    if "TF_CONFIG" not in (env or {}):
        full_env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", "run", *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout)


def test_success_exit_0(tmp_path):
    proc = _run(["--experiment-fn", LINEAR, "--model-dir", str(tmp_path),
                 "--hparams", "train_steps=50,save_checkpoints_steps=25"])
    assert proc.returncode == 0, proc.stderr
    assert checkpoints.latest_global_step(str(tmp_path)) == 50


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--experiment-fn", "no_such_module:fn"], {}, "no_such_module"),
        (["--experiment-fn", "kubelearn.examples.linear"], {}, "module:function"),
        (["--experiment-fn", "kubelearn.examples.linear:nope"], {}, "'nope'"),
        (["--experiment-fn", LINEAR, "--hparams", "train_steps=[1,"], {}, "train_steps=[1,"),
        (["--experiment-fn", LINEAR, "--hparams", "a=1,a=2"], {}, "Multiple assignments"),
        (["--experiment-fn", LINEAR, "--schedule", "fly"], {}, "'fly'"),
        (["--experiment-fn", LINEAR], {"TF_CONFIG": "{oops"}, "TF_CONFIG"),
        (["--experiment-fn", LINEAR],
         {"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]},
                                   "task": {"type": "worker", "index": 4}})},
         "4 is not a valid task_id"),
        (["--experiment-fn", LINEAR], {"KUBELEARN_HPARAMS": "{not json"}, "KUBELEARN_HPARAMS"),
        (["--experiment-fn", "not_an_experiment:build"], {}, "did not return an Experiment"),
        (["--experiment-fn", "json:dumps"], {}, "(run_config, hparams)"),
        (["--experiment-fn", "not_an_experiment:own_config"], {},
         "`RunConfig` instance is expected to be used by the `Estimator`"),
    ],
)
def test_bad_input_exit_2_with_one_line(tmp_path, args, env, needle):
    (tmp_path / "not_an_experiment.py").write_text(
        "from kubelearn import Experiment, RunConfig\n"
        "from kubelearn.estimators import LinearRegressor\n\n\n"
        "def build(run_config, hparams):\n    return 42\n\n\n"
        "def own_config(run_config, hparams):\n"
        "    config = RunConfig(model_dir=run_config.model_dir + '-other')\n"
        "    return Experiment(LinearRegressor(config=config), None, None)\n")
    env = {**env, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = _run([*args, "--model-dir", str(tmp_path / "model")], env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_training_error_exit_1_with_traceback(tmp_path):
    proc = _run(["--experiment-fn", LINEAR, "--model-dir", str(tmp_path),
                 "--hparams", "train_steps=50,learning_rate=1e6"])
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "NaN loss" in proc.stderr


def _start(model_dir, steps):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn", LINEAR,
         "--model-dir", model_dir,
         "--hparams", f"train_steps={steps},save_checkpoints_steps=200,batch_size=256,"
                      "n_features=64,n_examples=20000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(model_dir, step, proc, timeout=60):
    return wait_step(lambda: checkpoints.latest_global_step(model_dir), step, timeout,
                     check=still_running(proc), what="checkpoint at step")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_process_resumes_from_last_checkpoint(tmp_path, sig):
    model_dir = str(tmp_path)
    total = 1000000
    proc = _start(model_dir, total)
    saved = _wait_for_step(model_dir, 400, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    # SIGKILL kills the process (a shell and the kubelet report 128 + 9); SIGTERM is handled
    # and exits with 128 + 15 itself, so that it works as a container's PID 1 too.
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig)
    at_kill = checkpoints.latest_global_step(model_dir)
    assert at_kill >= saved
    target = at_kill + 300
    again = subprocess.run(
        [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn", LINEAR,
         "--model-dir", model_dir, "--hparams",
         f"train_steps={target},save_checkpoints_steps=200,batch_size=256,n_features=64,"
         "n_examples=20000"], capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert again.returncode == 0, again.stderr
    assert f"at global step {at_kill}" in again.stderr
    assert checkpoints.latest_global_step(model_dir) == target


def test_sigterm_stops_kubelearn_run_as_pid_1(tmp_path):
    """In a container the pod's command is PID 1, which ignores unhandled SIGTERM."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to start a process as PID 1")
    proc = subprocess.Popen(
        [unshare, "--pid", "--fork", "--kill-child", sys.executable, "-m", "kubelearn.cli",
         "run", "--experiment-fn", LINEAR, "--model-dir", str(tmp_path),
         "--hparams", "train_steps=100000000,save_checkpoints_steps=1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    try:
        _wait_for_step(str(tmp_path), 1000, proc)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        os.kill(int(children[0]), signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:  # --kill-child takes the PID 1 along
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "terminated by signal 15" in err
