"""The Sweep model: its CRD generated from it, the Experiment's spec reused as its template,
its defaults and the trials' Experiments it builds."""

from __future__ import annotations

import json
from pathlib import Path

from kubelearn_spec import crd, names, schema, sweep_schema
from kubelearn_spec.model import parse_manifest
from kubelearn_spec.sweep_model import Parameter, parse_sweep
from tests.sweep_cases import FULL, MINIMAL, Case

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
        ".min", ".max", ".step", ".list", ".values", ".distribution"}
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
