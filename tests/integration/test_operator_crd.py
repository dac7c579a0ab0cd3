"""The CRD at the API server: the minimal example, applied as a user would, is stored as is.

Valid and invalid manifests, field by field, are the case table's
(tests/integration/test_experiment_cases.py)."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.cluster.helpers import apply_yaml
from tests.operator_stack import EXAMPLE

pytestmark = pytest.mark.cluster


def test_the_example_is_accepted_as_is(kube_api: client.ApiClient, experiment_crd,
                                       namespace: str) -> None:
    (stored,) = apply_yaml(kube_api, EXAMPLE, namespace)
    assert stored["spec"] == {
        "experimentFn": "kubelearn.examples.linear:experiment_fn",
        "hparams": {"learning_rate": 0.05, "train_steps": 2000},
        "replicas": {"ps": 1, "worker": 2, "master": 1}}
