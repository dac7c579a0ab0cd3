"""The Sweep's OpenAPI schema and cross-field rules: a hyper-parameter search over trials that
are Experiments.

Built like :mod:`.schema` (the same :class:`~.schema.Rule` pairs of CEL and Python, checked
by :mod:`.validate` and written into the CRD by :mod:`.crd`). ``spec.experiment`` is the
Experiment's own :data:`.schema.SPEC`, by reference, so a trial's template is checked by
exactly the Experiment's rules, naming fields under ``spec.experiment``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from . import names
from . import schema as experiment
from .schema import (
    CONDITIONS,
    HPARAM_NAME,
    MAX_HPARAMS,
    MAX_HPARAMS_BYTES,
    RESERVED_HPARAM_NAMES,
    TIME,
    Rule,
    _cel_string,
    _fullmatch,
    _matching,
    replica_names_fit,
    replica_names_fit_cel,
    tensorboard_name_fits,
    tensorboard_name_fits_cel,
)

PARAMETER_TYPES = ("double", "int", "categorical", "discrete")
#: Types sampled between min and max (with an optional step).
RANGE_TYPES = ("double", "int")
#: Types sampled from given values: categorical (strings) and discrete (numbers).
LIST_TYPES = ("categorical", "discrete")
DISTRIBUTIONS = ("uniform", "logUniform")
DEFAULT_DISTRIBUTION = "uniform"
MINIMIZE, MAXIMIZE = "minimize", "maximize"
DIRECTIONS = (MINIMIZE, MAXIMIZE)
ALGORITHMS = ("grid", "random", "tpe", "cmaes")
DEFAULT_ALGORITHM = "random"
EARLY_STOPPING_ALGORITHMS = ("median", "hyperband")
#: The knobs of each early-stopping algorithm (the others' are refused with it).
EARLY_STOPPING_KNOBS = {"median": ("startupTrials", "warmupSteps"),
                        "hyperband": ("minResource", "maxResource", "reductionFactor")}
#: A trial's states (``status.history[].state``, the keys of ``status.counts``): "pruned"
#: is one early stopping stopped, "stopped" one the sweep stopped because it ended first.
#: :mod:`.sweep_model` holds the rules that go with them.
RUNNING, SUCCEEDED, FAILED, PRUNED, STOPPED = "running", "succeeded", "failed", "pruned", "stopped"
TRIAL_STATES = (RUNNING, SUCCEEDED, FAILED, PRUNED, STOPPED)

DEFAULT_PARALLELISM = 1
DEFAULT_MAX_TRIALS = 10
DEFAULT_MAX_FAILED_TRIALS = 3
DEFAULT_STARTUP_TRIALS = 5
DEFAULT_WARMUP_STEPS = 0
DEFAULT_MIN_RESOURCE = 1
DEFAULT_REDUCTION_FACTOR = 3

#: Caps that keep the CEL rules' cost bounded and a Sweep's status (one record per trial)
#: well under the API server's object size.
MAX_TRIALS = 1000
MAX_PARAMETERS = 32
MAX_LIST = 256
#: Seeds are what numpy's generators take (Optuna's samplers pass them on).
MAX_SEED = 2**32 - 1
#: The largest magnitude of a parameter's min, max and step: integers up to it are exact in a
#: double (which the API server's CEL computes with), and differences of two stay finite.
MAX_BOUND = 10**15
#: A double parameter with a step has at most this many values: Optuna counts them in
#: decimal, with 28 digits.
MAX_STEPS = 10**15
#: The most points a grid search's grid may have. A sweep runs at most MAX_TRIALS trials, so
#: a grid of a million points is already sampled in less than a thousandth; a larger one is
#: a random search (algorithm: random) in all but name.
MAX_GRID_POINTS = 1_000_000

P = "spec.parameters[*]"


def _cel_list(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(_cel_string(v) for v in values) + "]"


def _typed(types: tuple[str, ...]) -> str:
    return f"self.type in {_cel_list(types)}"


def _whole(value: Any) -> bool:
    return value is None or float(value).is_integer()


def _log(p: Mapping[str, Any]) -> bool:
    return p.get("distribution") == "logUniform"


def _required_for_range(key: str) -> Rule:
    return Rule(f"{P}.{key}", "is required for a double or int parameter",
                f"!({_typed(RANGE_TYPES)}) || has(self.{key})",
                lambda p: p.get("type") not in RANGE_TYPES or key in p)


def _range_only(key: str) -> Rule:
    return Rule(f"{P}.{key}", "is only for double and int parameters; a categorical or "
                              "discrete parameter takes a list",
                f"!({_typed(LIST_TYPES)}) || !has(self.{key})",
                lambda p: p.get("type") not in LIST_TYPES or key not in p)


def _whole_for_int(key: str) -> Rule:
    return Rule(f"{P}.{key}", "must be a whole number for an int parameter",
                f"self.type != 'int' || !has(self.{key}) || "
                f"self.{key} == double(int(self.{key}))",
                lambda p: p.get("type") != "int" or _whole(p.get(key)))


#: The field that holds each list type's values: categorical strings, discrete numbers (two
#: typed fields, as the API server's CEL cannot see into a list of untyped items).
VALUES_FIELD = {"categorical": "list", "discrete": "values"}


def _values_rules(kind: str) -> tuple[Rule, ...]:
    key = VALUES_FIELD[kind]
    other = next(k for k in LIST_TYPES if k != kind)
    return (
        Rule(f"{P}.{key}", f"is required for a {kind} parameter",
             f"self.type != '{kind}' || has(self.{key})",
             lambda p: p.get("type") != kind or key in p),
        Rule(f"{P}.{key}", f"is only for {kind} parameters; a double or int parameter "
                           f"takes min and max, a {other} one {VALUES_FIELD[other]}",
             f"self.type == '{kind}' || !has(self.{key})",
             lambda p: p.get("type") == kind or key not in p),
    )


def _steps(p: Mapping[str, Any]) -> float:
    """``(max - min) / step`` in doubles, as CEL computes it."""
    return (float(p["max"]) - float(p["min"])) / float(p["step"])


PARAMETER_RULES = (
    _required_for_range("min"),
    _required_for_range("max"),
    *(_range_only(key) for key in ("min", "max", "step")),
    *(rule for kind in LIST_TYPES for rule in _values_rules(kind)),
    Rule(f"{P}.max", "must be >= min",
         "!has(self.min) || !has(self.max) || self.min <= self.max",
         lambda p: not ("min" in p and "max" in p) or p["min"] <= p["max"]),
    *(_whole_for_int(key) for key in ("min", "max", "step")),
    Rule(f"{P}.distribution", "logUniform is only for double and int parameters",
         f"!has(self.distribution) || self.distribution != 'logUniform' || "
         f"{_typed(RANGE_TYPES)}",
         lambda p: not _log(p) or p.get("type") in RANGE_TYPES),
    Rule(f"{P}.min", "must be > 0 for a logUniform parameter",
         "!has(self.distribution) || self.distribution != 'logUniform' || !has(self.min) || "
         "self.min > 0.0",
         lambda p: not _log(p) or "min" not in p or p["min"] > 0),
    Rule(f"{P}.step", "cannot be combined with logUniform (but 1 for an int parameter): a "
                      "log scale has no steps",
         "!has(self.step) || !has(self.distribution) || self.distribution != 'logUniform' || "
         "(self.type == 'int' && self.step == 1.0)",
         lambda p: "step" not in p or not _log(p) or (p.get("type") == "int" and p["step"] == 1)),
    Rule(f"{P}.step", f"is too small for the range: (max - min) / step must be at most "
                      f"{MAX_STEPS:.0e} for a double parameter",
         "self.type != 'double' || !has(self.step) || !has(self.min) || !has(self.max) || "
         f"(self.max - self.min) / self.step <= {float(MAX_STEPS)!r}",
         lambda p: p.get("type") != "double" or not {"step", "min", "max"} <= p.keys()
         or _steps(p) <= MAX_STEPS),
    Rule(f"{P}.name", "is a name HParams keeps for itself: "
                      + ", ".join(RESERVED_HPARAM_NAMES),
         f"!(self.name in {_cel_list(RESERVED_HPARAM_NAMES)})",
         lambda p: p.get("name") not in RESERVED_HPARAM_NAMES),
)


def _finite(p: Mapping[str, Any]) -> bool:
    """Whether a parameter has finitely many values: grid search can enumerate it."""
    return p.get("type") != "double" or "step" in p


def grid_values(p: Mapping[str, Any]) -> float:
    """How many values a parameter gives the grid, as the API server's CEL counts them (in
    doubles: ``floor((max - min) / step) + 1``, not rounded down when beyond any grid, as
    ``int()`` takes only what fits in 64 bits; the grid itself counts a double's steps in
    decimal, and may have one value more or less).
    A parameter that other rules refuse counts 1."""
    kind = p.get("type")
    if kind in LIST_TYPES:
        key = VALUES_FIELD[kind]
        return float(len(p[key])) if key in p else 1.0
    if "min" not in p or "max" not in p or p["max"] < p["min"] or (
            p["step"] <= 0 if "step" in p else kind == "double"):
        return 1.0
    steps = (float(p["max"]) - float(p["min"])) / float(p.get("step", 1.0))
    return (steps if steps > MAX_GRID_POINTS else float(int(steps))) + 1.0


def _grid_values_cel(p: str) -> str:
    """:func:`grid_values` of the parameter ``p`` in CEL."""
    step = f"(has({p}.step) ? {p}.step : 1.0)"
    steps = f"(({p}.max - {p}.min) / {step})"
    return (f"({p}.type in ['categorical', 'discrete'] ? "
            f"({p}.type == 'categorical' ? (has({p}.list) ? double(size({p}.list)) : 1.0) : "
            f"(has({p}.values) ? double(size({p}.values)) : 1.0)) : "
            f"(!has({p}.min) || !has({p}.max) || {p}.max < {p}.min || "
            f"(has({p}.step) ? {p}.step <= 0.0 : {p}.type == 'double')) ? 1.0 : "
            f"({steps} > {float(MAX_GRID_POINTS)!r} ? {steps} : double(int({steps}))) + 1.0)")


def grid_points(spec: Mapping[str, Any]) -> float:
    """The product of :func:`grid_values` over the parameters, in the order CEL multiplies."""
    total = 1.0
    for p in spec.get("parameters") or ():
        total *= grid_values(p)
    return total


def _grid_points_cel(use: str, method: str = "all") -> str:
    """``[counts].all(n, use)`` (or ``.map``): ``n`` the parameters' :func:`grid_values`,
    ``use`` an expression of the product ``G``. A list of one binds a value to a name, which
    CEL has no other way to do here."""
    counts = f"self.parameters.map(p, {_grid_values_cel('p')})"
    product = " * ".join(f"(size(n) > {i} ? n[{i}] : 1.0)" for i in range(MAX_PARAMETERS))
    return f"[{counts}].{method}(n, {use.replace('G', f'({product})')})"


def _points_text(points: float) -> str:
    return "more than 10^18" if points >= 1e18 else str(int(points))


GRID_TOO_LARGE = (f"points, more than the {MAX_GRID_POINTS} a grid search takes: give "
                  "fewer values or larger steps, or use algorithm: random")


def _trial_hparams(spec: Mapping[str, Any]) -> tuple[int, int]:
    """How many hparams a trial's Experiment has at most, and how many bytes of JSON: the
    template's with each parameter's largest value merged in."""
    hparams = dict((spec.get("experiment") or {}).get("hparams") or {})
    for p in spec.get("parameters") or ():
        values = p.get("list") or p.get("values") or [p.get("min"), p.get("max")]
        hparams[p["name"]] = max(values, key=lambda v: len(json.dumps(v)))
    return len(hparams), len(json.dumps(hparams, sort_keys=True).encode())


SPEC_RULES = (
    Rule("spec.algorithm", "grid needs every parameter to be finite: give each double "
                           "parameter a step (or make it discrete)",
         "!has(self.algorithm) || self.algorithm != 'grid' || "
         "self.parameters.all(p, p.type != 'double' || has(p.step))",
         lambda spec: spec.get("algorithm") != "grid"
         or all(_finite(p) for p in spec["parameters"])),
    Rule("spec.algorithm", "cmaes samples only double and int parameters (Optuna's "
                           "CmaEsSampler cannot sample categorical or discrete ones)",
         "!has(self.algorithm) || self.algorithm != 'cmaes' || "
         f"self.parameters.all(p, p.type in {_cel_list(RANGE_TYPES)})",
         lambda spec: spec.get("algorithm") != "cmaes"
         or all(p.get("type") in RANGE_TYPES for p in spec["parameters"])),
    Rule("spec.parameters", f"make a grid of more than {MAX_GRID_POINTS} points, more than "
                            "a grid search takes: give fewer values or larger steps, or use "
                            "algorithm: random",
         "!has(self.algorithm) || self.algorithm != 'grid' || "
         + _grid_points_cel(f"G <= {float(MAX_GRID_POINTS)!r}"),
         lambda spec: spec.get("algorithm") != "grid" or grid_points(spec) <= MAX_GRID_POINTS,
         describe=lambda spec: f"make a grid of {_points_text(grid_points(spec))} "
                               + GRID_TOO_LARGE,
         # format, as a string of unknown length (the count) joined to others is costed as
         # one of the largest the API server takes.
         message_cel=_grid_points_cel(
             _cel_string(f"make a grid of %s {GRID_TOO_LARGE}")
             + ".format([G >= 1.0e18 ? 'more than 10^18' : string(int(G))])", "map") + "[0]"),
    Rule("spec.parameters", f"with spec.experiment.hparams, a trial would have more than "
                            f"{MAX_HPARAMS} hyper-parameters or {MAX_HPARAMS_BYTES} bytes of "
                            "them as JSON (an Experiment's limits)",
         None, lambda spec: all(n <= limit for n, limit in zip(
             _trial_hparams(spec), (MAX_HPARAMS, MAX_HPARAMS_BYTES), strict=True))),
)


def _knobs_rule(algorithm: str) -> Rule:
    others = tuple(k for a, knobs in EARLY_STOPPING_KNOBS.items() if a != algorithm
                   for k in knobs)
    return Rule("spec.earlyStopping",
                f"{', '.join(others)} are not knobs of {algorithm}",
                f"self.algorithm != '{algorithm}' || !("
                + " || ".join(f"has(self.{k})" for k in others) + ")",
                lambda es: es.get("algorithm") != algorithm or not any(k in es for k in others))


EARLY_STOPPING_RULES = (
    *(_knobs_rule(a) for a in EARLY_STOPPING_ALGORITHMS),
    Rule("spec.earlyStopping.maxResource", "must be >= minResource",
         f"!has(self.maxResource) || (has(self.minResource) ? self.minResource : "
         f"{DEFAULT_MIN_RESOURCE}) <= self.maxResource",
         lambda es: "maxResource" not in es
         or es.get("minResource", DEFAULT_MIN_RESOURCE) <= es["maxResource"]),
)


def max_trials(spec: Mapping[str, Any]) -> int:
    """``spec.maxTrials`` or its default."""
    value = spec.get("maxTrials")
    return DEFAULT_MAX_TRIALS if value is None else int(value)


def _trial_names_fit(body: Mapping[str, Any]) -> bool:
    name, spec = body["metadata"].get("name"), body["spec"]
    if name is None or not isinstance(spec.get("experiment"), Mapping):
        return True
    last = names.trial_name(name, max_trials(spec) - 1)
    return (replica_names_fit(last, spec["experiment"])
            and tensorboard_name_fits(last, spec["experiment"]))


def _trial_names_fit_cel() -> str:
    exp = "self.spec.experiment"
    count = (f"(has(self.spec.maxTrials) ? self.spec.maxTrials : {DEFAULT_MAX_TRIALS})")
    size = f"(size(self.metadata.name) + 1 + size(string({count} - 1)))"
    return (f"!has(self.metadata.name) || !has({exp}) || ("
            f"{replica_names_fit_cel(exp, size)} && {tensorboard_name_fits_cel(exp, size)})")


ROOT_RULES = (
    Rule("metadata.name",
         "must be a DNS-1035 label (lower-case letters, digits and '-', starting with a "
         "letter): it names the trials' Experiments, <name>-<number>",
         f"!has(self.metadata.name) || self.metadata.name.matches("
         f"{_cel_string('^' + names.DNS_1035 + '$')})",
         lambda body: body["metadata"].get("name") is None
         or _fullmatch(names.DNS_1035, body["metadata"]["name"])),
    Rule("metadata.name",
         "is too long: the last trial's Experiment, <name>-<maxTrials - 1>, must be a name "
         "spec.experiment can run under (its pods <name>-<number>-<role>-<index> and its "
         f"TensorBoard fit in {names.MAX_DNS_LABEL} characters)",
         _trial_names_fit_cel(), _trial_names_fit),
)


def _integer(description: str, minimum: int, maximum: int | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer", "minimum": minimum, "description": description}
    if maximum is not None:
        node["maximum"] = maximum
    return node


def _number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def _bound(description: str) -> dict[str, Any]:
    return {**_number(description), "minimum": -MAX_BOUND, "maximum": MAX_BOUND}


PARAMETER: dict[str, Any] = {
    "type": "object",
    "required": ["name", "type"],
    "_rules": PARAMETER_RULES,
    "properties": {
        "name": _matching(f"{P}.name", HPARAM_NAME, "must be a hyper-parameter name: "
                          "letters, digits and '_', starting with a letter",
                          "The hyper-parameter (a key of spec.experiment.hparams) the search "
                          "sets."),
        "type": {"type": "string", "enum": list(PARAMETER_TYPES),
                 "description": "double or int (from min to max, with an optional step), "
                                "categorical (strings, from list) or discrete (numbers, "
                                "from values)."},
        "min": _bound("Smallest value of a double or int parameter (at most 1e15 in "
                      "magnitude)."),
        "max": _bound("Largest value of a double or int parameter (at most 1e15 in "
                      "magnitude)."),
        "step": {"type": "number", "maximum": MAX_BOUND,
                 "description": "Spacing of the values from min; needed by grid search for "
                                "a double parameter, which has at most 1e15 steps.",
                 "_rules": (Rule(f"{P}.step", "must be > 0", "self > 0.0",
                                 lambda step: step > 0),)},
        "list": {
            "type": "array", "minItems": 1, "maxItems": MAX_LIST,
            "x-kubernetes-list-type": "set",
            "description": "The choices of a categorical parameter.",
            "items": {"type": "string", "maxLength": 1024}},
        "values": {
            "type": "array", "minItems": 1, "maxItems": MAX_LIST,
            "x-kubernetes-list-type": "set",
            "description": "The values of a discrete parameter.",
            "items": {"type": "number"}},
        "distribution": {
            "type": "string", "enum": list(DISTRIBUTIONS),
            "description": "uniform (default), or logUniform (double and int: sampled on a "
                           "log scale; min must be > 0)."},
    },
}

SPEC: dict[str, Any] = {
    "type": "object",
    "required": ["experiment", "parameters", "objective"],
    "_rules": SPEC_RULES,
    "properties": {
        "experiment": {
            **experiment.SPEC,  # the same properties and rules, with a description of its own
            "description": "The Experiment spec every trial runs, with the trial's "
                           "parameters merged over its hparams."},
        "parameters": {
            "type": "array", "minItems": 1, "maxItems": MAX_PARAMETERS,
            "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
            "description": "The search space: one entry per hyper-parameter searched.",
            "items": PARAMETER},
        "objective": {
            "type": "object",
            "required": ["metric", "direction"],
            "properties": {
                "metric": {"type": "string", "minLength": 1, "maxLength": 253,
                           "description": "A metric of the trial's final evaluation, e.g. "
                                          "loss or accuracy."},
                "direction": {"type": "string", "enum": list(DIRECTIONS),
                              "description": "minimize or maximize the metric."},
                "goal": _number("Stop the sweep once a trial's metric reaches this value."),
            },
        },
        "algorithm": {
            "type": "string", "enum": list(ALGORITHMS),
            "description": "grid, random (default), tpe or cmaes (Optuna's samplers)."},
        "parallelism": _integer(f"Trials running at once (default {DEFAULT_PARALLELISM}).",
                                1, MAX_TRIALS),
        "maxTrials": _integer(f"Trials to run in all (default {DEFAULT_MAX_TRIALS}).",
                              1, MAX_TRIALS),
        "maxFailedTrials": _integer("The sweep fails once more trials than this failed "
                                    f"(default {DEFAULT_MAX_FAILED_TRIALS}).", 0, MAX_TRIALS),
        "seed": _integer("Seed of the search: the same seed and the same finished trials "
                         "give the same suggestions.", 0, MAX_SEED),
        "earlyStopping": {
            "type": "object",
            "required": ["algorithm"],
            "description": "Stop trials whose intermediate metric is clearly worse than "
                           "the others' (Optuna's pruners).",
            "_rules": EARLY_STOPPING_RULES,
            "properties": {
                "algorithm": {"type": "string", "enum": list(EARLY_STOPPING_ALGORITHMS),
                              "description": "median or hyperband."},
                "startupTrials": _integer(
                    "median: trials that finish before any is stopped (default "
                    f"{DEFAULT_STARTUP_TRIALS}).", 0, MAX_TRIALS),
                "warmupSteps": _integer(
                    "median: steps a trial runs before it can be stopped (default "
                    f"{DEFAULT_WARMUP_STEPS}).", 0),
                "minResource": _integer(
                    "hyperband: steps every trial runs (default "
                    f"{DEFAULT_MIN_RESOURCE}).", 1),
                "maxResource": _integer(
                    "hyperband: steps of a trial that runs to the end (default: the "
                    "first finished trial's last step).", 1),
                "reductionFactor": _integer(
                    "hyperband: 1/reductionFactor of the trials go on at each rung "
                    f"(default {DEFAULT_REDUCTION_FACTOR}).", 2),
            },
        },
    },
}

_RECORD: dict[str, Any] = {
    "type": "object", "required": ["number"], "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "number": {"type": "integer"},
        "name": {"type": "string", "description": "The trial's Experiment."},
        "state": {"type": "string", "description": ", ".join(TRIAL_STATES)},
        "hparams": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "objective": {"type": "number"},
        "intermediate": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "description": "Step (as a string) to the metric's value."},
        "startTime": TIME,
        "completionTime": TIME,
    },
}

STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string"},
        "conditions": CONDITIONS,
        "seed": {"type": "integer",
                 "description": "The search's seed: spec.seed, or one drawn once at the start "
                                "and kept, so the search can be rebuilt."},
        "trials": {"type": "string", "description": "finished/maxTrials."},
        "counts": {"type": "object",
                   "properties": {state: {"type": "integer"} for state in TRIAL_STATES}},
        "best": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"name": {"type": "string"}, "number": {"type": "integer"},
                                "hparams": {"type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True},
                                "objective": {"type": "number"}}},
        "history": {"type": "array", "maxItems": MAX_TRIALS, "items": _RECORD,
                    "description": "One record per trial, by number."},
        "startTime": TIME,
        "completionTime": TIME,
        "lastReconcileTime": TIME,
        "observedGeneration": {"type": "integer"},
        "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

ROOT = experiment.resource_root("A hyper-parameter search: trials that are Experiments, "
                                 "suggested by Optuna.", ROOT_RULES, SPEC, STATUS)
