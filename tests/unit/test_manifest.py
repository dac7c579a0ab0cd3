"""The manifest file as ``kubelearn local`` reads it, and the launcher's pure helpers.

Field by field validation is the case table's (tests/unit/test_experiment_cases.py).
"""

import io
import json

import pytest
import yaml

from kubelearn.local import Console, Launcher, cluster_for, task_env
from kubelearn.manifest import ManifestError, load_spec, own_commands, parse
from kubelearn_spec.validate import SpecError
from tests import experiment_cases
from tests.experiment_cases import Case

MINIMAL = Case("minimal", "linear", experiment_cases.MINIMAL).manifest()


def test_minimal_manifest_is_accepted():
    spec = parse(MINIMAL)
    assert spec.name == "linear" and spec.namespace == "default"
    assert spec.counts() == {"ps": 1, "worker": 2, "master": 1}
    assert spec.leader_role == "master"
    assert spec.hparams == {"learning_rate": 0.05, "train_steps": 2000}


def test_shipped_examples_are_valid():
    assert load_spec("examples/experiment.yaml").name == "linear"
    digits = load_spec("examples/digits.yaml")
    assert digits.replicas["worker"].restart_policy == "ExitCode"
    assert digits.run_policy.backoff_limit == 5


@pytest.mark.parametrize(("change", "field"), [
    ({"apiVersion": "v1"}, "apiVersion"),
    ({"kind": "TFJob"}, "kind"),
    ({"metadata": "linear"}, "metadata"),
    ({"metadata": {"namespace": "ml"}}, "metadata.name"),
    ({"spec": None}, "spec"),
])
def test_the_object_around_the_spec_is_checked(change, field):
    manifest = {**MINIMAL, **change}
    if manifest["spec"] is None:
        del manifest["spec"]
    with pytest.raises(SpecError) as raised:
        parse(manifest)
    assert raised.value.path == field


def test_load_spec_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        load_spec(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_spec(str(bad))
    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([MINIMAL, MINIMAL]))
    with pytest.raises(ManifestError, match="exactly one Experiment, found 2"):
        load_spec(str(two))
    with_service = tmp_path / "with-service.yaml"
    with_service.write_text(yaml.safe_dump_all([{"kind": "Service"}, MINIMAL]))
    assert load_spec(str(with_service)).name == "linear"


def test_cluster_and_environment_of_a_replica():
    spec = parse({**MINIMAL, "spec": {**MINIMAL["spec"], "replicas": {
        "ps": 1, "worker": 2, "master": 1, "evaluator": 1}}})
    ports = iter(range(5000, 5100))
    cluster = cluster_for(spec, port=lambda: next(ports))
    assert cluster == {"master": ["127.0.0.1:5000"], "ps": ["127.0.0.1:5001"],
                       "worker": ["127.0.0.1:5002", "127.0.0.1:5003"]}  # no evaluator
    env = task_env(spec, cluster, "worker", 1, "/m", "tok")
    tf_config = json.loads(env["TF_CONFIG"])
    assert tf_config["task"] == {"type": "worker", "index": 1}
    assert tf_config["environment"] == "cloud"
    assert json.loads(env["KUBELEARN_HPARAMS"]) == spec.hparams
    assert env["KUBELEARN_TOKEN"] == "tok" and env["KUBELEARN_MODEL_DIR"] == "/m"
    assert env["KUBELEARN_EXPERIMENT"] == "linear"


def test_replicas_run_the_schedule_of_the_spec():
    spec = parse({**MINIMAL, "spec": {**MINIMAL["spec"], "schedule": "train"}})
    launcher = Launcher(spec, "/m", Console(io.StringIO(), progress_tty=False), python="py")
    assert launcher.command() == ["py", "-m", "kubelearn.cli", "run", "--experiment-fn",
                                  "kubelearn.examples.linear:experiment_fn", "--schedule", "train"]
    assert {r.policy for r in launcher.replicas} == {"ExitCode"}  # the cluster's default


def test_without_an_experiment_fn_each_role_runs_its_main_container_command():
    containers = [{"name": "proxy", "command": ["proxy"]},
                  {"name": "tensorflow", "image": "tf:2", "command": ["python", "train.py"],
                   "args": ["--epochs", "3"]}]
    spec = parse({**MINIMAL, "spec": {"replicaSpecs": {
        "worker": {"template": {"spec": {"containers": containers}}},
        "ps": {"replicas": 0}}}})
    assert own_commands(spec) == {"worker": ["python", "train.py", "--epochs", "3"]}
    launcher = Launcher(spec, "/m", Console(io.StringIO(), progress_tty=False), python="py")
    assert launcher.command("worker") == ["python", "train.py", "--epochs", "3"]
