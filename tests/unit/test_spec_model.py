"""The Experiment model: the CRD generated from it, its defaults, names and policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubelearn_operator.experiment_plan import parse_spec
from kubelearn_spec import crd, names, policy
from kubelearn_spec.model import parse_manifest
from kubelearn_spec.schema import ROOT
from kubelearn_spec.validate import prune
from tests.experiment_cases import MINIMAL, Case

ROOT_DIR = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT_DIR / "crds" / "experiments.kubelearn.dev.yaml"
CHART_CRD = ROOT_DIR / "charts" / "kubelearn" / "crds" / "experiments.kubelearn.dev.yaml"


def test_the_crd_file_is_the_generated_one() -> None:
    assert CRD_FILE.read_text() == crd.render(), "run hack/generate-crd.sh"
    assert CHART_CRD.read_bytes() == CRD_FILE.read_bytes()


def test_the_crd_holds_no_key_of_the_model_alone() -> None:
    text = json.dumps(crd.definition())
    assert '"_' not in text


def test_every_rule_names_its_field_for_the_server() -> None:
    schema = crd.definition()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    name_rules = schema["x-kubernetes-validations"]
    assert {r["fieldPath"] for r in name_rules} == {".metadata.name", ".spec.replicas.worker"}
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert {r["fieldPath"] for r in spec_rules} == {
        ".replicas", ".tensorboard", ".storage", ".storage.secretName", ".experimentFn",
        *(f".replicas.{role}" for role in names.ROLES)}


def test_yaml_scalars_that_would_change_meaning_are_quoted() -> None:
    text = crd.to_yaml({"a": "yes", "b": "1", "c": "x: y", "d": "", "e": "it's", "f": "plain"})
    assert yaml.safe_load(text) == {"a": "yes", "b": "1", "c": "x: y", "d": "", "e": "it's",
                                    "f": "plain"}
    assert "f: plain\n" in text


def test_the_operator_adds_its_own_defaults_only() -> None:
    spec = parse_spec(MINIMAL, name="linear", namespace="ml", default_image="runner:1")
    assert spec.image == "runner:1" and spec.model_dir == "/tmp/kubelearn/ml/linear"
    local = parse_manifest(Case("minimal", "linear", MINIMAL).manifest())
    assert local.image is None and local.model_dir is None
    mine = parse_spec({**MINIMAL, "image": "mine:2", "modelDir": "/m"}, name="linear",
                      namespace="ml", default_image="runner:1")
    assert (mine.image, mine.model_dir) == ("mine:2", "/m")


def test_spec_helpers() -> None:
    spec = parse_spec(MINIMAL, name="linear", namespace="ml", default_image="img")
    assert spec.total_replicas == 4 and spec.leader_role == "master"
    assert spec.replica_keys() == [("master", 0), ("ps", 0), ("worker", 0), ("worker", 1)]
    assert spec.run_policy.clean_pod_policy == "Running"


def test_nulls_are_pruned_where_the_schema_declares_the_field() -> None:
    # A null hyper-parameter too, as the API server prunes it; a null in a list is kept.
    assert prune(ROOT, {"spec": {"image": None, "hparams": {"a": None, "b": [None, 1]}}}) \
        == {"spec": {"hparams": {"b": [None, 1]}}}


def test_max_name_length_depends_on_roles_and_counts() -> None:
    assert names.max_name_length({"master": 1}) == 63 - len("-master-0")
    assert names.max_name_length({"worker": 1000}) == 63 - len("-worker-999")
    assert names.max_name_length({"evaluator": 1, "worker": 2}) == 63 - len("-evaluator-0")
    assert names.max_name_length({}) == 63


@pytest.mark.parametrize(
    ("restart_policy", "code", "restart"),
    [("Never", 1, False), ("Never", 137, False), ("Never", None, False),
     ("OnFailure", 1, True), ("OnFailure", None, True), ("Always", 1, True),
     ("ExitCode", 1, False), ("ExitCode", 2, False), ("ExitCode", 127, False),
     ("ExitCode", 128, True), ("ExitCode", 137, True), ("ExitCode", 143, True),
     ("ExitCode", None, True), ("ExitCode", 0, True)],
)
def test_a_failed_replica_is_retried_per_its_policy(restart_policy, code, restart) -> None:
    assert policy.retries_failure(restart_policy, code) is restart


@pytest.mark.parametrize(
    ("restart_policy", "code", "restart"),
    [("Never", 0, False), ("OnFailure", 0, False), ("ExitCode", 0, False), ("Always", 0, True),
     ("OnFailure", 1, True), ("ExitCode", 1, False), ("ExitCode", 137, True)],
)
def test_an_exited_process_is_restarted_per_its_policy(restart_policy, code, restart) -> None:
    assert policy.restarts_after_exit(restart_policy, code) is restart


def test_pod_restart_policy_leaves_exit_code_to_the_operator() -> None:
    assert [policy.pod_restart_policy(p) for p in ("Never", "OnFailure", "Always", "ExitCode")] \
        == ["Never", "OnFailure", "Always", "Never"]


def test_backoff_and_deadline() -> None:
    assert not policy.backoff_exceeded(6, 6) and policy.backoff_exceeded(7, 6)
    assert policy.backoff_exceeded(1, 0)
    assert not policy.deadline_passed(100.0, 159.0, 60)
    assert policy.deadline_passed(100.0, 160.0, 60)
    assert not policy.deadline_passed(0.0, 1e9, None)


@pytest.mark.parametrize(("replicas", "success_policy", "done", "succeeded"), [
    ({"master": 1, "worker": 2}, "default", {("master", 0)}, True),
    ({"master": 1, "worker": 2}, "AllWorkers", {("worker", 0), ("worker", 1)}, False),
    ({"worker": 2}, "default", {("worker", 0)}, True),
    ({"worker": 2}, "AllWorkers", {("worker", 0)}, False),
    ({"worker": 2}, "AllWorkers", {("worker", 0), ("worker", 1)}, True),
    ({"chief": 1, "evaluator": 1}, "default", {("evaluator", 0)}, False),
])
def test_success_policy(replicas, success_policy, done, succeeded) -> None:
    spec = parse_spec({"experimentFn": "m:f", "replicas": replicas,
                       "successPolicy": success_policy}, name="e", namespace="n",
                      default_image="i")
    assert policy.succeeded(spec, lambda role, index: (role, index) in done) is succeeded
    assert policy.decides_outcome("worker") and not policy.decides_outcome("evaluator")
