"""``kubelearn sweep plot``: what the objective and parallel-coordinates PNGs draw, from a
sweep.json, and the refusals of one kubelearn did not write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kubelearn import cli
from kubelearn.sweep.plot import (
    SweepFactsError,
    objective_series,
    parallel_axes,
    parse_facts,
)
from tests.support import plotted_series

pytest.importorskip("matplotlib")


def _facts(direction: str = "minimize") -> dict:
    trials = [
        {"number": 0, "state": "succeeded", "hparams": {"lr": 0.1, "opt": "sgd"},
         "objective": 0.5},
        {"number": 1, "state": "failed", "hparams": {"lr": 10.0, "opt": "adam"},
         "objective": None},
        {"number": 2, "state": "succeeded", "hparams": {"lr": 0.01, "opt": "adam"},
         "objective": 0.2},
        {"number": 3, "state": "pruned", "hparams": {"lr": 0.001, "opt": "sgd"},
         "objective": None},
        {"number": 4, "state": "succeeded", "hparams": {"lr": 0.03, "opt": "sgd"},
         "objective": 0.3},
    ]
    best = 2 if direction == "minimize" else 0
    return {"sweep": "sw", "objective": {"metric": "loss", "direction": direction},
            "parameters": [{"name": "lr", "type": "double", "log": True},
                           {"name": "opt", "type": "categorical", "log": False}],
            "best": best, "trials": trials}


def test_the_objective_by_trial_with_the_best_so_far() -> None:
    series = objective_series(parse_facts(_facts()))
    assert series.numbers == [0, 2, 4] and series.objectives == [0.5, 0.2, 0.3]
    assert series.best_so_far == [0.5, 0.2, 0.2]
    assert series.others == {"failed": [1], "pruned": [3]}
    maximized = objective_series(parse_facts(_facts("maximize")))
    assert maximized.best_so_far == [0.5, 0.5, 0.5]


def test_parallel_axes_log_for_log_uniform_and_categories_for_strings() -> None:
    axes, trials = parallel_axes(parse_facts(_facts()))
    assert [(a.name, a.log, a.categories) for a in axes] == [
        ("lr", True, []), ("opt", False, ["adam", "sgd"]), ("loss", False, [])]
    assert [t.number for t in trials] == [0, 4, 2]  # succeeded only, the best drawn last
    lr, opt, loss = axes
    assert lr.position(0.01) == 0.0 and lr.position(0.1) == 1.0
    assert lr.position(0.03) == pytest.approx(math.log10(3))
    assert (opt.position("adam"), opt.position("sgd")) == (0.0, 1.0)
    assert loss.position(0.2) == 0.0 and loss.position(0.5) == 1.0


def test_the_command_writes_both_pngs_with_what_they_draw(tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps(_facts()))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "plot", str(tmp_path), "-o", "out"]) == 0
    assert capsys.readouterr().out.strip() == (
        "wrote out-objective.png and out-parallel.png (5 trials, axes: lr, opt, loss)")
    objective = plotted_series(tmp_path / "out-objective.png")
    assert objective["numbers"] == [0, 2, 4] and objective["best_so_far"] == [0.5, 0.2, 0.2]
    parallel = plotted_series(tmp_path / "out-parallel.png")
    assert [line["trial"] for line in parallel["lines"]] == [0, 4, 2]
    assert [line["best"] for line in parallel["lines"]] == [False, False, True]


@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f.pop("sweep"), "sweep"),
    (lambda f: f["objective"].update(direction="up"), "objective.direction"),
    (lambda f: f["trials"][1].update(number="1"), "trials[1].number"),
    (lambda f: f.update(trials={}), "trials"),
    (lambda f: f.update(best=True), "best"),
])
def test_a_sweep_json_kubelearn_did_not_write_is_refused_naming_the_field(
        tmp_path: Path, capsys, change, field) -> None:
    facts = _facts()
    change(facts)
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    assert cli.main(["sweep", "plot", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"kubelearn sweep plot: {field}"), line
    with pytest.raises(SweepFactsError):
        parse_facts(facts)


def test_nothing_to_plot_and_no_sweep_json(tmp_path: Path, capsys) -> None:
    facts = _facts()
    for trial in facts["trials"]:
        trial["state"] = "failed"
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    assert cli.main(["sweep", "plot", str(tmp_path)]) == 1
    assert "no trial of sw succeeded" in capsys.readouterr().err
    assert cli.main(["sweep", "plot", str(tmp_path / "none")]) == 1
    assert "sweep.json" in capsys.readouterr().err
