"""PNG plots of a finished sweep (``kubelearn sweep plot DIR``), from its ``sweep.json``.

* ``<prefix>-objective.png``: each trial's objective against its number, the best so far as
  a step line, trials that failed or were pruned marked on the axis.
* ``<prefix>-parallel.png``: parallel coordinates, one axis per hyper-parameter and one for
  the objective, one line per succeeded trial coloured by its objective (the best drawn
  last, thick). A log-uniform parameter's axis is logarithmic, and so is the objective's
  when it spans more than two decades; a categorical one lists its values.

Each PNG carries what it draws as JSON in its ``kubelearn:series`` text chunk, as
``kubelearn runs plot`` does. ``sweep.json`` is read as outside input, never with a traceback:

* a field of the wrong type, or a value kubelearn sweep local never writes (a name with a
  control character such as NUL, a trial number outside 0..2^31, a state that is not a
  trial's, more than :data:`MAX_TRIALS` trials or :data:`MAX_PARAMETERS` hyper-parameters)
  is an error naming the field (exit code 2);
* a trial whose values a plot cannot show (a hyper-parameter or objective beyond
  :data:`MAX_DRAWN` in magnitude, or not finite; a control character in a hyper-parameter's
  name or value) is left out, with one warning line naming the trials left out and why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from kubelearn import paths
from kubelearn.bounded_input import InputError
from kubelearn.em.plot import SERIES_KEY, _matplotlib
from kubelearn_spec.names import DNS_1035, MAX_DNS_LABEL
from kubelearn_spec.sweep_model import SUCCEEDED, better, finite
from kubelearn_spec.sweep_schema import (
    DIRECTIONS,
    MAX_PARAMETERS,
    MAX_TRIALS,
    MAXIMIZE,
    TRIAL_STATES,
)

FACTS_FILE = "sweep.json"
MAX_FACTS_BYTES = 16 << 20
#: The largest magnitude a plot shows: matplotlib computes its axes' margins and ticks in
#: doubles, which overflow for values near 1e308 (and their spans, from -1e308 to 1e308).
MAX_DRAWN = 1e150
MAX_NUMBER = 2**31


class SweepFactsError(ValueError):
    """A ``sweep.json`` that kubelearn sweep local did not write; names the field."""


@dataclass(frozen=True)
class TrialPoint:
    number: int
    state: str
    hparams: dict[str, Any]
    objective: float | None

    @property
    def scored(self) -> bool:
        """Whether it succeeded with an objective value: only those are drawn."""
        return self.state == SUCCEEDED and self.objective is not None


@dataclass(frozen=True)
class SweepFacts:
    name: str
    metric: str
    maximize: bool
    best: int | None
    trials: tuple[TrialPoint, ...]
    log_parameters: tuple[str, ...] = ()  # sampled log-uniformly: a logarithmic axis
    #: Trials left out, with why: their values cannot be drawn.
    left_out: tuple[tuple[int, str], ...] = ()

    def warning(self) -> str | None:
        """One line on the trials left out (None: none was)."""
        if not self.left_out:
            return None
        numbers = ", ".join(str(n) for n, _ in self.left_out[:10])
        more = f" and {len(self.left_out) - 10} more" if len(self.left_out) > 10 else ""
        return (f"left out trial{'s' if len(self.left_out) > 1 else ''} {numbers}{more}: "
                f"{self.left_out[0][1]}" + (" (and others)" if len(self.left_out) > 1 else ""))

    @property
    def parameters(self) -> list[str]:
        """The hyper-parameters, in the order the trials first name them."""
        return list(dict.fromkeys(k for t in self.trials for k in t.hparams))


def _text(value: str) -> bool:
    """Text a plot can show and a file name can hold: no control character (NUL, newline,
    escape...), as no name kubelearn writes has one."""
    return value.isprintable()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."


def _undrawable(value: Any, where: str) -> str | None:
    """Why a hyper-parameter's or an objective's value cannot be drawn (None: it can)."""
    if isinstance(value, str):
        return None if _text(value) else f"{where} holds a control character"
    try:
        if not math.isfinite(value) or abs(value) > MAX_DRAWN:
            raise OverflowError
    except OverflowError:
        return f"{where} is {_short(value)}, beyond what a plot shows (|x| <= {MAX_DRAWN:g})"
    return None


def _trial_number(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)
            and 0 <= value < MAX_NUMBER)


def parse_facts(data: Any) -> SweepFacts:
    """The facts of ``sweep.json``, checked; trials whose values cannot be drawn are left
    out (:attr:`SweepFacts.left_out`).

    Raises:
      SweepFactsError: naming the field that is missing, of the wrong type, or holds a
        value kubelearn sweep local never writes.
    """
    def need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, Mapping) or not isinstance(obj.get(key), kind):
            raise SweepFactsError(f"{where}{key}: missing or of the wrong type")
        return obj[key]

    def name(obj: Any, key: str, where: str) -> str:
        value = need(obj, key, str, where)
        if not value or not _text(value):
            raise SweepFactsError(f"{where}{key}: {_short(value)} is not a name (empty, or "
                                  "a control character in it)")
        return value

    sweep = name(data, "sweep", "")
    objective = need(data, "objective", Mapping, "")
    metric = name(objective, "metric", "objective.")
    direction = need(objective, "direction", str, "objective.")
    if direction not in DIRECTIONS:
        raise SweepFactsError(f"objective.direction: {_short(direction[:40])} is not minimize "
                              "or maximize")
    best = data.get("best")
    if best is not None and not _trial_number(best):
        raise SweepFactsError("best: not a trial number")
    raw_trials = need(data, "trials", list, "")
    if len(raw_trials) > MAX_TRIALS:
        raise SweepFactsError(f"trials: {len(raw_trials)} trials, more than a sweep runs "
                              f"({MAX_TRIALS})")
    trials, left_out, names = [], [], set()
    for i, raw in enumerate(raw_trials):
        where = f"trials[{i}]."
        number = need(raw, "number", int, where)
        if not _trial_number(number):
            raise SweepFactsError(f"{where}number: {_short(number)} is not a trial number "
                                  f"(0 to {MAX_NUMBER - 1})")
        state = need(raw, "state", str, where)
        if state not in TRIAL_STATES:
            raise SweepFactsError(f"{where}state: {_short(state[:40])} is not a trial state "
                                  f"({', '.join(TRIAL_STATES)})")
        hparams = need(raw, "hparams", Mapping, where)
        values = {str(k): v for k, v in hparams.items()
                  if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
        names.update(values)
        if len(names) > MAX_PARAMETERS:
            raise SweepFactsError(f"{where}hparams: more hyper-parameters in all than a "
                                  f"sweep searches ({MAX_PARAMETERS})")
        objective_value = raw.get("objective")
        why = next((w for w in (
            *(None if _text(k) else f"{where}hparams has a name with a control character"
              for k in values),
            *(_undrawable(v, f"{where}hparams.{k}") for k, v in values.items()),
            None if finite(objective_value) is None
            else _undrawable(objective_value, f"{where}objective")) if w), None)
        if why is not None:
            left_out.append((number, why))
            continue
        trials.append(TrialPoint(number, state, values, finite(objective_value)))
    trials.sort(key=lambda t: t.number)
    parameters = data.get("parameters")
    logs = tuple(str(p["name"]) for p in (parameters if isinstance(parameters, list) else [])
                 if isinstance(p, Mapping) and isinstance(p.get("name"), str) and p.get("log")
                 is True)
    return SweepFacts(sweep, metric, direction == MAXIMIZE, best, tuple(trials), logs,
                      tuple(left_out))


def load_facts(directory: str) -> SweepFacts:
    """``DIR/sweep.json``, checked.

    Raises:
      OSError: when it cannot be read.
      SweepFactsError: when it is not what kubelearn sweep local writes.
    """
    path = os.path.join(directory, FACTS_FILE)
    try:  # not through a link out of the directory, nor from a FIFO
        raw = paths.read_bytes(directory, path, MAX_FACTS_BYTES)
    except InputError as exc:
        raise SweepFactsError(str(exc)) from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise SweepFactsError(f"{path}: not JSON ({exc})") from None
    return parse_facts(data)


# -- what is drawn (pure) --------------------------------------------------------------------
def _wide(values: list[float]) -> bool:
    """Positive values spanning more than two decades: a logarithmic axis shows them."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 100


@dataclass
class ObjectiveSeries:
    numbers: list[int]  # succeeded trials
    objectives: list[float]
    best_so_far: list[float]  # at each of ``numbers``
    others: dict[str, list[int]]  # state -> trial numbers without an objective


def objective_series(facts: SweepFacts) -> ObjectiveSeries:
    """The objective by trial number, and the best so far at each succeeded trial."""
    numbers, objectives, best_so_far = [], [], []
    others: dict[str, list[int]] = {}
    best: float | None = None
    for trial in facts.trials:
        if not trial.scored:
            others.setdefault(trial.state, []).append(trial.number)
            continue
        value = trial.objective
        if best is None or better(value, best, facts.maximize):
            best = value
        numbers.append(trial.number)
        objectives.append(value)
        best_so_far.append(best)
    return ObjectiveSeries(numbers, objectives, best_so_far, others)


@dataclass
class Axis:
    name: str
    log: bool
    categories: list[str]  # for an axis of strings: its values, in order; else empty
    low: float
    high: float

    def position(self, value: Any) -> float:
        """Where ``value`` sits on the axis, from 0 (bottom) to 1 (top)."""
        if self.categories:
            index = self.categories.index(str(value))
            return 0.5 if len(self.categories) == 1 else index / (len(self.categories) - 1)
        number = math.log10(value) if self.log else float(value)
        low, high = (math.log10(self.low), math.log10(self.high)) if self.log else \
            (self.low, self.high)
        return 0.5 if high == low else (number - low) / (high - low)


def parallel_axes(facts: SweepFacts) -> tuple[list[Axis], list[TrialPoint]]:
    """One axis per hyper-parameter and one for the objective, over the succeeded trials
    (which are returned, the best last)."""
    trials = [t for t in facts.trials
              if t.scored and all(p in t.hparams for p in facts.parameters)]
    axes = []
    for name in [*facts.parameters, facts.metric]:
        values = [t.objective if name == facts.metric and name not in t.hparams
                  else t.hparams[name] for t in trials]
        if any(isinstance(v, str) for v in values):
            axes.append(Axis(name, False, sorted({str(v) for v in values}), 0.0, 1.0))
            continue
        numbers = [float(v) for v in values] or [0.0]
        log = ((name in facts.log_parameters or (name == facts.metric and _wide(numbers)))
               and min(numbers) > 0)
        axes.append(Axis(name, log, [], min(numbers), max(numbers)))
    trials.sort(key=lambda t: t.number == facts.best)
    return axes, trials


# -- drawing ---------------------------------------------------------------------------------
def _save(fig: Any, output: str, title: str, drawn: Any) -> None:
    fig.suptitle(title)
    fig.savefig(output, format="png",
                metadata={"Title": title, SERIES_KEY: json.dumps(drawn)})


def plot_objective(facts: SweepFacts, output: str) -> ObjectiveSeries:
    Figure, FigureCanvasAgg = _matplotlib()
    series = objective_series(facts)
    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(series.numbers, series.objectives, "o", color="C0", label=facts.metric)
    ax.step(series.numbers, series.best_so_far, "-", where="post", color="C1",
            label="best so far")
    for i, (state, numbers) in enumerate(sorted(series.others.items())):
        ax.plot(numbers, [0] * len(numbers), "x", color=f"C{i + 2}", label=state,
                transform=ax.get_xaxis_transform(), clip_on=False)
    ax.xaxis.get_major_locator().set_params(integer=True)
    if _wide(series.objectives):
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel(facts.metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, output, f"{facts.name}: {facts.metric} by trial", asdict(series))
    return series


def plot_parallel(facts: SweepFacts, output: str) -> list[Axis]:
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    axes, trials = parallel_axes(facts)
    fig = Figure(figsize=(max(6, 2 * len(axes)), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    objectives = [t.objective for t in trials if t.objective is not None]
    norm = Normalize(min(objectives, default=0.0), max(objectives, default=1.0))
    cmap = colormaps["viridis" if facts.maximize else "viridis_r"]
    lines = []
    for trial in trials:
        best = trial.number == facts.best
        ys = [a.position(trial.objective if a.name == facts.metric
                         and a.name not in trial.hparams else trial.hparams[a.name])
              for a in axes]
        ax.plot(range(len(axes)), ys, "-", color=cmap(norm(trial.objective)),
                linewidth=3 if best else 1.2, alpha=1 if best else 0.8)
        lines.append({"trial": trial.number, "positions": ys, "best": best})
    for x, a in enumerate(axes):
        ax.axvline(x, color="0.3", linewidth=0.8)
        if a.categories:
            labels = [(a.position(c), c) for c in a.categories]
        else:
            labels = [(0.0, f"{a.low:.3g}"), (1.0, f"{a.high:.3g}")]
        for y, text in labels:
            ax.annotate(text, (x, y), xytext=(3, 0), textcoords="offset points",
                        fontsize="x-small", va="center")
    ax.set_xticks(range(len(axes)), [a.name + (" (log)" if a.log else "") for a in axes])
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    _save(fig, output, f"{facts.name}: {len(trials)} succeeded trials",
          {"axes": [asdict(a) for a in axes], "lines": lines})
    return axes


# -- the command -----------------------------------------------------------------------------
def sweep_plot_command(args: argparse.Namespace) -> int:
    """The ``kubelearn sweep plot`` command: exit 0 done, 1 nothing to plot or an I/O
    error, 2 a sweep.json kubelearn did not write."""
    try:
        facts = load_facts(args.dir)
    except SweepFactsError as exc:
        print(f"kubelearn sweep plot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"kubelearn sweep plot: {exc.strerror or exc}: "
              f"{os.path.join(args.dir, FACTS_FILE)}", file=sys.stderr)
        return 1
    warning = facts.warning()
    if not any(t.scored for t in facts.trials):
        why = "" if warning is None else f" ({warning})"
        print(f"kubelearn sweep plot: no trial of {facts.name} succeeded: nothing to plot"
              f"{why}", file=sys.stderr)
        return 1
    if warning is not None:
        print(f"kubelearn sweep plot: warning: {warning}", file=sys.stderr)
    try:  # the name comes from sweep.json: one component, never a path
        prefix = args.output or paths.component(facts.name, DNS_1035, "sweep", MAX_DNS_LABEL)
    except InputError as exc:
        print(f"kubelearn sweep plot: {FACTS_FILE}: {exc}; give -o PREFIX", file=sys.stderr)
        return 2
    try:  # written under a temporary name and renamed: a symlink there is not followed
        with paths.replacing(f"{prefix}-objective.png") as output:
            plot_objective(facts, output)
        with paths.replacing(f"{prefix}-parallel.png") as output:
            axes = plot_parallel(facts, output)
    except (OSError, RuntimeError) as exc:
        print(f"kubelearn sweep plot: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {prefix}-objective.png and {prefix}-parallel.png "
          f"({len(facts.trials)} trials, axes: {', '.join(a.name for a in axes)})")
    return 0


def add_action(actions: Any) -> None:
    """Registers ``kubelearn sweep plot``."""
    parser = actions.add_parser(
        "plot", help="PNGs of a finished sweep: objective by trial, parallel coordinates",
        description="Draws <prefix>-objective.png (each trial's objective and the best so "
                    "far) and <prefix>-parallel.png (parallel coordinates of the "
                    "hyper-parameters and the objective) from DIR/sweep.json, which "
                    "kubelearn sweep local writes. Needs matplotlib (kubelearn[plot]).")
    parser.add_argument("dir", help="the sweep directory (kubelearn sweep local --dir)")
    parser.add_argument("-o", "--output", help="file name prefix (default: the sweep's name)")
    parser.set_defaults(func=sweep_plot_command)
