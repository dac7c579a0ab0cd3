"""The CRD at the API server: the minimal example accepted as is, invalid ones rejected with
a message naming the field (the same table the operator's own validation is tested with)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.helpers import apply_yaml
from tests.operator_stack import EXAMPLE
from tests.unit.test_operator_spec import INVALID_CASES

from .conftest import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

def test_the_example_is_accepted_as_is(kube_api: client.ApiClient, experiment_crd,
                                           namespace: str) -> None:
    (stored,) = apply_yaml(kube_api, EXAMPLE, namespace)
    assert stored["spec"] == {
        "experimentFn": "kubelearn.examples.linear:experiment_fn",
        "hparams": {"learning_rate": 0.05, "train_steps": 2000},
        "replicas": {"ps": 1, "worker": 2, "master": 1}}


def test_full_form_is_accepted(kube_api: client.ApiClient, experiment_crd,
                               namespace: str) -> None:
    spec = {
        "experimentFn": "pkg.mod:fn", "image": "runner:2", "modelDir": "/m",
        "replicaSpecs": {
            "chief": {"restartPolicy": "ExitCode"},
            "ps": {"replicas": 2, "restartPolicy": "Always"},
            "worker": {"replicas": 4, "restartPolicy": "OnFailure", "template": {
                "metadata": {"labels": {"team": "a"}},
                "spec": {"containers": [{"name": "kubelearn", "resources": {
                    "limits": {"cpu": "2"}}}]}}},
            "evaluator": {"replicas": 1, "restartPolicy": "Never"},
        },
        "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": 3, "activeDeadlineSeconds": 600,
                      "ttlSecondsAfterFinished": 60, "suspend": True,
                      "schedulingPolicy": {"minAvailable": 7, "queue": "q",
                                           "priorityClass": "high"}},
        "successPolicy": "AllWorkers",
    }
    stored = _create(kube_api, namespace, "full", spec)
    assert stored["spec"] == spec  # nothing pruned


def _create(api: client.ApiClient, namespace: str, name: str, spec: dict[str, Any],
            dry_run: str | None = None) -> dict[str, Any]:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Experiment",
            "metadata": {"name": name}, "spec": spec}
    kwargs = {"dry_run": dry_run} if dry_run else {}
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, **kwargs)


@pytest.mark.parametrize(("name", "spec", "match"), [c[1:] for c in INVALID_CASES],
                         ids=[c[0] for c in INVALID_CASES])
def test_invalid_experiments_are_rejected_by_the_server(
        kube_api: client.ApiClient, experiment_crd, namespace: str, name: str,
        spec: dict[str, Any], match: str) -> None:
    with pytest.raises(client.ApiException) as raised:
        _create(kube_api, namespace, name, spec, dry_run="All")
    assert raised.value.status == 422
    assert re.search(match, raised.value.body), raised.value.body


def test_longest_name_that_fits_is_accepted(kube_api: client.ApiClient, experiment_crd,
                                            namespace: str) -> None:
    # 51 + len("-worker-999") == 62, and 54 + len("-master-0") == 63
    _create(kube_api, namespace, "w" * 51, {"experimentFn": "m:f", "replicas": {"worker": 1000}},
            dry_run="All")
    _create(kube_api, namespace, "m" * 54, {"experimentFn": "m:f", "replicas": {"master": 1}},
            dry_run="All")
    with pytest.raises(client.ApiException, match="too long"):
        _create(kube_api, namespace, "w" * 53,
                {"experimentFn": "m:f", "replicas": {"worker": 1000}}, dry_run="All")
