"""The Sweep's types and defaults, and the one parser that fills them in.

:func:`parse_sweep` reads a whole manifest; :func:`parse_sweep_spec` the spec of a Sweep the
API server already holds (the operator). Both check it first against the schema the CRD is
generated from (:mod:`.sweep_schema`, through :mod:`.validate`), so the two refuse the same
manifests naming the same field.

It also holds what a Sweep's trials are, for everything that runs them (the operator's
controller, ``kubelearn sweep local`` and the search, :mod:`kubelearn_search`): their states,
why a trial or a sweep stops, and the rule that decides a finished trial's outcome: a trial
whose run succeeded counts as succeeded only with a finite objective value.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import names
from .sweep_schema import (
    DEFAULT_ALGORITHM,
    DEFAULT_DISTRIBUTION,
    DEFAULT_MAX_FAILED_TRIALS,
    DEFAULT_MAX_TRIALS,
    DEFAULT_MIN_RESOURCE,
    DEFAULT_PARALLELISM,
    DEFAULT_REDUCTION_FACTOR,
    DEFAULT_STARTUP_TRIALS,
    DEFAULT_WARMUP_STEPS,
    # A trial's states are the schema's: import them from here, with their rules below.
    FAILED,
    MAXIMIZE,
    PRUNED,
    RUNNING,  # noqa: F401
    STOPPED,
    SUCCEEDED,
    TRIAL_STATES,  # noqa: F401
)
from .validate import check_sweep, manifest_namespace

Value = str | int | float

# -- trials --------------------------------------------------------------------------------
#: The states of a finished trial, as the search sees them (a stopped one counts as failed).
FINISHED = (SUCCEEDED, FAILED, PRUNED)
#: The states a trial ends in when the sweep stops it: pruned (early stopping) or stopped
#: (the sweep ended first); its Experiment's annotation, or its process's end, says which.
STOP_STATES = (PRUNED, STOPPED)

#: Why a sweep stops (the reason of its condition). Only MAX_FAILED_TRIALS_EXCEEDED is a
#: failure; a sweep that stops for another reason fails with NO_TRIAL_SUCCEEDED when no
#: trial succeeded.
MAX_TRIALS_REACHED = "MaxTrialsReached"
GOAL_REACHED = "GoalReached"
MAX_FAILED_TRIALS_EXCEEDED = "MaxFailedTrialsExceeded"
GRID_EXHAUSTED = "GridExhausted"
FAILURE_REASONS = frozenset({MAX_FAILED_TRIALS_EXCEEDED})
NO_TRIAL_SUCCEEDED = "NoTrialSucceeded"


def search_state(state: str) -> str:
    """The state the search is told of a trial in ``state``: a stopped trial counts as
    failed (it tells nothing of the objective, and cannot be taken for the best)."""
    return FAILED if state == STOPPED else state


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (booleans, strings, NaN,
    infinities and integers beyond a double are not): the only objective values a trial can
    succeed with."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an integer beyond any double (JSON has them)
        return None


def final_state(objective: float | None) -> str:
    """The state of a trial whose run succeeded, given its objective value (:func:`finite`
    of its final evaluation's metric): without one it counts as failed, since it tells the
    search nothing."""
    return FAILED if objective is None else SUCCEEDED


def not_finite(subject: str, value: Any) -> str:
    """Why a trial whose run succeeded failed all the same: ``subject`` (its final metric)
    is ``value``, which :func:`finite` refuses."""
    text = repr(value)
    return f"{subject} is {text if len(text) <= 60 else text[:60] + '...'}, not a finite number"


def metric_text(metric: str, value: float) -> str:
    """``loss = 0.0123457``: a metric's value as events, logs and reasons show it."""
    return f"{metric} = {value:.6g}"


def hparams_text(hparams: Mapping[str, Any]) -> str:
    """``learning_rate = 0.01, optimizer = Adam``: a trial's hparams in one line."""
    return ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                     for k, v in hparams.items())


def prune_reason(metric: str, intermediate: Mapping[Any, float], algorithm: str) -> str:
    """Why a trial was pruned: its last intermediate value (steps may be ints or, read from
    JSON, strings), and the pruner that gave up on it."""
    step = max(intermediate, key=int)
    return f"{metric_text(metric, intermediate[step])} at step {step} ({algorithm} pruner)"


def sweep_ended(reason: str) -> str:
    """Why a trial still running was stopped when the sweep ended for ``reason``."""
    return f"the sweep ended: {reason}"


def better(a: float, b: float, maximize: bool) -> bool:
    """Whether objective value ``a`` is strictly better than ``b``."""
    return a > b if maximize else a < b


@dataclass(frozen=True)
class Parameter:
    """One hyper-parameter of the search space.

    ``double`` and ``int`` parameters range from ``min`` to ``max`` (both included), spaced
    by ``step`` when it is set (ints by 1 otherwise); ``int`` ones hold ints. ``categorical``
    (strings: the manifest's ``list``) and ``discrete`` (numbers: its ``values``) ones take
    one of ``values``.
    """

    name: str
    type: str
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    values: tuple[Value, ...] = ()
    distribution: str = DEFAULT_DISTRIBUTION

    @property
    def log(self) -> bool:
        """Whether values are sampled on a log scale (logUniform)."""
        return self.distribution == "logUniform"

    @property
    def finite(self) -> bool:
        """Whether the parameter has finitely many values (grid search needs it)."""
        return self.type != "double" or self.step is not None

    def _decimals(self) -> tuple[Decimal, Decimal, Decimal]:
        if self.step is None:
            raise ValueError(f"parameter {self.name} has no step: it has no grid")
        low, high, step = (Decimal(repr(float(v)))  # type: ignore[arg-type]
                           for v in (self.min, self.max, self.step))
        return low, high, step

    @property
    def grid_size(self) -> int:
        """How many values the grid takes of it, counted without making them.

        Raises:
            ValueError: a double parameter without a step, which has no grid.
        """
        if self.type in ("categorical", "discrete"):
            return len(self.values)
        assert self.min is not None and self.max is not None
        if self.type == "int":
            return max(0, (int(self.max) - int(self.min)) // int(self.step or 1) + 1)
        low, high, step = self._decimals()
        return max(0, int((high - low) // step) + 1)

    def grid_value(self, k: int) -> Value:
        """Value ``k`` of :meth:`grid`, made alone.

        Raises:
            IndexError: ``k`` outside ``range(grid_size)``.
        """
        if not 0 <= k < self.grid_size:
            raise IndexError(f"parameter {self.name} has {self.grid_size} grid values; "
                             f"there is no value {k}")
        if self.type in ("categorical", "discrete"):
            return self.values[k]
        if self.type == "int":
            return int(self.min) + k * int(self.step or 1)  # type: ignore[arg-type]
        low, _, step = self._decimals()
        return float(low + k * step)

    def grid(self) -> tuple[Value, ...]:
        """Every value, in increasing order (or the list's), for grid search (a grid search
        takes them one by one, :meth:`grid_value`).

        Doubles are ``min + k * step`` counted in decimal, so a step of 0.1 gives 0.3 and
        not 0.30000000000000004; as in Optuna, the last is the largest that is <= max.
        """
        return tuple(self.grid_value(k) for k in range(self.grid_size))


@dataclass(frozen=True)
class Objective:
    """What a trial is judged by: ``metric`` of its final evaluation."""

    metric: str
    direction: str  # minimize or maximize
    goal: float | None = None

    @property
    def maximize(self) -> bool:
        return self.direction == MAXIMIZE

    def better(self, a: float, b: float) -> bool:
        """Whether objective value ``a`` is strictly better than ``b``."""
        return better(a, b, self.maximize)

    def reached(self, value: float) -> bool:
        """Whether ``value`` reaches the goal (never, without one)."""
        if self.goal is None:
            return False
        return value >= self.goal if self.maximize else value <= self.goal


@dataclass(frozen=True)
class EarlyStopping:
    """How trials are stopped early: Optuna's median or hyperband pruner and its knobs.

    ``max_resource`` None is Optuna's "auto": the first finished trial's last step.
    """

    algorithm: str  # median or hyperband
    startup_trials: int = DEFAULT_STARTUP_TRIALS
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    min_resource: int = DEFAULT_MIN_RESOURCE
    max_resource: int | None = None
    reduction_factor: int = DEFAULT_REDUCTION_FACTOR


@dataclass(frozen=True)
class SweepSpec:
    """A checked Sweep with its defaults.

    ``experiment`` is the template's spec as given (checked by the Experiment's own rules),
    so a trial's Experiment is built from exactly what the user wrote; ``seed`` None means
    the operator picks one (and keeps it in ``status.seed``).
    """

    name: str
    namespace: str
    experiment: Mapping[str, Any]
    parameters: tuple[Parameter, ...]
    objective: Objective
    algorithm: str = DEFAULT_ALGORITHM
    parallelism: int = DEFAULT_PARALLELISM
    max_trials: int = DEFAULT_MAX_TRIALS
    max_failed_trials: int = DEFAULT_MAX_FAILED_TRIALS
    seed: int | None = None
    early_stopping: EarlyStopping | None = None

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def grid_size(self) -> int | None:
        """How many points the grid has (None when a parameter is not finite), counted
        without making them."""
        if not all(p.finite for p in self.parameters):
            return None
        return math.prod(p.grid_size for p in self.parameters)

    def grid_point(self, index: int) -> dict[str, Value]:
        """Point ``index`` of the grid, made alone: its digits in the mixed radix of the
        parameters' grid sizes, the last parameter's changing fastest.

        Raises:
            IndexError: ``index`` outside ``range(grid_size)``.
        """
        size = self.grid_size
        if size is None or not 0 <= index < size:
            raise IndexError(f"the grid has {size} points; there is no point {index}")
        point: dict[str, Value] = {}
        for p in reversed(self.parameters):
            index, at = divmod(index, p.grid_size)
            point[p.name] = p.grid_value(at)
        return {p.name: point[p.name] for p in self.parameters}

    def trial_name(self, number: int) -> str:
        return names.trial_name(self.name, number)

    def trial_spec(self, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's Experiment spec: the template with ``hparams`` merged over its own."""
        spec = copy.deepcopy(dict(self.experiment))
        spec["hparams"] = {**(spec.get("hparams") or {}), **hparams}
        return spec

    def trial_manifest(self, number: int, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """Trial ``number``'s Experiment, labelled with the Sweep and the number (the
        operator adds its owner reference)."""
        return {"apiVersion": names.API_VERSION, "kind": names.KIND,
                "metadata": {"name": self.trial_name(number), "namespace": self.namespace,
                             "labels": names.trial_labels(self.name, number)},
                "spec": self.trial_spec(hparams)}


def _parameter(value: Mapping[str, Any]) -> Parameter:
    kind = value["type"]
    cast = int if kind == "int" else float

    def bound(key: str) -> float | int | None:
        return None if value.get(key) is None else cast(value[key])

    return Parameter(name=value["name"], type=kind, min=bound("min"), max=bound("max"),
                     step=bound("step"),
                     values=tuple(value.get("list") or value.get("values") or ()),
                     distribution=value.get("distribution") or DEFAULT_DISTRIBUTION)


def _early_stopping(value: Mapping[str, Any] | None) -> EarlyStopping | None:
    if value is None:
        return None

    def get(key: str, default: int) -> int:
        return default if value.get(key) is None else int(value[key])

    return EarlyStopping(
        algorithm=value["algorithm"],
        startup_trials=get("startupTrials", DEFAULT_STARTUP_TRIALS),
        warmup_steps=get("warmupSteps", DEFAULT_WARMUP_STEPS),
        min_resource=get("minResource", DEFAULT_MIN_RESOURCE),
        max_resource=value.get("maxResource"),
        reduction_factor=get("reductionFactor", DEFAULT_REDUCTION_FACTOR))


def _build(body: Mapping[str, Any], namespace: str) -> SweepSpec:
    spec = body["spec"]
    objective = spec["objective"]
    goal = objective.get("goal")

    def get(key: str, default: int) -> int:
        return default if spec.get(key) is None else int(spec[key])

    return SweepSpec(
        name=body["metadata"]["name"],
        namespace=namespace,
        experiment=spec["experiment"],
        parameters=tuple(_parameter(p) for p in spec["parameters"]),
        objective=Objective(objective["metric"], objective["direction"],
                            None if goal is None else float(goal)),
        algorithm=spec.get("algorithm") or DEFAULT_ALGORITHM,
        parallelism=get("parallelism", DEFAULT_PARALLELISM),
        max_trials=get("maxTrials", DEFAULT_MAX_TRIALS),
        max_failed_trials=get("maxFailedTrials", DEFAULT_MAX_FAILED_TRIALS),
        seed=spec.get("seed"),
        early_stopping=_early_stopping(spec.get("earlyStopping")))


def parse_sweep_spec(spec: Any, *, name: str, namespace: str) -> SweepSpec:
    """The spec of the Sweep ``namespace/name``, checked and with its defaults.

    Raises:
        SpecError: naming the offending field.
    """
    body = check_sweep({"metadata": {"name": name}, "spec": spec})
    return _build(body, namespace)


def parse_sweep(manifest: Any) -> SweepSpec:
    """A whole Sweep manifest (the YAML a user would ``kubectl apply``), checked.

    Raises:
        SpecError: naming the offending field.
    """
    namespace = manifest_namespace(manifest, names.SWEEP_KIND)
    return _build(check_sweep(manifest), namespace)
