"""Files another pod (or a person) put in a model directory, as real ``kubelearn local``,
``kubelearn run`` and chief processes meet them: a FIFO, JSON nested thousands deep, a
binary checkpoint index, a checkpoint that is a symbolic link out of the directory, a
``file://`` URL. A file the runner polls is left aside with one warning that never quotes
it, signals are acted on throughout, and a checkpoint kubelearn did not write is one line
and exit code 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.helpers import wait_for
from tests.processes import pids_with_env
from tests.support import RUNNER_PATH, Local, runner_env

LINEAR = "kubelearn.examples.linear:experiment_fn"
SECRET = "s3cr3t-not-to-be-echoed"
DEEP = '{"replicas": ' + "[" * 2000 + f'"{SECRET}"' + "]" * 2000 + "}"


def _manifest(tmp_path: Path, train_steps: int) -> Path:
    path = tmp_path / "linear.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "linear"},
        "spec": {"experimentFn": LINEAR, "hparams": {"train_steps": train_steps},
                 "replicas": {"worker": 1}}}))
    return path


def _fifos(model_dir: Path, *names: str) -> None:
    for name in names:
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(model_dir / name)


def _warnings(run: Local, name: str) -> list[str]:
    return [line for line in run.lines if line.startswith("Warning: ") and name in line]


def _gone(model_dir: Path, timeout: float = 20) -> list[int]:
    """The replica processes of ``model_dir`` still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}")) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _succeeds(tmp_path: Path, model_dir: Path) -> Local:
    """Runs the 300-step experiment into ``model_dir`` to its end: exit 0, no traceback."""
    run = Local(_manifest(tmp_path, 300), model_dir)
    try:
        code = run.finish(180)
    finally:
        run.kill()
    assert code == 0, run.log[-4000:]
    assert "Traceback" not in run.log, run.log[-4000:]
    return run


@pytest.mark.timeout(240)
def test_fifos_where_files_are_polled_hold_nothing_up(tmp_path: Path) -> None:
    model_dir = tmp_path / "out"
    _fifos(model_dir, "scale.json", "progress.json", "eval_continuous/results.jsonl")
    run = _succeeds(tmp_path, model_dir)
    assert "Experiment linear Succeeded" in run.log
    # Polled every 0.2 s, said once.
    assert len(_warnings(run, "scale.json")) == 1, run.log[-4000:]
    assert "is a FIFO" in _warnings(run, "scale.json")[0]
    # The chief replaces progress.json with its own (a rename): at most one warning first.
    assert len(_warnings(run, "progress.json")) <= 1, run.log[-4000:]
    assert "replica exit codes: worker-0=0" in run.log


@pytest.mark.timeout(240)
def test_json_nested_thousands_deep_is_left_aside_without_quoting_it(tmp_path: Path) -> None:
    model_dir = tmp_path / "out"
    model_dir.mkdir()
    (model_dir / "scale.json").write_text(DEEP)
    (model_dir / "eval_continuous").mkdir()
    (model_dir / "eval_continuous" / "results.jsonl").write_text(DEEP[:3000] + "\n")
    run = _succeeds(tmp_path, model_dir)
    assert len(_warnings(run, "scale.json")) == 1, run.log[-4000:]
    assert "nested deeper than" in _warnings(run, "scale.json")[0]
    assert SECRET not in run.log


@pytest.mark.timeout(240)
def test_sigterm_ends_the_launcher_and_every_replica_with_fifos_about(tmp_path: Path) -> None:
    model_dir = tmp_path / "out"
    _fifos(model_dir, "scale.json", "eval_continuous/results.jsonl")
    run = Local(_manifest(tmp_path, 10_000_000), model_dir)
    try:
        run.wait_said("Warning: ", 60)  # the launcher read past scale.json
        wait_for(lambda: run.step() > 0, 120, "training under way")
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish(60)
    finally:
        run.kill()
    assert code == 128 + signal.SIGTERM, run.log[-4000:]
    assert "Experiment linear Stopped" in run.log
    # The chief acted on its SIGTERM too (128+15), rather than being killed after the grace
    # (it reads eval_continuous/results.jsonl as it stops).
    assert "replica exit codes: worker-0=143" in run.log, run.log[-4000:]
    assert "Traceback" not in run.log, run.log[-4000:]
    assert _gone(model_dir) == []


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", *args], capture_output=True,
                          text=True, env=runner_env(PYTHONPATH=RUNNER_PATH), cwd=cwd,
                          timeout=120)


def _one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def _trained(tmp_path: Path, name: str) -> Path:
    """A model directory with the checkpoints of a short training."""
    model_dir = tmp_path / name
    proc = _cli("run", "--experiment-fn", LINEAR, "--hparams", '{"train_steps": 20}',
                "--model-dir", str(model_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return model_dir


@pytest.mark.parametrize("command", ["run", "local"])
def test_a_bad_checkpoint_index_or_a_linked_checkpoint_is_one_line_exit_2(tmp_path, command):
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "checkpoint").write_bytes(b"\xff\xfe\0" + bytes(range(256)))
    elsewhere = _trained(tmp_path, "elsewhere")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "checkpoint").write_bytes((elsewhere / "checkpoint").read_bytes())
    for checkpoint in elsewhere.glob("model.ckpt-*.npz"):
        (linked / checkpoint.name).symlink_to(checkpoint)
    for model_dir, needle in ((binary, "not UTF-8 text"),
                              (linked, "symbolic link out of the model directory")):
        args = (["run", "--experiment-fn", LINEAR] if command == "run"
                else ["local", str(_manifest(tmp_path, 20))])
        proc = _cli(*args, "--model-dir", str(model_dir), cwd=tmp_path)
        _one_line_exit_2(proc, needle)
        assert str(model_dir / "checkpoint") in proc.stderr


def test_a_file_url_model_dir_is_its_path(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    manifest = _manifest(tmp_path, 20)
    proc = _cli("local", str(manifest), "--model-dir", f"file://{tmp_path}/m",
                "--no-progress", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "m" / "checkpoint").is_file()
    assert next((tmp_path / "m" / "runs").iterdir()).is_dir()
    proc = _cli("run", "--experiment-fn", LINEAR, "--hparams", '{"train_steps": 30}',
                "--model-dir", f"file://{tmp_path}/m", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    proc = _cli("runs", "--dir", f"file://{tmp_path}/m/runs", "list", cwd=work)
    assert proc.returncode == 0 and "linear" in proc.stdout, proc.stderr[-2000:]
    # Nothing named file: anywhere, in the working directory or beside the manifest.
    assert list(work.iterdir()) == []
    assert not [p for p in tmp_path.rglob("file:*")]
    proc = _cli("local", str(manifest), "--model-dir", f"file://elsewhere{tmp_path}/m",
                cwd=work)
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "file:///abs/path" in proc.stderr and "Traceback" not in proc.stderr
