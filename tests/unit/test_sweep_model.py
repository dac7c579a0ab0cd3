"""The Sweep model: its CRD generated from it, the Experiment's spec reused as its template,
its defaults and the trials' Experiments it builds."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn_spec import crd, names, schema, sweep_schema
from kubelearn_spec.model import parse_manifest
from kubelearn_spec.sweep_model import Parameter, parse_sweep
from kubelearn_spec.validate import SpecError
from tests.sweep_cases import FULL, MINIMAL, OPTIMIZER, Case, with_params

ROOT_DIR = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT_DIR / "crds" / "sweeps.kubelearn.dev.yaml"


def _schema() -> dict:
    return crd.sweep_definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_the_crd_file_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd.render_sweep(), "run hack/generate-crd.sh"


def test_the_crd_names_and_columns() -> None:
    spec = crd.sweep_definition()["spec"]
    assert spec["group"] == "kubelearn.dev" and spec["scope"] == "Namespaced"
    assert spec["names"] == {"plural": "sweeps", "singular": "sweep", "kind": "Sweep",
                             "listKind": "SweepList", "shortNames": ["sweep"],
                             "categories": ["kubelearn"]}
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Trials", "Best", "Objective", "Age"]
    assert '"_' not in json.dumps(crd.sweep_definition())


def test_rules_name_their_field_relative_to_where_they_sit() -> None:
    root = _schema()
    item = root["properties"]["spec"]["properties"]["parameters"]["items"]
    assert {r.get("fieldPath") for r in item["x-kubernetes-validations"]} == {
        ".min", ".max", ".step", ".list", ".values", ".distribution", ".name"}
    # The template carries the Experiment's own rules, relative to it as in the Experiment.
    template = root["properties"]["spec"]["properties"]["experiment"]
    own = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert template["x-kubernetes-validations"] == \
        own["properties"]["spec"]["x-kubernetes-validations"]
    assert {k: v for k, v in template.items() if k != "description"} == \
        {k: v for k, v in own["properties"]["spec"].items() if k != "description"}


def test_the_template_is_the_experiment_spec_itself() -> None:
    template = sweep_schema.SPEC["properties"]["experiment"]
    assert template["properties"] is schema.SPEC["properties"]
    assert template["_rules"] is schema.SPEC["_rules"]


def test_defaults_and_trials() -> None:
    sweep = parse_sweep(Case("t", "lr", FULL).manifest())
    manifest = sweep.trial_manifest(4, {"learning_rate": 0.01, "batch_size": 32})
    assert manifest["metadata"] == {
        "name": "lr-4", "namespace": "default",
        "labels": {names.LABEL_SWEEP: "lr", names.LABEL_TRIAL: "4"}}
    assert manifest["spec"]["hparams"] == {"learning_rate": 0.01, "train_steps": 2000,
                                           "optimizer": "SGD", "batch_size": 32}
    assert sweep.experiment["hparams"]["learning_rate"] == 0.05  # the template is untouched
    assert parse_manifest(manifest).name == "lr-4"  # a valid Experiment
    assert sweep.parameter("batch_size").values == (16, 32, 64)


def test_minimal_template_without_hparams() -> None:
    spec = {**MINIMAL, "experiment": {"experimentFn": "a:b", "replicas": {"worker": 1}}}
    sweep = parse_sweep(Case("t", "lr", spec).manifest())
    assert sweep.trial_spec({"learning_rate": 0.1})["hparams"] == {"learning_rate": 0.1}


def test_grids() -> None:
    assert Parameter("x", "double", 0.0, 1.0, 0.1).grid()[-3:] == (0.8, 0.9, 1.0)
    assert Parameter("x", "double", 0.0, 1.0, 0.3).grid() == (0.0, 0.3, 0.6, 0.9)
    assert Parameter("x", "int", 1, 10, 4).grid() == (1, 5, 9)
    assert Parameter("x", "int", 1, 3).grid() == (1, 2, 3)
    assert Parameter("x", "categorical", values=("a", "b")).grid() == ("a", "b")
    assert not Parameter("x", "double", 0.0, 1.0).finite


def test_a_grid_is_counted_and_indexed_never_made() -> None:
    """A trillion values (past the model's bound, which the search does not rely on): the
    size is counted and a point made alone, with no list of values."""
    wide = Parameter("n", "int", 0, 10**12)
    assert wide.grid_size == 10**12 + 1 and wide.grid_value(10**12) == 10**12
    fine = Parameter("x", "double", 0.0, 1.0, 1e-12)
    assert fine.grid_size == 10**12 + 1 and fine.grid_value(3 * 10**11) == 0.3
    with pytest.raises(IndexError):
        wide.grid_value(10**12 + 1)
    spec = dataclasses.replace(parse_sweep(Case("g", "g", with_params(
        OPTIMIZER, algorithm="grid")).manifest()), max_trials=1000,
        parameters=(wide, parse_sweep(Case("g", "g", with_params(OPTIMIZER)).manifest())
                    .parameters[0], fine))
    assert spec.grid_size == (10**12 + 1) ** 2 * 2
    assert spec.grid_point(spec.grid_size - 1) == {"n": 10**12, "optimizer": "Adam", "x": 1.0}
    assert spec.grid_point(10**12 + 2) == {"n": 0, "optimizer": "Adam", "x": 1e-12}
    from kubelearn_search import Search  # the search, every poll: no list either

    search = Search(spec, seed=3)
    assert search.suggest(999, []).keys() == {"n", "optimizer", "x"}
    assert search.stop_reason([]) is None


small_parameters = st.lists(st.one_of(
    st.builds(lambda low, width, step: Parameter("i", "int", low, low + width, step),
              st.integers(-50, 50), st.integers(0, 30), st.none() | st.integers(1, 7)),
    st.builds(lambda low, steps, step: Parameter("d", "double", low, low + steps * step, step),
              st.sampled_from([0.0, -1.5, 0.1]), st.integers(0, 12),
              st.sampled_from([0.1, 0.25, 0.3, 1.0])),
    st.builds(lambda n: Parameter("c", "categorical", values=tuple("abcdefgh"[:n])),
              st.integers(1, 8))), min_size=1, max_size=3)


@given(parameters=small_parameters)
def test_grid_points_are_the_product_in_order(parameters: list[Parameter]) -> None:
    named = [dataclasses.replace(p, name=f"p{i}") for i, p in enumerate(parameters)]
    spec = dataclasses.replace(parse_sweep(Case("g", "g", MINIMAL).manifest()),
                               parameters=tuple(named))
    every = list(itertools.product(*(p.grid() for p in named)))
    assert spec.grid_size == len(every)
    assert [tuple(spec.grid_point(i).values()) for i in range(len(every))] == every
    for p in named:
        assert p.grid() == tuple(p.grid_value(k) for k in range(p.grid_size))
    # The count the API server checks (in doubles): exact but at a double's last step,
    # which the grid counts in decimal.
    manifest = [{"name": p.name, "type": p.type, **(
        {"list": list(p.values)} if p.values else
        {"min": p.min, "max": p.max, **({"step": p.step} if p.step else {})})} for p in named]
    counts = [sweep_schema.grid_values(p) for p in manifest]
    for parameter, counted in zip(named, counts, strict=True):
        assert abs(counted - parameter.grid_size) <= (parameter.type == "double")
    assert sweep_schema.grid_points({"parameters": manifest}) == math.prod(counts)


@pytest.mark.parametrize(("changes", "field", "needle"), [
    ({"min": float("-inf")}, "min", "finite"),
    ({"max": float("inf")}, "max", "finite"),
    ({"max": float("nan")}, "max", "finite"),
    ({"max": 10**400}, "max", "finite"),
    ({"min": -1e308}, "min", ">="),
    ({"max": 1e308}, "max", "<="),
    ({"step": 1e-300}, "step", "too small"),
])
def test_bounds_a_double_cannot_work_with_are_refused(changes: dict, field: str,
                                                       needle: str) -> None:
    parameter = {"name": "momentum", "type": "double", "min": 0, "max": 1, **changes}
    with pytest.raises(SpecError) as raised:
        parse_sweep(Case("b", "b", with_params(parameter)).manifest())
    assert raised.value.path == f"spec.parameters[0].{field}"
    assert needle in str(raised.value)
