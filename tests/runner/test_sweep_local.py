"""``kubelearn sweep local`` as real processes: trials of the linear example run by
``kubelearn local``, two at a time, their outcomes, the stop reasons and the exit codes, and
no process left behind."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelearn import checkpoints
from tests.processes import pids_with_env
from tests.support import runner_env

pytest.importorskip("optuna")

EXAMPLE = resources.files("kubelearn.examples") / "sweep-linear.yaml"
LR = {"name": "learning_rate", "type": "discrete", "values": [0.05, 100.0]}


def _sweep(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", "sweep", "local", *args],
                          capture_output=True, text=True, env=runner_env(), cwd=cwd,
                          timeout=timeout)


def _manifest(tmp_path: Path, name: str = "sw", **spec_changes: Any) -> Path:
    """The packaged example with spec fields replaced, its trials a lone master of 200
    steps (the fastest the linear example runs)."""
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = name
    spec = manifest["spec"]
    spec["experiment"]["replicas"] = {"master": 1}
    spec["experiment"]["hparams"]["train_steps"] = 200
    spec.update(copy.deepcopy(spec_changes))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def _facts(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "sweep.json").read_text())


def _assert_no_processes(directory: Path) -> None:
    deadline = time.monotonic() + 10
    while (left := pids_with_env(f"KUBELEARN_MODEL_DIR={directory}")) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The packaged example as it ships: a ps, a worker and a master per trial."""
    tmp = tmp_path_factory.mktemp("example")
    proc = _sweep([str(EXAMPLE), "--dir", str(tmp / "sweep")], cwd=tmp)
    return proc, tmp / "sweep"


def test_example_runs_four_trials_two_at_a_time_and_prints_the_best(example) -> None:
    proc, directory = example
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    facts = _facts(directory)
    assert [t["state"] for t in facts["trials"]] == ["succeeded"] * 4
    assert facts["stop_reason"] == "MaxTrialsReached"
    losses = {t["number"]: t["objective"] for t in facts["trials"]}
    assert facts["best"] == min(losses, key=losses.__getitem__)
    assert all(t["steps"] >= 300 for t in facts["trials"])
    # Never more than two at once: the third starts only after a first one finished.
    lines = proc.stdout.splitlines()
    events = [line.split()[2].rstrip(":") for line in lines if line.startswith("trial ")]
    running = peak = 0
    for event in events:
        running += 1 if event == "started" else -1
        peak = max(peak, running)
    assert peak == 2 and len(events) == 8
    table = lines[lines.index(next(ln for ln in lines if ln.lstrip().startswith("#"))):]
    assert table[0].split() == ["#", "name", "state", "learning_rate", "optimizer", "loss",
                                "steps"]
    best = next(ln for ln in table if ln.startswith("*"))
    assert f"sweep-linear-{facts['best']}" in best
    assert "Sweep sweep-linear finished: MaxTrialsReached (4 succeeded)" in proc.stdout
    # Each trial has its own model directory, manifest and log.
    for t in facts["trials"]:
        assert Path(t["model_dir"], "eval", "results.jsonl").is_file()
        trial = yaml.safe_load((directory / f"{t['name']}.yaml").read_text())
        assert trial["spec"]["hparams"] == {"train_steps": 300, **t["hparams"]}
    _assert_no_processes(directory)


def test_a_finished_sweep_plots_its_objective_and_parallel_coordinates(example) -> None:
    pytest.importorskip("matplotlib")
    _, directory = example
    facts = _facts(directory)
    proc = subprocess.run([sys.executable, "-m", "kubelearn.cli", "sweep", "plot",
                           str(directory), "-o", str(directory / "plots")],
                          capture_output=True, text=True, env=runner_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "axes: learning_rate, optimizer, loss" in proc.stdout
    from tests.support import plotted_series

    drawn = plotted_series(directory / "plots-objective.png")
    assert drawn["numbers"] == [0, 1, 2, 3]
    assert drawn["best_so_far"][-1] == min(t["objective"] for t in facts["trials"])
    parallel = plotted_series(directory / "plots-parallel.png")
    (learning_rate, optimizer, _) = parallel["axes"]
    assert learning_rate["log"] is True and optimizer["categories"]
    assert parallel["lines"][-1] == {**parallel["lines"][-1], "trial": facts["best"],
                                     "best": True}


def test_runs_compare_puts_a_sweeps_trials_side_by_side(example) -> None:
    _, directory = example
    facts = _facts(directory)
    proc = subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "compare", "--sweep",
                           str(directory), "--json"],
                          capture_output=True, text=True, env=runner_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["name"] for r in data["runs"]] == [t["name"] for t in facts["trials"]]
    assert set(data["differing_hparams"]) >= {"learning_rate"}
    rates = data["hparams"]["learning_rate"]
    assert sorted(rates.values()) == sorted(t["hparams"]["learning_rate"]
                                            for t in facts["trials"])
    table = subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "compare",
                            "--sweep", str(directory)],
                           capture_output=True, text=True, env=runner_env(), timeout=120)
    assert table.returncode == 0 and "hparams.learning_rate *" in table.stdout, table.stderr
    both = subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "compare", "x",
                           "--sweep", str(directory)],
                          capture_output=True, text=True, env=runner_env(), timeout=120)
    assert both.returncode == 2


def test_the_same_seed_gives_the_same_hparams(example, tmp_path: Path) -> None:
    _, first = example
    proc = _sweep([str(_manifest(tmp_path, name="sweep-linear")), "--dir", str(tmp_path / "b"),
                   "--json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(proc.stdout)
    assert again == _facts(tmp_path / "b")
    assert [t["hparams"] for t in again["trials"]] == \
        [t["hparams"] for t in _facts(first)["trials"]]
    assert "trial sweep-linear-0 started" in proc.stderr
    _assert_no_processes(tmp_path / "b")


def test_a_diverging_trial_fails_and_the_others_decide(tmp_path: Path) -> None:
    path = _manifest(tmp_path, parameters=[LR], algorithm="grid", maxTrials=2)
    proc = _sweep([str(path), "--dir", str(tmp_path / "d")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    trials = {t["hparams"]["learning_rate"]: t for t in _facts(tmp_path / "d")["trials"]}
    assert trials[100.0]["state"] == "failed"
    assert "master-0 failed with exit code 1" in trials[100.0]["reason"]
    assert trials[0.05]["state"] == "succeeded"
    assert f"{trials[100.0]['name']}: master-0 failed with exit code 1" in proc.stdout
    _assert_no_processes(tmp_path / "d")


def test_a_trial_far_behind_at_its_first_evaluation_is_pruned(tmp_path: Path) -> None:
    # One at a time: the good trial finishes first, then the slow one is compared with it
    # at step 1 (the first evaluation) and stopped long before its 40000 steps.
    path = _manifest(tmp_path, parameters=[{**LR, "values": [0.05, 0.00001]}],
                     algorithm="grid", maxTrials=2, parallelism=1, earlyStopping={
                         "algorithm": "median", "startupTrials": 1, "warmupSteps": 0})
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["experiment"]["hparams"]["train_steps"] = 40_000
    path.write_text(yaml.safe_dump(manifest))
    proc = _sweep([str(path), "--dir", str(tmp_path / "p")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    trials = {t["hparams"]["learning_rate"]: t for t in _facts(tmp_path / "p")["trials"]}
    assert trials[0.05]["state"] == "succeeded"
    assert trials[0.00001]["state"] == "pruned"
    assert "at step 1 (median pruner)" in trials[0.00001]["reason"]
    assert trials[0.00001]["steps"] < 40_000
    _assert_no_processes(tmp_path / "p")


def test_too_many_failures_end_the_sweep_with_exit_code_1(tmp_path: Path) -> None:
    path = _manifest(tmp_path, parameters=[{**LR, "values": [100.0, 200.0]}],
                     algorithm="grid", maxTrials=2, parallelism=1, maxFailedTrials=0)
    proc = _sweep([str(path), "--dir", str(tmp_path / "f")], cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    facts = _facts(tmp_path / "f")
    assert facts["stop_reason"] == "MaxFailedTrialsExceeded"
    assert [t["state"] for t in facts["trials"]] == ["failed"]
    assert "no trial succeeded" in proc.stdout


def test_a_trial_without_the_objective_metric_counts_as_failed(tmp_path: Path) -> None:
    path = _manifest(tmp_path, objective={"metric": "accuracy", "direction": "maximize"},
                     maxTrials=1, parallelism=1)
    proc = _sweep([str(path), "--dir", str(tmp_path / "m"), "--json"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (trial,) = json.loads(proc.stdout)["trials"]
    assert trial["state"] == "failed"
    assert "no metric 'accuracy'" in trial["reason"]


def test_the_goal_stops_the_trials_still_running(tmp_path: Path) -> None:
    steps = {"name": "train_steps", "type": "discrete", "values": [200, 10_000_000]}
    path = _manifest(tmp_path, parameters=[steps], algorithm="grid", maxTrials=2,
                     objective={"metric": "loss", "direction": "minimize", "goal": 1e9})
    proc = _sweep([str(path), "--dir", str(tmp_path / "g")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    facts = _facts(tmp_path / "g")
    assert facts["stop_reason"] == "GoalReached"
    trials = {t["hparams"]["train_steps"]: t for t in facts["trials"]}
    assert {steps: t["state"] for steps, t in trials.items()} == {
        200: "succeeded", 10_000_000: "stopped"}
    # The long trial is stopped because the short one reached the goal, after it, and in
    # the middle of its training: it never finished its ten million steps.
    short, long = trials[200], trials[10_000_000]
    assert long["reason"] == "the sweep ended: GoalReached"
    assert proc.stdout.index(f"trial {short['name']} succeeded") < \
        proc.stdout.index(f"trial {long['name']} stopped: the sweep ended: GoalReached")
    assert Path(long["model_dir"]).is_dir()
    assert not (Path(long["model_dir"]) / checkpoints.DONE_NAME).exists()
    assert (Path(short["model_dir"]) / checkpoints.DONE_NAME).exists()
    _assert_no_processes(tmp_path / "g")


def test_sigterm_stops_every_trial(tmp_path: Path) -> None:
    path = _manifest(tmp_path, maxTrials=2)
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["experiment"]["hparams"]["train_steps"] = 10_000_000
    manifest["spec"]["experiment"]["replicas"] = {"ps": 1, "worker": 1, "master": 1}
    path.write_text(yaml.safe_dump(manifest))
    directory = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "kubelearn.cli", "sweep", "local", str(path),
                             "--dir", str(directory)], stdout=subprocess.PIPE, text=True,
                            env=runner_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(pids_with_env(f"KUBELEARN_MODEL_DIR={directory}")) < 6:
            assert time.monotonic() < deadline, "the trials' replicas did not all start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "Stopped by signal 15" in out
    assert [t["state"] for t in _facts(directory)["trials"]] == ["stopped", "stopped"]
    _assert_no_processes(directory)


def test_a_bad_manifest_is_one_line_naming_the_field(tmp_path: Path) -> None:
    bad = {"name": "learning_rate", "type": "double", "min": 0, "max": 1,
           "distribution": "logUniform"}
    proc = _sweep([str(_manifest(tmp_path, parameters=[bad]))], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("kubelearn sweep local: error: spec.parameters[0].min")
    assert not (tmp_path / "output").exists()


MOMENTUM = {"name": "momentum", "type": "double", "min": 0, "max": 1}


@pytest.mark.parametrize(("parameter", "algorithm", "field"), [
    ({**MOMENTUM, "min": -1e308}, "random", "spec.parameters[0].min"),
    ({**MOMENTUM, "max": 1e308}, "random", "spec.parameters[0].max"),
    ({**MOMENTUM, "max": float("inf")}, "random", "spec.parameters[0].max"),
    ({**MOMENTUM, "min": float("-inf")}, "random", "spec.parameters[0].min"),
    ({**MOMENTUM, "max": float("nan")}, "random", "spec.parameters[0].max"),
    ({**MOMENTUM, "max": 10**400}, "random", "spec.parameters[0].max"),
    ({**MOMENTUM, "step": 1e-300}, "random", "spec.parameters[0].step"),
    ({"name": "n", "type": "int", "min": 0, "max": 10**12}, "grid", "spec.parameters"),
    ({**MOMENTUM, "name": "values"}, "random", "spec.parameters[0].name"),
])
def test_bounds_the_search_cannot_use_are_one_line_naming_the_field(
        tmp_path: Path, parameter: dict[str, Any], algorithm: str, field: str) -> None:
    path = _manifest(tmp_path, parameters=[parameter], algorithm=algorithm)
    proc = _sweep([str(path)], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"kubelearn sweep local: error: {field}: "), lines[0]
    assert not (tmp_path / "output").exists()


def test_an_earlier_sweeps_directory_needs_fresh(tmp_path: Path) -> None:
    path = _manifest(tmp_path, maxTrials=1, parallelism=1)
    assert _sweep([str(path)], cwd=tmp_path).returncode == 0
    proc = _sweep([str(path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert "pass --fresh" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = _sweep([str(path), "--fresh"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert _facts(tmp_path / "output" / "sw")["trials"][0]["state"] == "succeeded"
