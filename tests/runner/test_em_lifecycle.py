"""Run status at process end and crash safety, with real subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml

from kubelearn import em
from tests.support import RUNNER_PATH


def _python(tmp_path: Path, code: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = RUNNER_PATH + os.pathsep + env.get("PYTHONPATH", "")
    env["EM_RUN_PARENT_DIR"] = str(tmp_path / "runs")
    env["EM_RUN_STORE"] = str(tmp_path / "store")
    env["EM_USER"] = "bob"
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _only_run(tmp_path: Path) -> em.RunRecord:
    runs = em.list_runs(tmp_path / "runs")
    assert len(runs) == 1, runs
    return runs[0]


def test_uncaught_exception_marks_run_failed_and_keeps_traceback(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        from kubelearn import em
        run = em.create_run(name="boom")
        run.log("train", {"loss": 1.0}, step=1)
        raise RuntimeError("diverged at step 1")
    """)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "RuntimeError: diverged at step 1" in err  # the previous excepthook still ran
    run = _only_run(tmp_path)
    assert run.status == "Failed"
    assert run.error == "RuntimeError: diverged at step 1"
    assert not run.process_gone()  # it ended and said so
    assert run.finished_at
    assert run.series("train", "loss") == ([1], [1.0])


def test_exception_in_a_thread_marks_run_failed(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        import threading
        from kubelearn import em
        run = em.create_run(name="thread")
        def work():
            raise ValueError("bad batch")
        t = threading.Thread(target=work, name="loader")
        t.start(); t.join()
        print(run.status)
    """)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "Failed"
    assert "ValueError: bad batch" in err
    assert _only_run(tmp_path).error == "ValueError: bad batch (in thread loader)"


def test_normal_exit_without_finish_completes(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        from kubelearn import em
        run = em.create_run(name="quiet")
        run.log("train", {"loss": 0.5}, step=1)
    """)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert _only_run(tmp_path).status == "Complete"


def test_explicit_finish_then_exception_stays_complete(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        from kubelearn import em
        em.create_run(name="done").finish()
        raise SystemError("after the run")
    """)
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert _only_run(tmp_path).status == "Complete"


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {count} lines")


def test_sigkill_mid_logging_leaves_readable_records(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        from kubelearn import em
        run = em.create_run(name="killed", hparams={"lr": 0.1})
        step = 0
        while True:
            step += 1
            run.log("train", {"loss": 1.0 / step, "pad": float(step)}, step=step)
            run.description = f"at step {step}"
    """)
    metrics = tmp_path / "runs"
    try:
        deadline = time.monotonic() + 60
        while not list(metrics.glob("*/metrics/train.jsonl")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        _wait_for_lines(next(metrics.glob("*/metrics/train.jsonl")), 200, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    run = _only_run(tmp_path)
    assert run.status == "Running"  # nothing ran at the kill
    assert run.pid == proc.pid and run.process_gone()
    assert run.to_dict()["process_gone"] is True
    assert run.description.startswith("at step ")  # run.yaml parsed: replaced whole
    assert run.hparams == {"lr": 0.1}
    steps, losses = run.series("train", "loss")
    assert len(steps) >= 200
    assert steps == list(range(1, len(steps) + 1))
    assert losses == [1.0 / s for s in steps]


def test_run_yaml_is_always_whole_under_concurrent_reads(tmp_path: Path) -> None:
    proc = _python(tmp_path, """
        from kubelearn import em
        run = em.create_run(name="meta")
        i = 0
        while True:
            i += 1
            run.labels = [f"label-{i}"] * (i % 50 + 1)
    """)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / "runs").glob("*/run.yaml")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        meta_path = next((tmp_path / "runs").glob("*/run.yaml"))
        for _ in range(300):
            meta = yaml.safe_load(meta_path.read_text())
            assert meta["name"] == "meta" and meta["pid"] == proc.pid
            labels = meta["labels"]
            if labels:  # all copies of one label, as many as that label's number says
                i = int(labels[0].split("-")[1])
                assert labels == [f"label-{i}"] * (i % 50 + 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
