"""Gang scheduling: a PodGroup when scheduler-plugins' CRD is installed, a status message and
unchanged scheduling when it is not."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.cluster.helpers import wait_for

from .conftest import Experiments

pytestmark = pytest.mark.cluster

NAMES = {"ps-0", "worker-0", "worker-1"}


def gang(priority_class: str) -> dict:
    return {"experimentFn": "m:f", "replicas": {"ps": 1, "worker": 2},
            "runPolicy": {"schedulingPolicy": {"minAvailable": 3, "queue": "research",
                                               "priorityClass": priority_class}}}


def test_pods_rejected_by_admission_are_reported_on_the_experiment(
        experiments: Experiments, namespace: str, start_operator) -> None:
    start_operator(namespace)
    experiments.create("nopc", gang(f"{namespace}-missing"))
    event = wait_for(lambda: next((e for e in experiments.events("nopc")
                                   if e.reason == "FailedCreatePod"), None), 20,
                     "a FailedCreatePod warning")
    assert event.type == "Warning" and "PriorityClass" in event.message


def test_gang_scheduling_with_and_without_the_podgroup_crd(
        experiments: Experiments, namespace: str, start_operator, podgroup_crd,
        kube_api: client.ApiClient) -> None:
    scheduling = client.SchedulingV1Api(kube_api)
    priority = f"{namespace}-high"
    scheduling.create_priority_class(client.V1PriorityClass(
        metadata=client.V1ObjectMeta(name=priority), value=1000))
    start_operator(namespace, env={"KUBELEARN_PODGROUP_CHECK_SECONDS": "1"})

    experiments.create("plain", gang(priority))
    pods = experiments.wait_pods("plain", {f"plain-{n}" for n in NAMES})
    wait_for(lambda: "not installed" in experiments.status("plain").get("podGroup", {})
             .get("message", ""), 20, "status saying the PodGroup CRD is missing")
    assert all(p.spec.scheduler_name == "default-scheduler" for p in pods.values())
    assert all(p.spec.priority_class_name == priority for p in pods.values())
    wait_for(lambda: "PodGroupUnavailable" in experiments.event_reasons("plain"), 10,
             "a PodGroupUnavailable warning")

    podgroup_crd()
    try:
        # The operator notices the new API on its own (the first experiment gets its group).
        wait_for(lambda: experiments.status("plain").get("podGroup", {}).get("name") == "plain",
                 30, "the operator to see the PodGroup API")
        experiments.create("gang", gang(priority))
        group = wait_for(lambda: client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            "scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", "gang"), 30,
            "the PodGroup")
        assert group["spec"]["minMember"] == 3
        assert group["metadata"]["ownerReferences"][0]["name"] == "gang"
        assert group["metadata"]["labels"]["kubelearn.dev/queue"] == "research"
        pods = experiments.wait_pods("gang", {f"gang-{n}" for n in NAMES})
        for pod in pods.values():
            assert pod.spec.scheduler_name == "scheduler-plugins-scheduler"
            assert pod.metadata.labels["scheduling.x-k8s.io/pod-group"] == "gang"
        wait_for(lambda: experiments.status("gang").get("podGroup", {}).get("name") == "gang",
                 20, "status naming the PodGroup")
    finally:
        scheduling.delete_priority_class(priority)
