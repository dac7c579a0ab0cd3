"""TF_CONFIG with its cluster in a file (``kubelearn local`` above 64 replicas): the replica's
environment names the file, and ``kubelearn run`` puts the cluster back into TF_CONFIG before
anything reads it, refusing a file that is not a cluster with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn.local import task_env
from kubelearn.manifest import parse
from kubelearn.run_cli import BadInput, expand_cluster_file
from kubelearn_spec import contract
from kubelearn_spec.tfconfig import tf_config_task, with_cluster
from tests import experiment_cases
from tests.experiment_cases import Case

CLUSTER = {"ps": ["127.0.0.1:5000"], "worker": ["127.0.0.1:5001", "127.0.0.1:5002"]}


def test_a_replica_given_the_file_has_only_its_task_in_tf_config() -> None:
    spec = parse(Case("minimal", "linear", experiment_cases.MINIMAL).manifest())
    env = task_env(spec, CLUSTER, "worker", 1, "/m", "tok", cluster_file="/run/cluster-0.json")
    assert json.loads(env["TF_CONFIG"]) == {"task": {"type": "worker", "index": 1},
                                            "environment": "cloud"}
    assert env[contract.ENV_CLUSTER_FILE] == "/run/cluster-0.json"
    assert contract.ENV_CLUSTER_FILE not in task_env(spec, CLUSTER, "worker", 1, "/m", "tok")


def test_run_puts_the_files_cluster_into_tf_config(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(CLUSTER))
    environ = {"TF_CONFIG": tf_config_task("worker", 1), contract.ENV_CLUSTER_FILE: str(path)}
    expand_cluster_file(environ)
    assert json.loads(environ["TF_CONFIG"]) == {
        "cluster": CLUSTER, "task": {"type": "worker", "index": 1}, "environment": "cloud"}
    assert contract.ENV_CLUSTER_FILE not in environ  # what it starts sees TF_CONFIG alone
    untouched = {"TF_CONFIG": "{}"}
    expand_cluster_file(untouched)
    assert untouched == {"TF_CONFIG": "{}"}


@pytest.mark.parametrize(("content", "tf_config", "needle"), [
    (None, tf_config_task("ps", 0), "no such file"),
    ("[1, 2]", tf_config_task("ps", 0), "must hold a JSON object"),
    ('{"ps": [', tf_config_task("ps", 0), "not valid JSON"),
    ("[" * 100 + "]" * 100, tf_config_task("ps", 0), "nested deeper"),
    (json.dumps(CLUSTER), json.dumps({"cluster": CLUSTER}), "give one"),
    (json.dumps(CLUSTER), "[" * 100 + "]" * 100, "nested deeper"),
    (json.dumps(CLUSTER), "[]", "TF_CONFIG must be a JSON object"),
])
def test_a_bad_cluster_file_is_bad_input_naming_the_variable(
        tmp_path: Path, content: str | None, tf_config: str, needle: str) -> None:
    path = tmp_path / "cluster.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInput, match=f"^bad {contract.ENV_CLUSTER_FILE}: .*{needle}"):
        expand_cluster_file({"TF_CONFIG": tf_config, contract.ENV_CLUSTER_FILE: str(path)})


SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(SCALARS,
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10)


@given(tf_config=st.one_of(st.text(), JSON.map(json.dumps)),
       cluster=st.one_of(st.text(), JSON.map(json.dumps)))
def test_with_cluster_takes_any_text_and_gives_json_or_a_value_error(tf_config: str,
                                                                     cluster: str) -> None:
    try:
        merged = json.loads(with_cluster(tf_config, cluster))
    except ValueError:
        return
    assert merged["cluster"] == json.loads(cluster)
    assert {k: v for k, v in merged.items() if k != "cluster"} == json.loads(tf_config or "{}")


@given(data=st.binary(max_size=200))
def test_any_bytes_in_the_file_are_bad_input_or_a_cluster(tmp_path_factory: pytest.TempPathFactory,
                                                          data: bytes) -> None:
    path = tmp_path_factory.mktemp("cluster") / "cluster.json"
    path.write_bytes(data)
    environ = {"TF_CONFIG": tf_config_task("worker", 0), contract.ENV_CLUSTER_FILE: str(path)}
    try:
        expand_cluster_file(environ)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    assert json.loads(environ["TF_CONFIG"])["cluster"] == json.loads(data)
