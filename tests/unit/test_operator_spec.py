"""Spec defaults and validation (the same rules the CRD's CEL enforces at the server)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubelearn_operator.spec import SpecError, max_name_length, parse_spec

MINIMAL: dict[str, Any] = {
    "experimentFn": "kubelearn.examples.linear:experiment_fn",
    "hparams": {"learning_rate": 0.05, "train_steps": 2000},
    "replicas": {"ps": 1, "worker": 2, "master": 1},
}


def with_spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


# (id, experiment name, spec, regex the error must match); shared with the server-side test.
INVALID_CASES = [
    ("negative-replicas", "neg", with_spec(replicas={"worker": -1, "master": 1}),
     r"spec\.replicas\.worker"),
    ("two-masters", "twomasters", with_spec(replicas={"worker": 1, "master": 2}),
     r"spec\.replicas\.master .*at most one master"),
    ("two-chiefs", "twochiefs", with_spec(replicas=None, replicaSpecs={
        "worker": {"replicas": 1}, "chief": {"replicas": 2}}), r"at most one chief"),
    ("master-and-chief", "both", with_spec(replicas={"worker": 1, "master": 1, "chief": 1}),
     r"master and chief are exclusive"),
    ("no-worker-or-master", "nobody", with_spec(replicas={"ps": 2}),
     r"at least one worker or master"),
    ("experiment-fn-form", "badfn", with_spec(experimentFn="kubelearn.examples.linear"),
     r"spec\.experimentFn must be of the form module:function"),
    ("unknown-role", "badrole", with_spec(replicas={"Worker": 1}),
     r"spec\.replicas keys must be roles"),
    ("count-given-twice", "twice", with_spec(replicaSpecs={"worker": {"replicas": 3}}),
     r"spec\.replicas\.worker and spec\.replicaSpecs\.worker\.replicas are both set"),
    ("name-too-long", "a" * 55, with_spec(), r"metadata\.name is too long"),
    ("name-not-dns-label", "lin.ear", with_spec(), r"metadata\.name must be a DNS-1035 label"),
    ("restart-policy", "badpolicy", with_spec(replicas=None, replicaSpecs={
        "worker": {"restartPolicy": "Sometimes"}}), r"spec\.replicaSpecs\.worker\.restartPolicy"),
]


@pytest.mark.parametrize(("name", "spec", "match"), [c[1:] for c in INVALID_CASES],
                         ids=[c[0] for c in INVALID_CASES])
def test_invalid_specs_name_the_field(name: str, spec: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_spec(spec, name=name, namespace="ns", default_image="img")


def test_minimal_form_gets_defaults() -> None:
    spec = parse_spec(MINIMAL, name="linear", namespace="ml", default_image="runner:1")
    assert spec.image == "runner:1"
    assert spec.model_dir == "/tmp/kubelearn/ml/linear"
    assert {r: s.replicas for r, s in spec.replicas.items()} == {"master": 1, "ps": 1, "worker": 2}
    assert all(s.restart_policy == "ExitCode" for s in spec.replicas.values())
    assert spec.run_policy.clean_pod_policy == "Running"
    assert spec.run_policy.backoff_limit == 6
    assert spec.leader_role == "master"
    assert spec.total_replicas == 4
    assert spec.replica_keys() == [("master", 0), ("ps", 0), ("worker", 0), ("worker", 1)]


def test_full_form() -> None:
    spec = parse_spec({
        "experimentFn": "pkg.mod:fn", "image": "mine:2", "modelDir": "/models/x",
        "replicaSpecs": {
            "chief": {},
            "worker": {"replicas": 3, "restartPolicy": "OnFailure",
                       "template": {"spec": {"containers": [{"name": "kubelearn"}]}}},
            "evaluator": {"replicas": 1, "restartPolicy": "Never"},
        },
        "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": 2, "activeDeadlineSeconds": 60,
                      "ttlSecondsAfterFinished": 5, "suspend": True,
                      "schedulingPolicy": {"minAvailable": 3, "queue": "q",
                                           "priorityClass": "high"}},
        "successPolicy": "AllWorkers",
    }, name="full", namespace="ns", default_image="img")
    assert spec.count("chief") == 1 and spec.count("worker") == 3
    assert spec.replicas["worker"].restart_policy == "OnFailure"
    assert spec.image == "mine:2" and spec.model_dir == "/models/x"
    rp = spec.run_policy
    assert (rp.clean_pod_policy, rp.backoff_limit, rp.active_deadline_seconds,
            rp.ttl_seconds_after_finished, rp.suspend) == ("All", 2, 60, 5, True)
    assert rp.scheduling is not None and rp.scheduling.min_available == 3
    assert spec.success_policy == "AllWorkers"
    assert spec.leader_role == "chief"


def test_max_name_length_depends_on_roles_and_counts() -> None:
    assert max_name_length({"master": 1}) == 63 - len("-master-0")
    assert max_name_length({"worker": 1000}) == 63 - len("-worker-999")
    assert max_name_length({"evaluator": 1, "worker": 2}) == 63 - len("-evaluator-0")
