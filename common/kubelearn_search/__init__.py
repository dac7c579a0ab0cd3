"""The search of a Sweep, on Optuna, as a pure function of the spec, the seed and the trials.

An operator that restarts keeps no search state: it rebuilds the trial records from the
child Experiments and asks again. So every answer here is computed from a fresh in-memory
Optuna study holding exactly those records, with samplers and pruners seeded from
``(seed, number)``: the same seed and the same history give the same suggestion.

- ``random`` needs no history. ``grid`` enumerates the grid in a seeded order without
  repeats, trial ``number`` taking point ``number`` of that order.
- ``tpe`` learns from the finished trials (running ones count as "constant liars", so
  parallel trials spread out). ``cmaes`` replays the finished trials through its optimizer
  in trial-number order. For both, a suggestion therefore also depends on which trials had
  finished when it was made, that is on the order in which trials finish: rebuilding from
  the same history gives the same answer, but a different finishing order gives another
  sequence.
- Early stopping replays every trial's intermediate values in trial-number order through
  Optuna's MedianPruner or HyperbandPruner (whose rungs Optuna keeps in trial attributes
  that a fresh study would not have otherwise).

Importable without kopf or kubernetes: it needs Optuna (the ``sweep`` extra) and the model.
"""

from __future__ import annotations

import hashlib
import math
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from kubelearn_spec.sweep_model import (
    FAILED,
    FINISHED,
    GOAL_REACHED,
    GRID_EXHAUSTED,
    MAX_FAILED_TRIALS_EXCEEDED,
    MAX_TRIALS_REACHED,
    PRUNED,
    RUNNING,
    SUCCEEDED,
    Parameter,
    SweepSpec,
    finite,
)

# Optuna logs every trial and warns about experimental features; a controller asks it for
# every suggestion, so only its errors are worth a line.
optuna.logging.set_verbosity(optuna.logging.ERROR)
optuna.logging.disable_default_handler()

#: Hyperband assigns trials to brackets by hashing the study's name and the trial's
#: number: a fixed name keeps that assignment the same in every rebuilt study.
STUDY_NAME = "kubelearn-sweep"


@dataclass(frozen=True)
class TrialRecord:
    """What is known of one trial: its hparams (the searched ones), its state, its final
    objective value (succeeded trials) and its intermediate values by step."""

    number: int
    hparams: Mapping[str, Any]
    state: str = RUNNING  # running, or one of FINISHED
    objective: float | None = None
    intermediate: Mapping[int, float] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def value(self) -> float | None:
        """The objective value the search goes by: a succeeded trial's, if finite."""
        return finite(self.objective) if self.state == SUCCEEDED else None

    def steps(self) -> list[tuple[int, float]]:
        """The intermediate values by increasing step (steps read from JSON are strings)."""
        values = ((int(step), float(value)) for step, value in self.intermediate.items())
        return sorted((s, v) for s, v in values if not math.isnan(v))


def count(history: Sequence[TrialRecord], state: str) -> int:
    """How many of the trials recorded are in ``state``."""
    return sum(r.state == state for r in history)


def distribution(parameter: Parameter) -> BaseDistribution:
    """The Optuna distribution of a parameter."""
    if parameter.type == "double":
        return FloatDistribution(float(parameter.min), float(parameter.max),  # type: ignore[arg-type]
                                 log=parameter.log,
                                 step=None if parameter.step is None else float(parameter.step))
    if parameter.type == "int":
        return IntDistribution(int(parameter.min), int(parameter.max),  # type: ignore[arg-type]
                               log=parameter.log, step=int(parameter.step or 1))
    return CategoricalDistribution(parameter.values)


def derive_seed(seed: int, number: int, purpose: str) -> int:
    """A seed for one use (``purpose``) at trial ``number``, spread over numpy's range."""
    digest = hashlib.sha256(f"{purpose}:{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


class Search:
    """The search of one Sweep. ``seed`` is used when the spec gives none (the operator
    draws it once and keeps it in ``status.seed``)."""

    def __init__(self, spec: SweepSpec, seed: int | None = None) -> None:
        self.spec = spec
        self.seed = spec.seed if spec.seed is not None else (seed or 0)
        with warnings.catch_warnings():
            # Optuna warns that it lowers a max that is not on a step, as the grid does.
            warnings.simplefilter("ignore")
            self.distributions = {p.name: distribution(p) for p in spec.parameters}
        self.direction = "maximize" if spec.objective.maximize else "minimize"

    # -- suggestions -------------------------------------------------------------------
    def suggest(self, number: int, history: Sequence[TrialRecord]) -> dict[str, Any]:
        """The hparams of trial ``number``, given the trials recorded so far.

        Raises:
            IndexError: grid search past the last point of the grid.
        """
        if self.spec.algorithm == "grid":
            return self.grid_point(number)
        sampler_seed = derive_seed(self.seed, number, "sampler")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning and friends
            if self.spec.algorithm == "cmaes":
                study = self._cmaes_study(sampler_seed, number, history)
            else:
                study = self._study(self._sampler(sampler_seed))
                if self.spec.algorithm == "tpe":
                    self._add(study, [r for r in history if r.number != number])
            trial = study.ask(dict(self.distributions))
        return {name: self._typed(name, trial.params[name]) for name in self.distributions}

    def _sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        if self.spec.algorithm == "tpe":
            startup = min(10, max(1, self.spec.max_trials // 3))
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup,
                                              constant_liar=True)
        return optuna.samplers.RandomSampler(seed=seed)

    def _study(self, sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
        return optuna.create_study(
            study_name=STUDY_NAME, direction=self.direction,
            sampler=sampler or optuna.samplers.RandomSampler(seed=0), pruner=pruner)

    def _params(self, record: TrialRecord) -> dict[str, Any] | None:
        """The record's searched hparams, or None if they no longer fit the search space
        (the spec changed): such a trial tells the sampler nothing."""
        params = {}
        for name, dist in self.distributions.items():
            if name not in record.hparams:
                return None
            value = record.hparams[name]
            try:
                if not dist._contains(dist.to_internal_repr(value)):
                    return None
            except (ValueError, TypeError):
                return None
            params[name] = value
        return params

    def _add(self, study: optuna.Study, history: Sequence[TrialRecord]) -> None:
        """Adds each record as a trial in its state (a succeeded one without an objective
        value counts as failed: it says nothing about the objective)."""
        for record in sorted(history, key=lambda r: r.number):
            params = self._params(record)
            if params is None:
                continue
            state, value = self._outcome(record)
            study.add_trial(optuna.trial.create_trial(
                state=state, value=value, params=params,
                distributions=dict(self.distributions),
                intermediate_values=dict(record.steps())))

    @staticmethod
    def _outcome(record: TrialRecord) -> tuple[TrialState, float | None]:
        if record.state == SUCCEEDED:
            if record.value is None:
                return TrialState.FAIL, None
            return TrialState.COMPLETE, record.value
        return {RUNNING: TrialState.RUNNING, FAILED: TrialState.FAIL,
                PRUNED: TrialState.PRUNED}[record.state], None

    def _cmaes_study(self, seed: int, number: int,
                     history: Sequence[TrialRecord]) -> optuna.Study:
        """CMA-ES keeps its optimizer in trial attributes that added trials lack: the
        finished trials are asked and told again, in number order, so that it updates its
        optimizer with each generation as it would have."""
        sampler = optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        study = self._study(sampler)
        for record in sorted(history, key=lambda r: r.number):
            params = self._params(record)
            if record.number == number or not record.finished or params is None:
                continue
            study.enqueue_trial(params)
            trial = study.ask(dict(self.distributions))
            state, value = self._outcome(record)
            study.tell(trial, value, state=state)
        return study

    def _typed(self, name: str, value: Any) -> Any:
        kind = self.spec.parameter(name).type
        return int(value) if kind == "int" else float(value) if kind == "double" else value

    def grid_point(self, number: int) -> dict[str, Any]:
        """Point ``number`` of the grid in this seed's order: a seeded permutation
        ``(a * number + b) mod size`` with ``a`` prime to the size, so the first points are
        spread over the grid and none repeats before all have been given."""
        size = self.spec.grid_size or 0  # counted, never made: a grid may be large
        if not 0 <= number < size:
            raise IndexError(f"the grid has {size} points; there is no point {number}")
        rng = random.Random(derive_seed(self.seed, 0, "grid"))
        a = rng.randrange(1, size) if size > 1 else 1
        while math.gcd(a, size) != 1:
            a = rng.randrange(1, size)
        return self.spec.grid_point((a * number + rng.randrange(size)) % size)

    # -- early stopping ----------------------------------------------------------------
    def _pruner(self) -> optuna.pruners.BasePruner | None:
        stopping = self.spec.early_stopping
        if stopping is None:
            return None
        if stopping.algorithm == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=stopping.startup_trials,
                                               n_warmup_steps=stopping.warmup_steps)
        return optuna.pruners.HyperbandPruner(
            min_resource=stopping.min_resource,
            max_resource=stopping.max_resource if stopping.max_resource else "auto",
            reduction_factor=stopping.reduction_factor)

    def should_prune(self, record: TrialRecord, history: Sequence[TrialRecord]) -> bool:
        """Whether the running trial ``record`` should stop now, at its last intermediate
        value, given the other trials recorded (records of ``record.number`` in ``history``
        are ignored)."""
        pruner = self._pruner()
        if pruner is None or not record.steps():
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = self._study(pruner=pruner)
            others = {r.number: r for r in history if r.number != record.number}
            replay_rungs = isinstance(pruner, optuna.pruners.HyperbandPruner)
            target = None
            # Every number up to the last gets a trial, so Optuna's numbers (which decide
            # Hyperband's brackets) are the records'.
            for number in range(max([record.number, *others]) + 1):
                trial = study.ask()
                if number == record.number:
                    target = trial
                    continue
                other = others.get(number)
                if other is None:
                    study.tell(trial, state=TrialState.FAIL)
                    continue
                for step, value in other.steps():
                    trial.report(value, step)
                    if replay_rungs:
                        trial.should_prune()  # records the rungs it reached
                if other.finished:
                    state, value = self._outcome(other)
                    study.tell(trial, value, state=state)
            assert target is not None
            verdict = False
            for step, value in record.steps():
                target.report(value, step)
                if replay_rungs or step == record.steps()[-1][0]:
                    verdict = target.should_prune()
            return verdict

    # -- outcome -----------------------------------------------------------------------
    def best(self, history: Sequence[TrialRecord]) -> TrialRecord | None:
        """The succeeded trial with the best objective value (the lowest number of equals)."""
        best: TrialRecord | None = None
        for record in sorted(history, key=lambda r: r.number):
            if record.value is None:
                continue
            if best is None or self.spec.objective.better(record.value,
                                                          best.value):  # type: ignore[arg-type]
                best = record
        return best

    def stop_reason(self, history: Sequence[TrialRecord]) -> str | None:
        """Why no new trial should start, or None. Failures first, then the goal, then the
        budget: maxTrials, or the grid's size for grid search."""
        if count(history, FAILED) > self.spec.max_failed_trials:
            return MAX_FAILED_TRIALS_EXCEEDED
        best = self.best(history)
        if best is not None and self.spec.objective.reached(best.objective):  # type: ignore[arg-type]
            return GOAL_REACHED
        if len(history) >= self.spec.max_trials:
            return MAX_TRIALS_REACHED
        size = self.spec.grid_size if self.spec.algorithm == "grid" else None
        if size is not None and self._next(history) >= size:
            return GRID_EXHAUSTED
        return None

    def done(self, history: Sequence[TrialRecord]) -> tuple[bool, str]:
        """Whether the sweep is over, and why (``""`` while it is not).

        Too many failures and a reached goal end it at once (the running trials are then
        to be stopped); the budget ends it once the last running trial has finished.
        """
        reason = self.stop_reason(history)
        if reason is None:
            return False, ""
        if reason in (MAX_FAILED_TRIALS_EXCEEDED, GOAL_REACHED) \
                or not count(history, RUNNING):
            return True, reason
        return False, ""

    def next_number(self, history: Sequence[TrialRecord]) -> int | None:
        """The number of the trial to start now, or None: the sweep is stopping, or
        ``parallelism`` trials are running."""
        if self.stop_reason(history) is not None:
            return None
        if count(history, RUNNING) >= self.spec.parallelism:
            return None
        return self._next(history)

    @staticmethod
    def _next(history: Sequence[TrialRecord]) -> int:
        return max((r.number for r in history), default=-1) + 1
