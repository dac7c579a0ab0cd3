"""One table of Sweep manifests, valid and invalid, run through the API server (the generated
CRD) and the Python parser: each must give the same verdict and name the same field.

``field`` is the path an invalid case is refused for (None: valid). ``expect`` holds, for a
valid case, values the parsed :class:`kubelearn_spec.sweep_model.SweepSpec` must have
(attribute paths as in :func:`tests.experiment_cases.attribute`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubelearn_spec.schema import MAX_HPARAMS
from kubelearn_spec.sweep_schema import MAX_GRID_POINTS
from tests.experiment_cases import MINIMAL as EXPERIMENT
from tests.experiment_cases import Case as ExperimentCase
from tests.experiment_cases import replaced

LR = {"name": "learning_rate", "type": "double", "min": 0.001, "max": 0.1,
      "distribution": "logUniform"}
STEPS = {"name": "train_steps", "type": "int", "min": 100, "max": 1000, "step": 100}
OPTIMIZER = {"name": "optimizer", "type": "categorical", "list": ["SGD", "Adam"]}
BATCH = {"name": "batch_size", "type": "discrete", "values": [16, 32, 64]}

MINIMAL: dict[str, Any] = {
    "experiment": EXPERIMENT,
    "parameters": [LR],
    "objective": {"metric": "loss", "direction": "minimize"},
}


@dataclass(frozen=True)
class Case(ExperimentCase):
    kind = "Sweep"


def spec(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level fields replaced (None removes one)."""
    return replaced(MINIMAL, **changes)


def param(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A parameter with fields replaced (None removes one)."""
    return replaced(base, **changes)


def with_params(*parameters: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return spec(parameters=list(parameters), **changes)


def experiment(**changes: Any) -> dict[str, Any]:
    """The template Experiment spec with top-level fields replaced (None removes one)."""
    return replaced(EXPERIMENT, **changes)


FULL = {
    "experiment": experiment(hparams={"learning_rate": 0.05, "train_steps": 2000,
                                      "optimizer": "SGD"}),
    "parameters": [LR, STEPS, OPTIMIZER, BATCH,
                   {"name": "momentum", "type": "double", "min": 0, "max": 0.9, "step": 0.1}],
    "objective": {"metric": "accuracy", "direction": "maximize", "goal": 0.97},
    "algorithm": "tpe", "parallelism": 3, "maxTrials": 50, "maxFailedTrials": 0, "seed": 7,
    "earlyStopping": {"algorithm": "median", "startupTrials": 3, "warmupSteps": 100},
}

CASES = [
    # -- valid ---------------------------------------------------------------------------
    Case("minimal", "lr", spec(), expect={
        "algorithm": "random", "parallelism": 1, "max_trials": 10, "max_failed_trials": 3,
        "seed": None, "early_stopping": None, "objective.direction": "minimize",
        "objective.goal": None, "parameters.0.name": "learning_rate",
        "parameters.0.log": True, "parameters.0.min": 0.001, "experiment.replicas":
        {"ps": 1, "worker": 2, "master": 1}}),
    Case("full", "full", FULL, expect={
        "algorithm": "tpe", "parallelism": 3, "max_trials": 50, "max_failed_trials": 0,
        "seed": 7, "objective.maximize": True, "objective.goal": 0.97,
        "early_stopping.algorithm": "median", "early_stopping.startup_trials": 3,
        "early_stopping.warmup_steps": 100, "parameters.1.min": 100,
        "parameters.1.step": 100, "parameters.2.values": ("SGD", "Adam"),
        "parameters.3.values": (16, 32, 64), "parameters.4.distribution": "uniform",
        "grid_size": None}),
    Case("grid-of-finite-parameters", "grid", with_params(
        STEPS, OPTIMIZER, BATCH, {"name": "momentum", "type": "double", "min": 0, "max": 0.9,
                                  "step": 0.3}, algorithm="grid"), expect={
        "grid_size": 10 * 2 * 3 * 4, "parameters.3.grid()": (0.0, 0.3, 0.6, 0.9)}),
    Case("cmaes-on-ranges", "cma", with_params(LR, STEPS, algorithm="cmaes")),
    Case("hyperband", "hb", spec(earlyStopping={
        "algorithm": "hyperband", "minResource": 10, "maxResource": 1000,
        "reductionFactor": 2}), expect={
        "early_stopping.min_resource": 10, "early_stopping.max_resource": 1000,
        "early_stopping.reduction_factor": 2, "early_stopping.startup_trials": 5}),
    Case("hyperband-defaults", "hb", spec(earlyStopping={"algorithm": "hyperband"}), expect={
        "early_stopping.min_resource": 1, "early_stopping.max_resource": None,
        "early_stopping.reduction_factor": 3}),
    Case("min-equals-max", "same", with_params(param(STEPS, min=500, max=500))),
    Case("int-bounds-as-whole-doubles", "whole", with_params(param(STEPS, min=100.0)),
         expect={"parameters.0.min": 100}),
    Case("int-log-with-step-one", "intlog", with_params(
        {"name": "units", "type": "int", "min": 8, "max": 512, "step": 1,
         "distribution": "logUniform"})),
    Case("discrete-floats", "disc", with_params(param(BATCH, values=[0.5, 1, 2.5]))),
    Case("uniform-categorical", "cat", with_params(param(OPTIMIZER, distribution="uniform"))),
    Case("goal-and-seed-zero", "goal", spec(
        objective={"metric": "loss", "direction": "minimize", "goal": 0.1}, seed=0)),
    Case("template-full-form", "tmpl", spec(experiment={
        "experimentFn": "pkg.mod:fn", "replicaSpecs": {"worker": {"replicas": 2}}})),
    Case("longest-name-for-10-trials", "n" * 52, spec()),  # <name>-9-worker-1: 63
    Case("longest-name-for-1000-trials", "n" * 50, spec(maxTrials=1000)),
    Case("longest-name-with-tensorboard", "t" * 49, spec(
        experiment=experiment(tensorboard=True, replicas={"worker": 1}))),
    Case("grid-of-the-most-points", "grid", with_params(
        param(STEPS, min=0, max=999_999, step=1), algorithm="grid"),
         expect={"grid_size": MAX_GRID_POINTS}),
    Case("grid-of-the-most-points-over-three", "grid", with_params(
        param(STEPS, min=1, max=100, step=1), OPTIMIZER,
        {"name": "momentum", "type": "double", "min": 0, "max": 0.4995, "step": 0.0001},
        algorithm="grid"), expect={"grid_size": 100 * 2 * 4996}),
    Case("random-over-the-widest-int-range", "wide", with_params(
        param(STEPS, min=-10**15, max=10**15, step=None))),
    Case("double-with-a-fine-step", "fine", with_params(
        {"name": "momentum", "type": "double", "min": 0, "max": 1, "step": 1e-15})),
    # -- invalid: the Sweep's own rules --------------------------------------------------
    Case("min-above-max", "bad", with_params(param(STEPS, min=1000, max=100)),
         "spec.parameters[0].max"),
    Case("min-above-max-second-parameter", "bad", with_params(
        LR, param(LR, name="decay", min=0.5, max=0.1)), "spec.parameters[1].max"),
    Case("double-without-min", "bad", with_params(param(LR, min=None)),
         "spec.parameters[0].min"),
    Case("int-without-max", "bad", with_params(param(STEPS, max=None)),
         "spec.parameters[0].max"),
    Case("double-with-a-list", "bad", with_params(param(LR, list=["0.1"])),
         "spec.parameters[0].list"),
    Case("categorical-with-min", "bad", with_params(param(OPTIMIZER, min=0)),
         "spec.parameters[0].min"),
    Case("discrete-with-max", "bad", with_params(param(BATCH, max=10)),
         "spec.parameters[0].max"),
    Case("categorical-with-step", "bad", with_params(param(OPTIMIZER, step=1)),
         "spec.parameters[0].step"),
    Case("categorical-without-list", "bad", with_params(param(OPTIMIZER, list=None)),
         "spec.parameters[0].list"),
    Case("discrete-empty-values", "bad", with_params(param(BATCH, values=[])),
         "spec.parameters[0].values"),
    Case("discrete-without-values", "bad", with_params(param(BATCH, values=None)),
         "spec.parameters[0].values"),
    Case("discrete-with-a-list", "bad", with_params(param(BATCH, list=["16"])),
         "spec.parameters[0].list"),
    Case("categorical-with-values", "bad", with_params(param(OPTIMIZER, values=[1])),
         "spec.parameters[0].values"),
    Case("int-with-values", "bad", with_params(param(STEPS, values=[1])),
         "spec.parameters[0].values"),
    Case("categorical-empty-list", "bad", with_params(param(OPTIMIZER, list=[])),
         "spec.parameters[0].list"),
    Case("categorical-twice-the-same", "bad", with_params(param(OPTIMIZER,
                                                                list=["SGD", "SGD"])),
         "spec.parameters[0].list[1]"),
    Case("discrete-twice-the-same", "bad", with_params(param(BATCH, values=[1, 2, 1])),
         "spec.parameters[0].values[2]"),
    Case("categorical-numbers", "bad", with_params(param(OPTIMIZER, list=["SGD", 1])),
         "spec.parameters[0].list[1]"),
    Case("discrete-strings", "bad", with_params(param(BATCH, values=[16, "32"])),
         "spec.parameters[0].values[1]"),
    Case("discrete-booleans", "bad", with_params(param(BATCH, values=[True])),
         "spec.parameters[0].values[0]"),
    Case("log-uniform-from-zero", "bad", with_params(param(LR, min=0)),
         "spec.parameters[0].min"),
    Case("log-uniform-negative", "bad", with_params(param(LR, min=-1)),
         "spec.parameters[0].min"),
    Case("log-uniform-with-step", "bad", with_params(param(LR, step=0.01)),
         "spec.parameters[0].step"),
    Case("log-uniform-categorical", "bad", with_params(
        param(OPTIMIZER, distribution="logUniform")), "spec.parameters[0].distribution"),
    Case("int-fractional-min", "bad", with_params(param(STEPS, min=0.5)),
         "spec.parameters[0].min"),
    Case("int-fractional-step", "bad", with_params(param(STEPS, step=2.5)),
         "spec.parameters[0].step"),
    Case("step-zero", "bad", with_params(param(STEPS, step=0)), "spec.parameters[0].step"),
    Case("grid-with-a-continuous-double", "bad", with_params(STEPS, LR, algorithm="grid"),
         "spec.algorithm"),
    # A grid is counted, never made; one of more than a million points is refused.
    Case("grid-of-a-trillion-points", "bad", with_params(
        param(STEPS, min=0, max=10**12, step=1), algorithm="grid"), "spec.parameters"),
    Case("grid-one-point-too-many", "bad", with_params(
        param(STEPS, min=0, max=1_000_000, step=1), algorithm="grid"), "spec.parameters"),
    Case("grid-too-large-from-two-parameters", "bad", with_params(
        param(STEPS, min=1, max=1001, step=1), param(BATCH, values=list(range(250))),
        param(OPTIMIZER, list=["a", "b", "c", "d"]), algorithm="grid"), "spec.parameters"),
    Case("grid-too-large-from-a-double", "bad", with_params(
        {"name": "momentum", "type": "double", "min": 0, "max": 1, "step": 1e-9},
        algorithm="grid"), "spec.parameters"),
    # Bounds a double (and Optuna) can work with.
    Case("min-of-minus-1e308", "bad", with_params(param(LR, min=-1e308, distribution=None)),
         "spec.parameters[0].min"),
    Case("max-of-1e308", "bad", with_params(param(LR, max=1e308)), "spec.parameters[0].max"),
    Case("int-max-beyond-1e15", "bad", with_params(param(STEPS, max=10**15 + 1)),
         "spec.parameters[0].max"),
    Case("step-of-1e-300", "bad", with_params(
        {"name": "momentum", "type": "double", "min": 0, "max": 1, "step": 1e-300}),
         "spec.parameters[0].step"),
    Case("step-beyond-1e15", "bad", with_params(param(STEPS, step=10**16)),
         "spec.parameters[0].step"),
    Case("parameter-name-hparams-keeps", "bad", with_params(param(LR, name="values")),
         "spec.parameters[0].name"),
    Case("parameter-name-starting-with-underscore", "bad", with_params(param(LR, name="_lr")),
         "spec.parameters[0].name"),
    Case("cmaes-with-categorical", "bad", with_params(LR, OPTIMIZER, algorithm="cmaes"),
         "spec.algorithm"),
    Case("cmaes-with-discrete", "bad", with_params(LR, BATCH, algorithm="cmaes"),
         "spec.algorithm"),
    Case("duplicate-parameter-names", "bad", with_params(LR, param(STEPS, name=LR["name"])),
         "spec.parameters[1]"),
    Case("parameter-name-not-an-identifier", "bad", with_params(param(LR, name="learning-rate")),
         "spec.parameters[0].name"),
    Case("parameter-name-starts-with-a-digit", "bad", with_params(param(LR, name="1lr")),
         "spec.parameters[0].name"),
    Case("unknown-parameter-type", "bad", with_params(param(LR, type="float")),
         "spec.parameters[0].type"),
    Case("unknown-distribution", "bad", with_params(param(LR, distribution="normal")),
         "spec.parameters[0].distribution"),
    Case("parameter-without-type", "bad", with_params(param(LR, type=None)),
         "spec.parameters[0].type"),
    Case("parameter-unknown-field", "bad", with_params(param(LR, scale="log")),
         "spec.parameters[0].scale"),
    Case("no-parameters", "bad", spec(parameters=[]), "spec.parameters"),
    Case("parameters-missing", "bad", spec(parameters=None), "spec.parameters"),
    Case("parallelism-zero", "bad", spec(parallelism=0), "spec.parallelism"),
    Case("max-trials-zero", "bad", spec(maxTrials=0), "spec.maxTrials"),
    Case("max-trials-over-the-cap", "bad", spec(maxTrials=1001), "spec.maxTrials"),
    Case("max-failed-trials-negative", "bad", spec(maxFailedTrials=-1),
         "spec.maxFailedTrials"),
    Case("seed-negative", "bad", spec(seed=-1), "spec.seed"),
    Case("unknown-algorithm", "bad", spec(algorithm="bayes"), "spec.algorithm"),
    Case("objective-missing", "bad", spec(objective=None), "spec.objective"),
    Case("objective-without-direction", "bad", spec(objective={"metric": "loss"}),
         "spec.objective.direction"),
    Case("objective-direction", "bad", spec(objective={"metric": "loss",
                                                      "direction": "lower"}),
         "spec.objective.direction"),
    Case("objective-empty-metric", "bad", spec(objective={"metric": "",
                                                         "direction": "minimize"}),
         "spec.objective.metric"),
    Case("objective-goal-not-a-number", "bad", spec(objective={
        "metric": "loss", "direction": "minimize", "goal": "low"}), "spec.objective.goal"),
    Case("early-stopping-unknown-algorithm", "bad", spec(earlyStopping={
        "algorithm": "truncation"}), "spec.earlyStopping.algorithm"),
    Case("early-stopping-without-algorithm", "bad", spec(earlyStopping={
        "startupTrials": 3}), "spec.earlyStopping.algorithm"),
    Case("median-with-hyperband-knobs", "bad", spec(earlyStopping={
        "algorithm": "median", "reductionFactor": 3}), "spec.earlyStopping"),
    Case("hyperband-with-median-knobs", "bad", spec(earlyStopping={
        "algorithm": "hyperband", "warmupSteps": 3}), "spec.earlyStopping"),
    Case("hyperband-min-resource-above-max", "bad", spec(earlyStopping={
        "algorithm": "hyperband", "minResource": 100, "maxResource": 10}),
         "spec.earlyStopping.maxResource"),
    Case("hyperband-reduction-factor-one", "bad", spec(earlyStopping={
        "algorithm": "hyperband", "reductionFactor": 1}),
         "spec.earlyStopping.reductionFactor"),
    Case("unknown-spec-field", "bad", spec(trials=3), "spec.trials"),
    Case("name-not-dns-label", "lr.sweep", spec(), "metadata.name"),
    Case("name-too-long-for-10-trials", "n" * 53, spec(), "metadata.name"),
    Case("name-too-long-for-1000-trials", "n" * 51, spec(maxTrials=1000), "metadata.name"),
    Case("name-too-long-for-tensorboard", "t" * 50, spec(
        experiment=experiment(tensorboard=True, replicas={"worker": 1})), "metadata.name"),
    # -- invalid: the Experiment's rules on the template, named under spec.experiment ----
    Case("experiment-missing", "bad", spec(experiment=None), "spec.experiment"),
    Case("template-without-experiment-fn", "bad", spec(experiment=experiment(
        experimentFn=None)), "spec.experiment.experimentFn"),
    Case("template-experiment-fn-form", "bad", spec(experiment=experiment(
        experimentFn="module")), "spec.experiment.experimentFn"),
    Case("template-no-worker-or-master", "bad", spec(experiment=experiment(
        replicas={"ps": 1})), "spec.experiment.replicas"),
    Case("template-count-given-twice", "bad", spec(experiment=experiment(
        replicaSpecs={"worker": {"replicas": 3}})), "spec.experiment.replicas.worker"),
    Case("template-tensorboard-on-ephemeral", "bad", spec(experiment=experiment(
        tensorboard=True, storage={"ephemeral": True})), "spec.experiment.tensorboard"),
    Case("template-storage-size", "bad", spec(experiment=experiment(
        storage={"size": "lots"})), "spec.experiment.storage.size"),
    Case("template-unknown-field", "bad", spec(experiment=experiment(learningRate=1)),
         "spec.experiment.learningRate"),
    Case("template-hparam-of-200-kb", "bad", spec(experiment=experiment(
        hparams={"text": "x" * 200_000})), "spec.experiment.hparams.text"),
    Case("template-hparam-name", "bad", spec(experiment=experiment(
        hparams={"learning-rate": 0.1})), "spec.experiment.hparams.learning-rate",
         api_server=False),
    Case("trials-with-too-many-hparams", "bad", spec(
        experiment=experiment(hparams={f"h{i}": i for i in range(MAX_HPARAMS)}),
        parameters=[LR]), "spec.parameters", api_server=False),
]

VALID = [c for c in CASES if c.field is None]
INVALID = [c for c in CASES if c.field is not None]
