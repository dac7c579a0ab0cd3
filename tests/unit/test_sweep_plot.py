"""``kubelearn sweep plot``: what the objective and parallel-coordinates PNGs draw, from a
sweep.json, and the refusals of one kubelearn did not write."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn import cli
from kubelearn.sweep.plot import (
    MAX_DRAWN,
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


# -- values kubelearn never writes, and values no plot can show -------------------------------
@pytest.mark.parametrize(("change", "field"), [
    (lambda f: f.update(sweep="s\0w"), "sweep"),  # the PNGs' default name
    (lambda f: f.update(sweep=""), "sweep"),
    (lambda f: f["objective"].update(metric="lo\0ss"), "objective.metric"),
    (lambda f: f["trials"][0].update(number=10**400), "trials[0].number"),
    (lambda f: f["trials"][0].update(number=-1), "trials[0].number"),
    (lambda f: f["trials"][2].update(state="succeeded\0"), "trials[2].state"),
    (lambda f: f.update(best=10**400), "best"),
    (lambda f: f["trials"][0]["hparams"].update({f"p{i}": i for i in range(40)}),
     "trials[0].hparams"),
    (lambda f: f.update(trials=f["trials"] * 201), "trials"),
])
def test_a_value_kubelearn_never_writes_is_one_line_naming_the_field(
        tmp_path: Path, capsys, monkeypatch, change, field) -> None:
    facts = _facts()
    change(facts)
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "plot", str(tmp_path)]) == 2  # no -o: the name makes the file's
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"kubelearn sweep plot: {field}: "), line
    assert "\0" not in line and not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(("change", "left_out", "why"), [
    (lambda f: f["trials"][0].update(objective=1e308), [0], "trials[0].objective is 1e+308"),
    (lambda f: (f["trials"][0].update(objective=-1e308), f["trials"][4].update(
        objective=1e308)), [0, 4], "trials[0].objective is -1e+308"),
    (lambda f: f["trials"][4]["hparams"].update(lr=10**400), [4], "trials[4].hparams.lr is 1000"),
    (lambda f: f["trials"][4]["hparams"].update(lr=float("inf")), [4], "hparams.lr is inf"),
    (lambda f: f["trials"][0]["hparams"].update(opt="a\0b"), [0], "control character"),
    (lambda f: f["trials"][0]["hparams"].update({"o\x1bpt": "sgd"}), [0], "control character"),
])
def test_a_trial_no_plot_can_show_is_left_out_with_one_warning(
        tmp_path: Path, capsys, change, left_out: list[int], why: str) -> None:
    facts = _facts()
    change(facts)
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor any of matplotlib's overflows
        assert cli.main(["sweep", "plot", str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    numbers = ", ".join(str(n) for n in left_out)
    assert line.startswith("kubelearn sweep plot: warning: left out trial"), line
    assert f" {numbers}: " in line and why in line, line
    drawn = plotted_series(tmp_path / "out-objective.png")
    assert not set(drawn["numbers"]) & set(left_out)


def test_nothing_left_to_plot_says_why_in_one_line(tmp_path: Path, capsys) -> None:
    facts = _facts()
    for trial in facts["trials"]:
        trial["objective"] = 1e308
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    assert cli.main(["sweep", "plot", str(tmp_path), "-o", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert "no trial of sw succeeded" in line and "left out trials 0, 1, 2, 3, 4" in line


@pytest.mark.parametrize("values", [(1e150, -1e150), (5e-324, 1e150), (0.0, -5e-324),
                                    (1e-150, 1e150), (2.5, 2.5)])
def test_the_largest_and_smallest_values_shown_are_drawn(tmp_path: Path, capsys,
                                                         values: tuple[float, float]) -> None:
    facts = _facts()
    for trial, value in zip([facts["trials"][0], facts["trials"][4]], values, strict=True):
        trial["objective"] = value
        trial["hparams"]["lr"] = -value
    (tmp_path / "sweep.json").write_text(json.dumps(facts))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli.main(["sweep", "plot", str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""


TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
NUMBERS = (st.integers() | st.integers(-(10**400), 10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
               [1e308, -1e308, 5e-324, 10**400, 2**31, -1]))
VALUES = st.none() | st.booleans() | NUMBERS | TEXT | st.lists(NUMBERS, max_size=2)


@st.composite
def facts_files(draw: st.DrawFn) -> object:
    """sweep.json files near what kubelearn writes: any field may hold another value."""
    def maybe(value: object) -> object:
        return draw(VALUES) if draw(st.integers(0, 3)) == 0 else value

    trials = [{"number": maybe(n), "state": maybe(draw(st.sampled_from(
        ["succeeded", "failed", "pruned", "running", "stopped"]))),
        "hparams": maybe(draw(st.dictionaries(TEXT, VALUES, max_size=3))),
        "objective": maybe(draw(NUMBERS | st.none()))}
        for n in range(draw(st.integers(0, 4)))]
    return {"sweep": maybe("sw"), "objective": maybe({"metric": maybe("loss"),
                                                      "direction": maybe("minimize")}),
            "parameters": maybe([{"name": "lr", "log": maybe(True)}]),
            "best": maybe(draw(st.none() | NUMBERS)), "trials": maybe(trials)}


@given(data=facts_files() | VALUES)
def test_any_sweep_json_parses_to_drawable_facts_or_an_error_naming_a_field(
        data: object) -> None:
    try:
        text = json.dumps(data)
    except ValueError:  # integers of more digits than Python prints
        return
    try:
        facts = parse_facts(json.loads(text))
    except SweepFactsError as exc:
        assert str(exc).isprintable()
        return
    assert facts.name.isprintable() and facts.metric.isprintable()
    for trial in facts.trials:
        assert 0 <= trial.number < 2**31
        for name, value in trial.hparams.items():
            assert name.isprintable()
            assert value.isprintable() if isinstance(value, str) else (
                math.isfinite(value) and abs(value) <= MAX_DRAWN)
        assert trial.objective is None or abs(trial.objective) <= MAX_DRAWN
    assert facts.warning() is None or facts.warning().isprintable()
    objective_series(facts)
    parallel_axes(facts)
