"""The parts of ``kubelearn sweep local`` that start no process: reading a trial's
evaluations, its objective and failure reason, the table, early stopping, and the command's
refusals."""

from __future__ import annotations

import io
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelearn import cli
from kubelearn.sweep import local
from kubelearn.sweep.local import (
    SweepRunner,
    Trial,
    failure_reason,
    format_table,
    intermediate_of,
    objective_of,
    read_evaluations,
)
from kubelearn_search import Search
from kubelearn_spec.sweep_model import parse_sweep
from tests.sweep_cases import LR, MINIMAL, OPTIMIZER, Case


def test_read_evaluations_skips_a_line_being_written() -> None:
    text = '{"global_step": 1, "loss": 2.0}\n{"global_step": 5, "loss": 1.0}\n{"global_st'
    assert read_evaluations(text) == [{"global_step": 1, "loss": 2.0},
                                      {"global_step": 5, "loss": 1.0}]
    assert read_evaluations("[1]\nnot json\n") == []


@pytest.mark.parametrize(("evaluations", "value", "why"), [
    ([{"global_step": 1, "loss": 9.0}, {"global_step": 9, "loss": 0.5}], 0.5, ""),
    ([{"global_step": 9, "loss": 3}], 3.0, ""),
    ([], None, "no final evaluation"),
    ([{"loss": 0.5}, {"global_step": 9, "mae": 0.1}], None, "no metric 'loss' (it has: "
                                                             "global_step, mae)"),
    ([{"loss": float("nan")}], None, "is nan, not a finite number"),
    ([{"loss": float("inf")}], None, "not a finite number"),
    ([{"loss": "0.5"}], None, "not a finite number"),
    ([{"loss": True}], None, "not a finite number"),
    ([{"loss": 10**400}], None, "is 1000000000000000000000000000000000000000000000000000000000"
                                "00..., not a finite number"),
])
def test_the_objective_is_the_final_evaluations_metric(evaluations: list[dict[str, Any]],
                                                       value: float | None, why: str) -> None:
    got, reason = objective_of(evaluations, "loss")
    assert got == value
    assert why in reason and bool(reason) == bool(why)


def test_intermediate_values_by_step() -> None:
    evaluations = [{"global_step": 1, "loss": 9.0}, {"loss": 1.0},
                   {"global_step": 50, "loss": "x"}, {"global_step": 100.0, "loss": 0.5},
                   # Numbers of JSON that are no step, or no double:
                   {"global_step": float("inf"), "loss": 1.0},
                   {"global_step": float("nan"), "loss": 1.0},
                   {"global_step": 10**400, "loss": 1.0}, {"global_step": 7, "loss": 10**400}]
    assert intermediate_of(evaluations, "loss") == {1: 9.0, 100: 0.5}


def test_failure_reason_is_the_launchers_last_verdict() -> None:
    log = ("[master-0] Traceback ...\nExperiment lr-3 failed: master-0 failed with exit "
           "code 1\nExperiment lr-3 Failed\n  replica exit codes: master-0=1\n")
    assert failure_reason(log, "lr-3", 1) == "master-0 failed with exit code 1"
    assert failure_reason("kubelearn local: error: parameter servers need pyzmq\n", "lr-3",
                          2) == "parameter servers need pyzmq"
    assert failure_reason("", "lr-3", 137) == "kubelearn local exited with code 137"


def test_the_table_aligns_columns_and_marks_the_best() -> None:
    trials = [
        {"number": 1, "name": "lr-1", "state": "failed", "objective": None, "steps": 8,
         "hparams": {"learning_rate": 100.0, "optimizer": "SGD"}},
        {"number": 0, "name": "lr-0", "state": "succeeded", "objective": 0.000123456789,
         "steps": 300, "hparams": {"learning_rate": 0.05, "optimizer": "Adam"}},
    ]
    assert format_table(trials, ["learning_rate", "optimizer"], "loss", best=0) == [
        "   #  name  state      learning_rate  optimizer         loss  steps",
        "*  0  lr-0  succeeded  0.05           Adam       0.000123457    300",
        "   1  lr-1  failed     100            SGD                  -      8",
    ]


def test_the_summary_names_the_stop_reason_the_best_and_why_others_failed() -> None:
    facts = {"sweep": "lr", "stop_reason": "MaxTrialsReached", "best": None,
             "objective": {"metric": "loss", "direction": "minimize"},
             "trials": [{"number": 0, "name": "lr-0", "state": "failed", "objective": None,
                         "steps": None, "hparams": {"learning_rate": 1.0},
                         "reason": "master-0 failed with exit code 1"}]}
    lines = local.summary(facts, ["learning_rate"])
    assert lines[-3:] == ["  lr-0: master-0 failed with exit code 1",
                          "Sweep lr finished: MaxTrialsReached (1 failed)",
                          "no trial succeeded"]


class FakeProcess:
    """A trial process that runs until signalled."""

    def __init__(self) -> None:
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return -self.signals[0] if self.signals else None

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)


def _trial(tmp_path: Path, number: int, state: str, losses: dict[int, float],
           objective: float | None = None) -> Trial:
    model_dir = tmp_path / f"lr-{number}"
    (model_dir / "eval").mkdir(parents=True)
    (model_dir / "eval" / "results.jsonl").write_text("".join(
        json.dumps({"global_step": s, "loss": v}) + "\n" for s, v in losses.items()))
    trial = Trial(number, f"lr-{number}", {"learning_rate": 0.01}, str(model_dir), "", "",
                  state=state, objective=objective)
    if state == "running":
        trial.process = FakeProcess()  # type: ignore[assignment]
    else:
        trial.intermediate = dict(losses)
    return trial


def test_early_stopping_stops_the_trials_the_pruner_gives_up_on(tmp_path: Path) -> None:
    spec = parse_sweep(Case("lr", "lr", {**MINIMAL, "earlyStopping": {
        "algorithm": "median", "startupTrials": 2, "warmupSteps": 0}}).manifest())
    runner = SweepRunner(spec, Search(spec, seed=1), str(tmp_path), io.StringIO())
    runner.trials = {
        0: _trial(tmp_path, 0, "succeeded", {1: 10.0, 100: 0.1}, objective=0.1),
        1: _trial(tmp_path, 1, "succeeded", {1: 12.0, 100: 0.2}, objective=0.2),
        2: _trial(tmp_path, 2, "running", {1: 500.0}),
        3: _trial(tmp_path, 3, "running", {1: 5.0}),
    }
    runner._prune()
    pruned, kept = runner.trials[2], runner.trials[3]
    assert pruned.process.signals == [signal.SIGTERM]  # type: ignore[union-attr]
    assert pruned.stop_as == "pruned" and "loss = 500 at step 1" in pruned.reason
    assert kept.process.signals == [] and kept.intermediate == {1: 5.0}  # type: ignore[union-attr]
    runner._reap()
    assert (pruned.state, kept.state) == ("pruned", "running")
    assert "trial lr-2 pruned: loss = 500 at step 1 (median pruner)" in runner.out.getvalue()


def test_without_optuna_the_command_says_which_extra(tmp_path: Path, monkeypatch, capsys
                                                     ) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(Case("lr", "lr", {**MINIMAL, "parameters": [LR, OPTIMIZER]}
                                        ).manifest()))
    monkeypatch.setitem(sys.modules, "optuna", None)
    monkeypatch.delitem(sys.modules, "kubelearn_search")
    assert cli.main(["sweep", "local", str(path), "--dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kubelearn sweep local: error: the hyper-parameter search needs optuna: "
                   "pip install 'kubelearn[sweep]'"]
    assert not (tmp_path / "out").exists()


def test_the_sweep_directory_must_be_a_local_path(tmp_path: Path, capsys) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(Case("lr", "lr", MINIMAL).manifest()))
    assert cli.main(["sweep", "local", str(path), "--dir", "s3://bucket/x"]) == 2
    assert "must be a local path" in capsys.readouterr().err


def test_sweep_needs_an_action(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep"])
    assert exit_info.value.code == 2
    assert "ACTION" in capsys.readouterr().err


def test_the_example_is_a_valid_sweep_shipped_in_the_package() -> None:
    from importlib import resources

    spec = local.load_sweep(str(resources.files("kubelearn.examples") / "sweep-linear.yaml"))
    assert (spec.parallelism, spec.max_trials) == (2, 4)
    assert [p.name for p in spec.parameters] == ["learning_rate", "optimizer"]
    assert spec.parameter("learning_rate").log


def test_the_digits_sweep_example_is_valid_and_its_layer_shapes_parse() -> None:
    from kubelearn.examples.digits import hidden_units

    spec = local.load_sweep(str(Path(__file__).resolve().parents[2] / "examples"
                                / "sweep-digits.yaml"))
    shapes = spec.parameter("hidden_units").values
    assert [hidden_units(s) for s in shapes] == [[32], [64, 32], [128, 64]]
    assert spec.parameter("learning_rate").log and spec.algorithm == "tpe"
    assert (spec.max_trials, spec.parallelism) == (8, 2)
    assert hidden_units([64, 32]) == [64, 32]
    for bad in ("", "64,x", "0", [], [-1]):
        with pytest.raises(ValueError, match="hidden_units"):
            hidden_units(bad)
