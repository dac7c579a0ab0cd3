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


def _runs_list(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=RUNNER_PATH)
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "list", *args],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def _bad_runs(tmp_path: Path) -> dict[str, Path]:
    """A run of each kind that once made ``kubelearn runs list`` fail, hang or leave its
    directory; a good run first."""

    def run(name: str) -> Path:
        return Path(make_run(name, 0.1, 1.0).path)

    def meta(path: Path, old: str, new: str) -> None:
        text = (path / "run.yaml").read_text()
        assert old in text, text
        (path / "run.yaml").write_text(text.replace(old, new))

    made = {kind: run(kind) for kind in ("good", "bigpid", "hugeint", "overflow", "link",
                                         "fifo", "infhp")}
    meta(made["bigpid"], "status: Complete", "status: Running")  # and on this host
    meta(made["bigpid"], f"pid: {os.getpid()}", f"pid: {2**66}")
    with open(made["hugeint"] / "metrics" / "train.jsonl", "a") as handle:
        handle.write(f'{{"step": 99, "metrics": {{"loss": {10**400}}}}}\n')
    with open(made["overflow"] / "metrics" / "val.jsonl", "a") as handle:
        handle.write('{"step": 99, "metrics": {"loss": 1e400}}\n')
    outside = tmp_path / "outside.yaml"
    (made["link"] / "run.yaml").rename(outside)
    (made["link"] / "run.yaml").symlink_to(outside)
    (made["fifo"] / "metrics" / "train.jsonl").unlink()
    os.mkfifo(made["fifo"] / "metrics" / "train.jsonl")
    (made["infhp"] / "hparams.yaml").write_text("lr: .inf\n")
    return made


def test_runs_list_lists_the_good_runs_and_warns_once_per_bad_one(runs_dir: Path,
                                                                   tmp_path: Path) -> None:
    made = _bad_runs(tmp_path)
    warned = {"bigpid", "hugeint", "overflow", "link", "fifo"}
    listed = {"good", "hugeint", "overflow", "infhp"}  # a skipped line leaves the run
    for args in ((), ("--json",)):
        proc = _runs_list(tmp_path, *args)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        names = ({r["name"] for r in json.loads(proc.stdout)} if args
                 else {row[1] for row in table(proc.stdout)[1:]})
        assert names == listed
        warnings = proc.stderr.strip().splitlines()
        assert len(warnings) == len(warned), proc.stderr
        for kind in warned:
            (line,) = [w for w in warnings if made[kind].name in w]
            assert line.startswith("kubelearn runs: warning: ")
    assert "outside.yaml" not in proc.stdout


def test_runs_list_memory_is_bounded_with_a_64_mib_metrics_file(runs_dir: Path,
                                                                tmp_path: Path) -> None:
    """``runs list`` reads the last MiB of a metrics file, so a 64 MiB one (two million
    records) costs it what a short one does; it once cost about 930 MB."""
    run = make_run("long", 0.1, 1.0)
    path = Path(run.path) / "metrics" / "train.jsonl"
    with open(path, "ab") as handle:
        step, size = 100, path.stat().st_size
        while size < 64 << 20:
            chunk = b"".join(b'{"step":%d,"metrics":{"loss":0.%d}}\n' % (s, s % 10)
                             for s in range(step, step + 10_000))
            handle.write(chunk)
            step, size = step + 10_000, size + len(chunk)
    code = ("import resource, subprocess, sys\n"
            "proc = subprocess.run([sys.executable, '-m', 'kubelearn.cli', 'runs', 'list',"
            " '--json'], capture_output=True, text=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "print(proc.returncode, proc.stderr, file=sys.stderr)\n"
            "sys.stdout.write(proc.stdout)\n")
    proc = run_python(code, cwd=tmp_path, timeout=300)
    assert proc.stderr.startswith("0 "), proc.stderr
    peak_kib, listing = proc.stdout.split("\n", 1)
    (listed,) = json.loads(listing)
    assert listed["last_step"] == step - 1
    assert int(peak_kib) < 256 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"
