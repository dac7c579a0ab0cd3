"""Manifest validation for the local launcher, and its pure helpers."""

import copy
import json

import pytest
import yaml

from kubelearn.local import cluster_for, restart_wanted, task_env
from kubelearn.manifest import ManifestError, load_spec, parse

MINIMAL = yaml.safe_load("""
apiVersion: kubelearn.dev/v1alpha1
kind: Experiment
metadata:
  name: linear
spec:
  experimentFn: kubelearn.examples.linear:experiment_fn
  hparams:
    learning_rate: 0.05
    train_steps: 2000
  replicas:
    ps: 1
    worker: 2
    master: 1
""")


def _with(path, value):
    manifest = copy.deepcopy(MINIMAL)
    target = manifest
    keys = path.split(".")
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    if value is None:
        target.pop(keys[-1], None)
    else:
        target[keys[-1]] = value
    return manifest


def test_minimal_manifest_is_accepted():
    spec = parse(MINIMAL)
    assert spec.name == "linear" and spec.experiment_fn.endswith(":experiment_fn")
    assert {r: spec.replicas(r) for r in spec.roles} == {"ps": 1, "worker": 2, "master": 1}
    assert spec.chief_role() == ("master", 0)
    assert spec.hparams == {"learning_rate": 0.05, "train_steps": 2000}


def test_shipped_examples_are_valid():
    assert load_spec("examples/experiment.yaml").name == "linear"
    digits = load_spec("examples/digits.yaml")
    assert digits.roles["worker"].restart_policy == "ExitCode"
    assert digits.backoff_limit == 5


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("apiVersion", "v1", "apiVersion"),
        ("kind", "TFJob", "kind"),
        ("metadata.name", "Bad_Name", "metadata.name"),
        ("metadata.name", "x" * 60, "metadata.name"),
        ("spec.experimentFn", "no_colon", "spec.experimentFn"),
        ("spec.replicas.worker", -1, "spec.replicas.worker"),
        ("spec.replicas.worker", "two", "spec.replicas.worker"),
        ("spec.replicas.driver", 1, "spec.replicas.driver"),
        ("spec.replicas.chief", 1, "spec.replicas"),
        ("spec.replicas.master", 2, "spec.replicas.master"),
        ("spec.hparams", [1, 2], "spec.hparams"),
        ("spec.hparams.layers", {"a": 1}, "spec.hparams.layers"),
        ("spec.learningRate", 0.1, "spec.learningRate"),
        ("spec.successPolicy", "Any", "spec.successPolicy"),
        ("spec.runPolicy.backoffLimit", -3, "spec.runPolicy.backoffLimit"),
        ("spec.runPolicy.activeDeadlineSeconds", 0, "spec.runPolicy.activeDeadlineSeconds"),
    ],
)
def test_bad_fields_are_named(path, value, field):
    with pytest.raises(ManifestError) as info:
        parse(_with(path, value))
    assert str(info.value).startswith(field + ":") or field in str(info.value)


def test_needs_a_worker_or_master():
    manifest = _with("spec.replicas", {"ps": 1, "evaluator": 1})
    with pytest.raises(ManifestError, match="at least one worker or master"):
        parse(manifest)


def test_full_form_and_one_form_per_role():
    manifest = _with("spec.replicas", None)
    manifest["spec"]["replicaSpecs"] = {
        "worker": {"replicas": 3, "restartPolicy": "OnFailure", "template": {"spec": {}}},
        "ps": {"replicas": 1, "restartPolicy": "Bogus"}}
    with pytest.raises(ManifestError, match=r"spec.replicaSpecs.ps.restartPolicy"):
        parse(manifest)
    manifest["spec"]["replicaSpecs"]["ps"]["restartPolicy"] = "ExitCode"
    spec = parse(manifest)
    assert spec.roles["worker"].restart_policy == "OnFailure"
    assert spec.chief_role() == ("worker", 0)
    manifest["spec"]["replicas"] = {"worker": 1}
    with pytest.raises(ManifestError, match="use one form"):
        parse(manifest)


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_spec(str(bad))


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [("Never", 1, False), ("Never", 137, False), ("OnFailure", 0, False),
     ("OnFailure", 1, True), ("Always", 0, True), ("ExitCode", 1, False),
     ("ExitCode", 2, False), ("ExitCode", 127, False), ("ExitCode", 128, True),
     ("ExitCode", 137, True), ("ExitCode", 143, True)],
)
def test_restart_policies(policy, code, restart):
    assert restart_wanted(policy, code) is restart


def test_cluster_and_environment_of_a_replica():
    spec = parse(_with("spec.replicas.evaluator", 1))
    ports = iter(range(5000, 5100))
    cluster = cluster_for(spec, port=lambda: next(ports))
    assert cluster == {"ps": ["127.0.0.1:5000"], "worker": ["127.0.0.1:5001", "127.0.0.1:5002"],
                       "master": ["127.0.0.1:5003"]}  # the evaluator is not in the cluster
    env = task_env(spec, cluster, "worker", 1, "/m", "tok")
    tf_config = json.loads(env["TF_CONFIG"])
    assert tf_config["task"] == {"type": "worker", "index": 1}
    assert tf_config["environment"] == "cloud"
    assert json.loads(env["KUBELEARN_HPARAMS"]) == spec.hparams
    assert env["KUBELEARN_TOKEN"] == "tok" and env["KUBELEARN_MODEL_DIR"] == "/m"
