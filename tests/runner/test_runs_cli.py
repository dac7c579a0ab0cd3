"""``kubelearn runs`` with real processes: the ``kubelearn`` command, a plot without
matplotlib, and a run whose process was killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import RUNNER_PATH, make_run, run_cli, run_python, table


def test_plot_without_matplotlib_says_what_to_install(runs_dir: Path, tmp_path: Path) -> None:
    make_run("mnist", 0.1, 10.0)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from kubelearn.em import cli\n"
        "sys.exit(cli.main(['runs', 'plot', 'mnist', '-o', 'x.png']))\n"
    )
    proc = run_python(code, cwd=tmp_path)
    assert proc.returncode == 1
    assert "kubelearn[plot]" in proc.stderr


def test_kubelearn_command_has_runs(runs_dir: Path, tmp_path: Path) -> None:
    run = make_run("mnist", 0.1, 10.0)
    env = dict(os.environ, PYTHONPATH=RUNNER_PATH)
    proc = subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "list", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [run.id]


def test_a_killed_run_is_shown_as_such(runs_dir: Path, capsys) -> None:
    proc = run_python("import os, signal\nfrom kubelearn import em\nem.create_run(name='gone')\n"
                      "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert proc.returncode == -9
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0 and table(out)[1][2] == "Running (process gone)"
    code, out, _ = run_cli(capsys, "runs", "show", "gone", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "Running" and json.loads(out)["process_gone"]
