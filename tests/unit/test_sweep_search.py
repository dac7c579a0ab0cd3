"""The Sweep's search on Optuna: a pure function of the spec, the seed and the history."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn_search import (
    GOAL_REACHED,
    GRID_EXHAUSTED,
    MAX_FAILED_TRIALS_EXCEEDED,
    MAX_TRIALS_REACHED,
    Search,
    TrialRecord,
)
from kubelearn_spec.sweep_model import SweepSpec, parse_sweep
from kubelearn_spec.sweep_schema import MAX_GRID_POINTS
from kubelearn_spec.validate import SpecError
from tests.sweep_cases import BATCH, LR, MINIMAL, OPTIMIZER, STEPS, Case


def sweep(**changes: Any) -> SweepSpec:
    spec = {**MINIMAL, **changes}
    return parse_sweep(Case("s", "s", spec).manifest())


def loss(params: dict[str, Any]) -> float:
    """A bowl with its bottom at learning_rate 0.01, train_steps 700."""
    return (math.log10(params["learning_rate"]) + 2) ** 2 + \
        ((params.get("train_steps", 700) - 700) / 900) ** 2


def run(search: Search, trials: int) -> list[TrialRecord]:
    """Trials one after the other, each finished before the next is suggested."""
    history: list[TrialRecord] = []
    for number in range(trials):
        params = search.suggest(number, history)
        history.append(TrialRecord(number, params, "succeeded", loss(params)))
    return history


@pytest.mark.parametrize("algorithm", ["random", "tpe", "cmaes"])
def test_the_same_seed_gives_the_same_sequence(algorithm: str) -> None:
    spec = sweep(parameters=[LR, STEPS], algorithm=algorithm, seed=3, maxTrials=14)
    first, again = run(Search(spec), 14), run(Search(spec), 14)
    assert [r.hparams for r in first] == [r.hparams for r in again]
    other = run(Search(sweep(parameters=[LR, STEPS], algorithm=algorithm, seed=4,
                             maxTrials=14)), 14)
    assert [r.hparams for r in first] != [r.hparams for r in other]


def test_a_rebuilt_search_suggests_what_the_first_one_did() -> None:
    spec = sweep(parameters=[LR, STEPS, OPTIMIZER], algorithm="tpe", seed=1, maxTrials=12)
    history = run(Search(spec), 12)
    # A new Search (an operator restarted) asks with the history rebuilt in another order.
    rebuilt = Search(spec)
    for number in range(12):
        assert rebuilt.suggest(number, list(reversed(history[:number]))) == \
            history[number].hparams


def test_the_seed_comes_from_the_operator_when_the_spec_has_none() -> None:
    spec = sweep()
    assert Search(spec, seed=5).suggest(0, []) == Search(spec, seed=5).suggest(0, [])
    assert Search(spec, seed=5).suggest(0, []) != Search(spec, seed=6).suggest(0, [])
    assert Search(sweep(seed=5), seed=9).seed == 5


def test_tpe_finds_the_bottom_better_than_its_start() -> None:
    spec = sweep(parameters=[LR, STEPS], algorithm="tpe", seed=0, maxTrials=40)
    history = run(Search(spec), 40)
    assert min(r.objective for r in history[20:]) < min(r.objective for r in history[:5])


def test_grid_gives_every_point_once_then_is_exhausted() -> None:
    spec = sweep(parameters=[STEPS, OPTIMIZER, BATCH], algorithm="grid", maxTrials=1000)
    search = Search(spec)
    size = 10 * 2 * 3
    assert spec.grid_size == size
    history = run_grid(search, size)
    points = {tuple(sorted(r.hparams.items())) for r in history}
    every = {tuple(sorted(zip(["train_steps", "optimizer", "batch_size"], combo, strict=True)))
             for combo in itertools.product(range(100, 1001, 100), ["SGD", "Adam"],
                                            [16, 32, 64])}
    assert points == every
    assert search.done(history) == (True, GRID_EXHAUSTED)
    assert search.next_number(history) is None
    with pytest.raises(IndexError):
        search.suggest(size, history)
    # Seeded: another seed, another order of the same points.
    other = Search(sweep(parameters=[STEPS, OPTIMIZER, BATCH], algorithm="grid",
                         maxTrials=1000, seed=1))
    assert [other.suggest(n, []) for n in range(size)] != [r.hparams for r in history]


def run_grid(search: Search, trials: int) -> list[TrialRecord]:
    history: list[TrialRecord] = []
    for number in range(trials):
        history.append(TrialRecord(number, search.suggest(number, history), "succeeded", 1.0))
    return history


ranges = st.tuples(st.floats(-1e3, 1e3), st.floats(0, 1e3))


@given(bounds=ranges, step=st.none() | st.floats(0.01, 100), number=st.integers(0, 50),
       seed=st.integers(0, 2**32 - 1))
def test_double_values_are_in_bounds_and_on_steps(bounds: tuple[float, float],
                                                  step: float | None, number: int,
                                                  seed: int) -> None:
    low, width = bounds
    param = {"name": "x", "type": "double", "min": low, "max": low + width}
    if step is not None:
        param["step"] = step
    value = Search(sweep(parameters=[param], seed=seed)).suggest(number, [])["x"]
    assert isinstance(value, float)
    assert low - 1e-9 <= value <= low + width + 1e-9
    if step is not None:
        k = (value - low) / step
        assert abs(k - round(k)) < 1e-6


@given(low=st.integers(-1000, 1000), width=st.integers(0, 1000), step=st.integers(1, 50),
       number=st.integers(0, 50), algorithm=st.sampled_from(["random", "grid"]))
def test_int_values_are_in_bounds_and_on_steps(low: int, width: int, step: int, number: int,
                                               algorithm: str) -> None:
    param = {"name": "n", "type": "int", "min": low, "max": low + width, "step": step}
    search = Search(sweep(parameters=[param], algorithm=algorithm, seed=number))
    if algorithm == "grid" and number >= width // step + 1:
        return
    value = search.suggest(number, [])["n"]
    assert isinstance(value, int) and low <= value <= low + width
    assert (value - low) % step == 0


@given(values=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True),
       number=st.integers(0, 30))
def test_categorical_values_come_from_the_list(values: list[str], number: int) -> None:
    param = {"name": "c", "type": "categorical", "list": values}
    assert Search(sweep(parameters=[param])).suggest(number, [])["c"] in values


def test_log_uniform_spreads_over_the_decades() -> None:
    search = Search(sweep(parameters=[{"name": "lr", "type": "double", "min": 1e-5,
                                       "max": 1.0, "distribution": "logUniform"}], seed=2))
    decades = [math.floor(math.log10(search.suggest(n, [])["lr"])) for n in range(400)]
    counts = [decades.count(d) for d in range(-5, 0)]
    assert all(50 <= c <= 110 for c in counts), counts  # about 80 in each of 5 decades


def test_uniform_does_not() -> None:
    search = Search(sweep(parameters=[{"name": "lr", "type": "double", "min": 1e-5,
                                       "max": 1.0}], seed=2))
    values = [search.suggest(n, [])["lr"] for n in range(400)]
    assert sum(v < 0.1 for v in values) < 80


def curve(final: float, steps: int = 10) -> dict[int, float]:
    return {s: final + (steps - s) * 0.1 for s in range(1, steps + 1)}


MEDIAN = {"algorithm": "median", "startupTrials": 3, "warmupSteps": 2}


def test_median_prunes_a_clearly_bad_trial() -> None:
    search = Search(sweep(earlyStopping=MEDIAN))
    history = [TrialRecord(n, {"learning_rate": 0.01}, "succeeded", 1.0 + n * 0.01,
                           curve(1.0 + n * 0.01)) for n in range(4)]
    bad = TrialRecord(4, {"learning_rate": 0.09}, intermediate=curve(9.0, 5))
    good = TrialRecord(4, {"learning_rate": 0.02}, intermediate=curve(0.5, 5))
    assert search.should_prune(bad, history)
    assert not search.should_prune(good, history)
    # Not in the warm-up, not before the startup trials, not without early stopping.
    assert not search.should_prune(TrialRecord(4, {}, intermediate={1: 99.0}), history)
    assert not search.should_prune(bad, history[:2])
    assert not Search(sweep()).should_prune(bad, history)
    # Maximizing, the same curve is a good one.
    up = Search(sweep(earlyStopping=MEDIAN,
                      objective={"metric": "accuracy", "direction": "maximize"}))
    assert not up.should_prune(bad, history)


def test_hyperband_prunes_the_worst_at_a_rung_and_is_deterministic() -> None:
    search = Search(sweep(earlyStopping={"algorithm": "hyperband", "minResource": 1,
                                         "maxResource": 27, "reductionFactor": 3}))
    history = [TrialRecord(n, {"learning_rate": 0.01}, "succeeded", 1.0,
                           {s: 1.0 for s in range(1, 28)}) for n in range(12)]
    verdicts = [search.should_prune(TrialRecord(12 + i, {}, intermediate={1: 50.0, 3: 50.0,
                                                                           9: 50.0}),
                                    history) for i in range(6)]
    assert any(verdicts)
    again = [search.should_prune(TrialRecord(12 + i, {}, intermediate={1: 50.0, 3: 50.0,
                                                                        9: 50.0}),
                                 history) for i in range(6)]
    assert verdicts == again
    best = TrialRecord(12, {}, intermediate={1: 0.1, 3: 0.1, 9: 0.1})
    assert not search.should_prune(best, history)


def _records(*objectives: float | None, state: str = "succeeded") -> list[TrialRecord]:
    return [TrialRecord(n, {}, state, o) for n, o in enumerate(objectives)]


def test_best_minimizing_and_maximizing() -> None:
    history = [*_records(0.5, 0.2, 0.2, 0.9), TrialRecord(4, {}, "pruned"),
               TrialRecord(5, {}, "failed"), TrialRecord(6, {}, "running")]
    assert Search(sweep()).best(history).number == 1  # the first of equals
    up = Search(sweep(objective={"metric": "accuracy", "direction": "maximize"}))
    assert up.best(history).number == 3
    assert Search(sweep()).best([TrialRecord(0, {}, "failed")]) is None


def test_done_when_the_budget_is_spent_and_nothing_runs() -> None:
    search = Search(sweep(maxTrials=3, parallelism=2))
    assert search.next_number([]) == 0
    running = [*_records(1.0), TrialRecord(1, {}, "running"), TrialRecord(2, {}, "running")]
    assert search.next_number(running) is None  # parallelism and budget
    assert search.done(running) == (False, "")
    assert search.done(_records(1.0, 2.0, 3.0)) == (True, MAX_TRIALS_REACHED)
    assert search.next_number(_records(1.0)) == 1


def test_goal_minimizing_and_maximizing() -> None:
    down = Search(sweep(objective={"metric": "loss", "direction": "minimize", "goal": 0.1}))
    assert down.done([*_records(0.5, 0.1), TrialRecord(2, {}, "running")]) == \
        (True, GOAL_REACHED)
    assert down.done(_records(0.5, 0.11)) == (False, "")
    up = Search(sweep(objective={"metric": "accuracy", "direction": "maximize",
                                 "goal": 0.9}))
    assert up.done(_records(0.5, 0.95)) == (True, GOAL_REACHED)
    assert up.done(_records(0.5, 0.05)) == (False, "")


def test_too_many_failures() -> None:
    search = Search(sweep(maxFailedTrials=1))
    failed = [TrialRecord(n, {}, "failed") for n in range(2)]
    assert search.done(failed[:1]) == (False, "")
    assert search.done([*failed, TrialRecord(2, {}, "running")]) == \
        (True, MAX_FAILED_TRIALS_EXCEEDED)


EXTREME = (st.integers(-(10**20), 10**20) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, -1, 0.1, 1e-300, 1e308, -1e308, 10**15, 10**400]))


@st.composite
def parameters(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["double", "int", "categorical", "discrete"]))
    parameter: dict[str, Any] = {"name": draw(st.sampled_from(["a", "b_1", "values", "_x"])),
                                 "type": kind}
    if kind in ("double", "int"):
        for key in ("min", "max", "step"):
            if draw(st.booleans()) or key != "step":
                parameter[key] = draw(EXTREME)
        if draw(st.booleans()):
            parameter["distribution"] = "logUniform"
    elif kind == "discrete":
        parameter["values"] = draw(st.lists(EXTREME, min_size=1, max_size=3, unique=True))
    else:
        parameter["list"] = draw(st.lists(st.text(max_size=3), min_size=1, max_size=3,
                                          unique=True))
    return parameter


@given(params=st.lists(parameters(), min_size=1, max_size=3,
                       unique_by=lambda p: p["name"]),
       algorithm=st.sampled_from(["grid", "random", "tpe", "cmaes"]),
       number=st.integers(0, 999))
def test_a_sweep_the_model_takes_is_one_the_search_can_run(
        params: list[dict[str, Any]], algorithm: str, number: int) -> None:
    """Any bounds: refused naming a field, or searched without an error (no overflow, no
    decimal that cannot divide, no grid made whole)."""
    try:
        spec = sweep(parameters=params, algorithm=algorithm, maxTrials=1000)
    except SpecError as exc:
        assert exc.path.startswith("spec.")
        return
    search = Search(spec, seed=1)
    if algorithm == "grid":
        assert spec.grid_size is not None and spec.grid_size <= 2 * MAX_GRID_POINTS
        if number >= spec.grid_size:
            return
    point = search.suggest(number, [])
    for p in spec.parameters:
        if p.type in ("double", "int"):
            assert p.min <= point[p.name] <= p.max
        else:
            assert point[p.name] in p.values
    search.stop_reason([TrialRecord(0, point, "succeeded", 1.0)])
