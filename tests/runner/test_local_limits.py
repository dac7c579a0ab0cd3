"""How many replicas ``kubelearn local`` starts, what their TF_CONFIG costs, and SIGTERM in the
middle of a launch: real processes.

A manifest may ask for 100,000 workers (the CRD's maximum); the launcher refuses more than it
can start (``--max-replicas``, default 256, within the machine's open-file and process
limits) before it starts anything. Above 64 replicas the cluster is written once to a file
their TF_CONFIG refers to (N small environments, not N copies of N addresses), and a SIGTERM
during the launch stops it where it is, every process started going with it."""

from __future__ import annotations

import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelearn.local import DEFAULT_MAX_REPLICAS, Console, Launcher
from kubelearn.manifest import parse
from kubelearn_spec import contract
from tests.cluster.helpers import wait_for
from tests.processes import pids_with_env
from tests.support import final_evaluation, runner_env

pytestmark = pytest.mark.slow
LINEAR = "kubelearn.examples.linear:experiment_fn"


def _manifest(replicas: dict[str, int], **hparams: Any) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": "many"},
            "spec": {"experimentFn": LINEAR, "replicas": replicas,
                     "hparams": {"learning_rate": 0.05, **hparams}}}


def _write(tmp_path: Path, manifest: dict[str, Any]) -> Path:
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _local(args: list[str], **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", "local", *args],
                          capture_output=True, text=True, env=runner_env(), timeout=120,
                          **popen)


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_the_crds_maximum_is_refused_at_once_and_nothing_starts(tmp_path: Path) -> None:
    path = _write(tmp_path, _manifest({"worker": 100_000}))
    line = _one_line(_local([str(path), "--model-dir", str(tmp_path / "m")]))
    assert line == ("kubelearn local: error: spec.replicas: 100000 replicas in all; kubelearn "
                    f"local starts at most {DEFAULT_MAX_REPLICAS}: --max-replicas N raises it")
    assert not (tmp_path / "m").exists()


def test_max_replicas_lowers_the_limit_and_is_checked(tmp_path: Path) -> None:
    path = _write(tmp_path, _manifest({"ps": 1, "worker": 2}))
    line = _one_line(_local([str(path), "--max-replicas", "2", "--model-dir",
                             str(tmp_path / "m")]))
    assert line.endswith("spec.replicas: 3 replicas in all; kubelearn local starts at most 2: "
                         "the limit of --max-replicas")
    for bad in ("0", "-3", "many"):
        assert "--max-replicas" in _one_line(_local([str(path), "--max-replicas", bad]))
    assert not (tmp_path / "m").exists()


def test_the_open_file_limit_bounds_what_max_replicas_asks(tmp_path: Path) -> None:
    path = _write(tmp_path, _manifest({"worker": 1000}))

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    line = _one_line(_local([str(path), "--max-replicas", "5000"], preexec_fn=few_files))
    assert line.endswith("1000 replicas in all; kubelearn local starts at most 118: the "
                         "open-file limit (ulimit -n 300) leaves room for no more")


def test_above_the_inline_limit_tf_config_costs_linear_space(tmp_path: Path) -> None:
    """1000 replicas: each environment holds its task and the file's name, the file the
    1000 addresses once (inlined, the environments would hold a million addresses)."""
    spec = parse(_manifest({"ps": 10, "worker": 990}))
    launcher = Launcher(spec, str(tmp_path / "m"), Console(io.StringIO(), progress_tty=False))
    try:
        sizes = [sum(len(k) + len(v) for k, v in r.env.items()) for r in launcher.replicas]
        assert len(sizes) == 1000 and max(sizes) < 1000
        files = {r.env[contract.ENV_CLUSTER_FILE] for r in launcher.replicas}
        assert len(files) == 1
        cluster = json.loads(Path(files.pop()).read_text())
        assert cluster == launcher.cluster and len(cluster["worker"]) == 990
        task = json.loads(launcher.replicas[-1].env["TF_CONFIG"])
        assert task == {"task": {"type": "worker", "index": 989}, "environment": "cloud"}
    finally:
        launcher.close()
    assert not any(Path(f).exists() for f in files)


def test_replicas_train_with_the_cluster_from_a_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith(("TF_CONFIG", "KUBELEARN_"))]:
        monkeypatch.delenv(name)
    spec = parse(_manifest({"ps": 1, "worker": 1, "master": 1}, train_steps=300))
    out = io.StringIO()
    model_dir = tmp_path / "m"
    launcher = Launcher(spec, str(model_dir), Console(out, progress_tty=False), inline_max=0)
    cluster_file = launcher.replicas[0].env[contract.ENV_CLUSTER_FILE]
    assert launcher.run() == 0, out.getvalue()[-3000:]
    assert final_evaluation(model_dir)["global_step"] >= 300
    assert not Path(cluster_file).exists()  # removed with the run
    assert pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}") == []


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (forked: they are there before they exec)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_sigterm_during_the_launch_stops_it_and_every_replica_started(tmp_path: Path) -> None:
    """The launcher is stopped (SIGSTOP) as it says it starts 80 replicas, let go on until
    its first replica is forked and stopped again, given SIGTERM and let go on: it starts
    no more than it had, and none of them outlives it."""
    model_dir = tmp_path / "m"
    path = _write(tmp_path, _manifest({"ps": 1, "worker": 79}, train_steps=10**7))
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "local", str(path), "--model-dir",
         str(model_dir), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=runner_env(), start_new_session=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Experiment many: "):  # printed just before the launch
                proc.send_signal(signal.SIGSTOP)
                break
        proc.send_signal(signal.SIGCONT)
        while not _children(proc.pid):  # forking one takes far longer than a look
            pass
        proc.send_signal(signal.SIGSTOP)
        started_before = len(_children(proc.pid))
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []))
        reader.start()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, "".join(lines)[-3000:]
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(lines)
    stopped = re.search(r"Launch stopped by signal 15 after (\d+) of 80 replicas", out)
    assert stopped, out[-3000:]
    assert 1 <= int(stopped.group(1)) <= started_before + 1 < 80, out[-3000:]
    wait_for(lambda: not pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}"), 30,
             "every replica started to be gone")
