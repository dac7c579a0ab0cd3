"""Killing the operator while it creates an experiment's objects, then starting it again,
leaves exactly the right objects: nothing missing, nothing duplicated or recreated."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.cluster.helpers import wait_for

from .conftest import Experiments, pod_uids

pytestmark = pytest.mark.cluster

REPLICAS = 60
# Slow enough (about 10 objects a second) that a kill lands in the middle of creation.
SLOW = {"KUBELEARN_API_QPS": "10", "KUBELEARN_API_BURST": "1",
        "KUBELEARN_CREATE_CONCURRENCY": "4"}


def test_operator_killed_mid_creation_converges_to_exactly_the_right_objects(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    names = {f"big-worker-{i}" for i in range(REPLICAS)} | {"big-ps-0"}
    op = start_operator(namespace, env=SLOW)
    experiments.create("big", {"experimentFn": "m:f", "replicas": {"ps": 1, "worker": REPLICAS}})
    wait_for(lambda: len(experiments.pods("big")) >= 3, 30, "the first pods")
    op.kill()
    early = pod_uids(experiments.pods("big"))
    assert 3 <= len(early) < len(names), "the kill must land mid-creation"
    secret = client.CoreV1Api(kube_api).read_namespaced_secret("big-kubelearn-token", namespace)

    op = start_operator(namespace, env=SLOW)
    wait_for(lambda: len(experiments.pods("big")) >= len(early) + 10, 30, "more pods")
    op.kill()
    middle = pod_uids(experiments.pods("big"))
    assert len(middle) < len(names), "the second kill must land mid-creation too"

    start_operator(namespace)  # full speed
    final = experiments.wait_pods("big", names, timeout=60)
    wait_for(lambda: set(experiments.services("big")) == names, 60, "every service")
    uids = pod_uids(final)
    # Pods made before each kill are the same objects: none was deleted and recreated.
    assert {n: uids[n] for n in middle} == middle
    assert {n: uids[n] for n in early} == early
    # One token Secret, the first one, which every pod refers to.
    again = client.CoreV1Api(kube_api).read_namespaced_secret("big-kubelearn-token", namespace)
    assert again.metadata.uid == secret.metadata.uid and again.data == secret.data
    secrets = client.CoreV1Api(kube_api).list_namespaced_secret(
        namespace, label_selector="kubelearn.dev/experiment=big").items
    assert len(secrets) == 1
    status = wait_for(lambda: (s := experiments.status("big"))["replicas"] == f"{len(names)}/"
                      f"{len(names)}" and s, 30, "status counting every pod")
    assert status["phase"] == "Created"
    created = [c for c in status["conditions"] if c["type"] == "Created"]
    assert len(created) == 1
