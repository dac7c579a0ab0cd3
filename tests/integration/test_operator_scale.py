"""``kubectl scale exp/NAME`` on the real API server: the CRD's scale subresource sets the worker
count whichever form the spec uses, the operator adds and removes the highest-index workers
without touching the other pods, and the server refuses what the model refuses (a count given
twice in a manifest, the full form's count changed after a scale, a finished Experiment)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests.cluster.helpers import wait_for
from tests.experiment_cases import MINIMAL
from tests.integration.conftest import Experiments, pod_uids

pytestmark = pytest.mark.cluster

FULL = {"experimentFn": MINIMAL["experimentFn"], "hparams": MINIMAL["hparams"],
        "replicaSpecs": {"ps": {"replicas": 1}, "worker": {"replicas": 2},
                         "master": {"replicas": 1}}}


def kubectl(control_plane: Any, namespace: str, *args: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*control_plane.kubectl, "-n", namespace, *args], capture_output=True,
                         text=True, timeout=60)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def scale_of(control_plane: Any, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kubectl(control_plane, namespace, "get", "--raw",
                              f"/apis/kubelearn.dev/v1alpha1/namespaces/{namespace}/"
                              f"experiments/{name}/scale").stdout)


def workers(experiments: Experiments, name: str) -> list[str]:
    return sorted(n for n in experiments.live_pods(name) if "-worker-" in n)


def test_kubectl_scale_adds_and_removes_workers_and_nothing_else(
        experiments: Experiments, namespace: str, start_operator, control_plane) -> None:
    start_operator(namespace)
    experiments.create("linear", MINIMAL)
    experiments.wait_pods("linear", {"linear-ps-0", "linear-master-0", "linear-worker-0",
                                     "linear-worker-1"})
    experiments.run_all("linear")
    wait_for(lambda: experiments.status("linear").get("workers", {}).get("active") == 2, 30,
             "two active workers in status")
    scale = scale_of(control_plane, namespace, "linear")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 2
    assert scale["status"] == {"replicas": 2, "selector":
                               "kubelearn.dev/experiment=linear,kubelearn.dev/role=worker"}
    before = pod_uids(experiments.live_pods("linear"))

    out = kubectl(control_plane, namespace, "scale", "exp/linear", "--replicas=4").stdout
    assert "scaled" in out
    wait_for(lambda: workers(experiments, "linear") == [f"linear-worker-{i}" for i in range(4)],
             30, "four workers")
    assert experiments.get("linear")["spec"]["replicas"]["worker"] == 4
    after = pod_uids(experiments.live_pods("linear"))
    assert {n: after[n] for n in before} == before  # nobody restarted
    env = {e.name: e.value for e in
           experiments.live_pods("linear")["linear-worker-3"].spec.containers[0].env}
    tf_config = json.loads(env["TF_CONFIG"])
    assert len(tf_config["cluster"]["worker"]) == 4
    assert tf_config["task"] == {"type": "worker", "index": 3}
    assert set(experiments.services("linear")) >= {"linear-worker-2", "linear-worker-3"}
    experiments.run_all("linear")
    wait_for(lambda: scale_of(control_plane, namespace, "linear")["status"]["replicas"] == 4,
             30, "the scale's status at 4")

    kubectl(control_plane, namespace, "scale", "exp/linear", "--replicas=1")
    wait_for(lambda: workers(experiments, "linear") == ["linear-worker-0"], 30, "one worker")
    wait_for(lambda: "linear-worker-3" not in experiments.services("linear"), 30,
             "the removed workers' services gone")
    assert {n: u for n, u in pod_uids(experiments.live_pods("linear")).items()} == {
        n: before[n] for n in ("linear-ps-0", "linear-master-0", "linear-worker-0")}
    status = experiments.status("linear")
    assert status["workers"]["desired"] == 1 and status["phase"] == "Running"
    messages = wait_for(lambda: (m := {e.reason: e.message for e in
                                       experiments.events("linear")}).keys()
                        >= {"ScaledUp", "ScaledDown"} and m, 20, "scale events")
    assert messages["ScaledUp"] == "Workers scaled from 2 to 4."
    assert messages["ScaledDown"] == ("Workers scaled from 4 to 1: linear-worker-1, "
                                      "linear-worker-2, linear-worker-3 stop.")


def test_a_full_form_experiment_scales_too_and_keeps_one_count(
        experiments: Experiments, namespace: str, start_operator, control_plane) -> None:
    start_operator(namespace)
    experiments.create("full", FULL)
    experiments.wait_pods("full", {"full-ps-0", "full-master-0", "full-worker-0",
                                   "full-worker-1"})
    # Until the count is in spec.replicas.worker, the scale cannot be read (an autoscaler
    # needs it there); kubectl scale writes it all the same.
    raw = kubectl(control_plane, namespace, "get", "--raw", "/apis/kubelearn.dev/v1alpha1/"
                  f"namespaces/{namespace}/experiments/full/scale", check=False)
    assert raw.returncode != 0
    assert 'the spec replicas field ".spec.replicas.worker" does not exist' in raw.stderr
    kubectl(control_plane, namespace, "scale", "exp/full", "--replicas=3")
    assert scale_of(control_plane, namespace, "full")["spec"]["replicas"] == 3
    wait_for(lambda: workers(experiments, "full") == [f"full-worker-{i}" for i in range(3)],
             30, "three workers")
    # After a scale, the count lives in spec.replicas.worker; the full form's own count can
    # no longer change (it would do nothing).
    out = kubectl(control_plane, namespace, "patch", "exp/full", "--type=merge", "-p",
                  json.dumps({"spec": {"replicaSpecs": {"worker": {"replicas": 5}}}}),
                  check=False)
    assert out.returncode != 0
    assert "spec.replicas.worker: Invalid value" in out.stderr
    assert "kubectl scale sets, wins: change that one" in out.stderr
    kubectl(control_plane, namespace, "scale", "exp/full", "--replicas=2")
    wait_for(lambda: workers(experiments, "full") == ["full-worker-0", "full-worker-1"], 30,
             "two workers")


def test_a_finished_experiment_is_not_scaled(experiments: Experiments, namespace: str,
                                             start_operator, control_plane) -> None:
    start_operator(namespace)
    experiments.create("done", MINIMAL)
    experiments.wait_pods("done", {"done-ps-0", "done-master-0", "done-worker-0",
                                   "done-worker-1"})
    experiments.run_all("done")
    experiments.set_pod("done-master-0", "Succeeded", exit_code=0,
                        message=json.dumps({"global_step": 10, "loss": 0.1}))
    experiments.wait_phase("done", "Succeeded")
    out = kubectl(control_plane, namespace, "scale", "exp/done", "--replicas=3", check=False)
    assert out.returncode != 0
    assert ("spec.replicas.worker: Invalid value: \"object\": cannot change: the Experiment "
            "has finished, and a finished Experiment is not scaled") in out.stderr, out.stderr
    assert experiments.get("done")["spec"]["replicas"]["worker"] == 2


def test_a_horizontal_pod_autoscaler_can_target_an_experiment(
        experiments: Experiments, namespace: str, start_operator, kube_api) -> None:
    from kubernetes import client

    start_operator(namespace)
    experiments.create("auto", MINIMAL)
    experiments.wait_pods("auto", {"auto-ps-0", "auto-master-0", "auto-worker-0",
                                   "auto-worker-1"})
    experiments.run_all("auto")
    wait_for(lambda: experiments.status("auto").get("workers", {}).get("active") == 2, 30,
             "two active workers")
    autoscaling = client.AutoscalingV2Api(kube_api)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "auto"},
        "spec": {"scaleTargetRef": {"apiVersion": "kubelearn.dev/v1alpha1",
                                    "kind": "Experiment", "name": "auto"},
                 "minReplicas": 1, "maxReplicas": 4,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": 50}}}]}})

    def able() -> Any:
        hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("auto", namespace)
        conditions = {c.type: c for c in hpa.status.conditions or []}
        able = conditions.get("AbleToScale")
        return hpa if able is not None and able.status == "True" else None

    hpa = wait_for(able, 60, "the HPA to read the Experiment's scale")
    conditions = {c.type: c for c in hpa.status.conditions}
    assert conditions["AbleToScale"].reason == "SucceededGetScale"
    assert hpa.status.current_replicas == 2
    # No metrics API here: it goes no further, and says why.
    assert conditions["ScalingActive"].status == "False"


def test_the_last_worker_of_a_cluster_without_a_chief_is_never_removed(
        experiments: Experiments, namespace: str, control_plane) -> None:
    experiments.create("lead", {**MINIMAL, "replicas": {"ps": 1, "worker": 2}})
    out = kubectl(control_plane, namespace, "scale", "exp/lead", "--replicas=0", check=False)
    assert out.returncode != 0
    assert "spec.replicas: Invalid value" in out.stderr
    assert "needs at least one worker or master (or chief)" in out.stderr
    assert experiments.get("lead")["spec"]["replicas"]["worker"] == 2
