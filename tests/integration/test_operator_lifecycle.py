"""The operator on the real API server: creation, status, success, failure and clean-up.

There is no kubelet: the tests write pod status through the pods/status subresource, as a
kubelet would, and watch the operator react.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from kubernetes import client

from tests.cluster.helpers import wait_for

from .conftest import Experiments

pytestmark = pytest.mark.cluster

MINIMAL = {
    "experimentFn": "kubelearn.examples.linear:experiment_fn",
    "hparams": {"learning_rate": 0.05, "train_steps": 2000},
    "replicas": {"ps": 1, "worker": 2, "master": 1},
}
NAMES = {"linear-master-0", "linear-ps-0", "linear-worker-0", "linear-worker-1"}


def test_minimal_experiment_runs_to_success(experiments: Experiments, namespace: str,
                                            start_operator, kube_api: client.ApiClient) -> None:
    op = start_operator(namespace)
    created = experiments.create("linear", MINIMAL)
    pods = experiments.wait_pods("linear", NAMES)
    services = wait_for(lambda: (s := experiments.services("linear")).keys() == NAMES and s,
                        30, "one headless service per replica")
    uid = created["metadata"]["uid"]

    # Pods: labels, owner, TF_CONFIG and the runner's environment.
    master = pods["linear-master-0"]
    assert master.metadata.labels == {
        "kubelearn.dev/experiment": "linear", "kubelearn.dev/role": "master",
        "kubelearn.dev/index": "0", "kubelearn.dev/job-role": "master"}
    owner = master.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Experiment", "linear",
                                                                     uid, True)
    container = master.spec.containers[0]
    assert container.command == ["kubelearn", "run", "--experiment-fn",
                                 "kubelearn.examples.linear:experiment_fn"]
    assert container.image == "kubelearn/runner:0.1.0"
    env = {e.name: e for e in container.env}
    tf_config = json.loads(env["TF_CONFIG"].value)
    assert tf_config == {
        "cluster": {"master": [f"linear-master-0.{namespace}.svc:2222"],
                    "ps": [f"linear-ps-0.{namespace}.svc:2222"],
                    "worker": [f"linear-worker-0.{namespace}.svc:2222",
                               f"linear-worker-1.{namespace}.svc:2222"]},
        "task": {"type": "master", "index": 0}, "environment": "cloud"}
    assert json.loads(env["KUBELEARN_HPARAMS"].value) == MINIMAL["hparams"]
    assert env["KUBELEARN_MODEL_DIR"].value == f"/tmp/kubelearn/{namespace}/linear"
    assert env["KUBELEARN_EXPERIMENT"].value == "linear"
    ref = env["KUBELEARN_TOKEN"].value_from.secret_key_ref
    secret = client.CoreV1Api(kube_api).read_namespaced_secret(ref.name, namespace)
    assert len(base64.b64decode(secret.data[ref.key])) == 64
    assert secret.metadata.owner_references[0].uid == uid
    svc = services["linear-worker-1"]
    assert svc.spec.cluster_ip == "None" and svc.spec.publish_not_ready_addresses is True
    assert svc.spec.ports[0].port == 2222
    assert svc.spec.selector["kubelearn.dev/index"] == "1"

    status = experiments.wait_phase("linear", "Created")
    assert status["observedGeneration"] == created["metadata"]["generation"]
    assert status["startTime"]

    experiments.run_all("linear")
    status = experiments.wait_phase("linear", "Running")
    wait_for(lambda: experiments.status("linear").get("replicas") == "4/4", 20,
             "Replicas 4/4")

    report = json.dumps({"step": 2000, "loss": 0.125})
    experiments.set_pod("linear-worker-0", "Succeeded", exit_code=0)
    experiments.set_pod("linear-master-0", "Succeeded", exit_code=0, message=report)
    status = experiments.wait_phase("linear", "Succeeded")
    assert status["completionTime"]
    wait_for(lambda: experiments.status("linear").get("step") == 2000, 20, "step from the report")
    assert experiments.status("linear")["loss"] == 0.125
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Succeeded"]["reason"] == "ExperimentSucceeded"
    assert conds["Running"]["status"] == "False"
    # cleanPodPolicy Running: the ps and the running worker are stopped; finished pods stay.
    experiments.wait_pods("linear", {"linear-master-0", "linear-worker-0"})
    reasons = wait_for(lambda: (r := experiments.event_reasons("linear")) >= {
        "ExperimentCreated", "SuccessfulCreatePod", "SuccessfulCreateService",
        "ExperimentRunning", "ExperimentSucceeded", "SuccessfulDeletePod"} and r,
        20, "events for creates, transitions and deletes")
    assert "SuccessfulCreateSecret" in reasons
    creates = [e for e in experiments.events("linear") if e.reason == "SuccessfulCreatePod"]
    assert len(creates) == 4

    text = op.metrics()
    assert re.search(rf'kubelearn_experiments_created_total{{namespace="{namespace}"}} 1\.0',
                     text)
    assert re.search(rf'kubelearn_experiments_succeeded_total{{namespace="{namespace}"}} 1\.0',
                     text)
    count = re.search(r"kubelearn_reconcile_duration_seconds_count (\d+)", text)
    assert count and int(count.group(1)) > 0
    assert op.healthz() is not None


def test_printer_columns(experiments: Experiments, namespace: str, start_operator,
                         control_plane) -> None:
    import subprocess

    start_operator(namespace)
    experiments.create("linear", MINIMAL)
    experiments.wait_pods("linear", NAMES)
    experiments.run_all("linear")
    experiments.wait_phase("linear", "Running")
    wait_for(lambda: experiments.status("linear").get("replicas") == "4/4", 20, "4/4")
    out = subprocess.run([*control_plane.kubectl, "get", "exp", "-n", namespace],
                         capture_output=True, text=True, check=True).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "REPLICAS", "STEP", "LOSS", "AGE"]
    assert row.split()[:3] == ["linear", "Running", "4/4"]


def test_permanent_failure_stops_the_rest(experiments: Experiments, namespace: str,
                                          start_operator) -> None:
    start_operator(namespace)
    experiments.create("linear", {**MINIMAL, "runPolicy": {"cleanPodPolicy": "None"}})
    experiments.wait_pods("linear", NAMES)
    experiments.run_all("linear")
    experiments.wait_phase("linear", "Running")
    experiments.set_pod("linear-worker-1", "Failed", exit_code=2)
    status = experiments.wait_phase("linear", "Failed")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ExperimentFailed"
    assert "linear-worker-1 exited with code 2" in failed["message"]
    # Even with cleanPodPolicy None, a failed experiment stops its active pods.
    experiments.wait_pods("linear", {"linear-worker-1"})
    assert experiments.services("linear").keys() == NAMES
    wait_for(lambda: "ExperimentFailed" in experiments.event_reasons("linear"), 10,
             "an ExperimentFailed event")


def test_experiment_deleted_takes_its_pods_and_services(experiments: Experiments,
                                                        namespace: str,
                                                        start_operator) -> None:
    start_operator(namespace)
    experiments.create("linear", MINIMAL)
    experiments.wait_pods("linear", NAMES)
    wait_for(lambda: experiments.services("linear").keys() == NAMES, 20, "services")
    experiments.delete("linear")
    wait_for(lambda: not experiments.pods("linear") and not experiments.services("linear"),
             30, "pods and services of the deleted experiment to be gone")


def test_two_namespaces_do_not_touch_each_other(experiments: Experiments, namespace: str,
                                                start_operator, kube_api: client.ApiClient
                                                ) -> None:
    other_ns = f"{namespace[:50]}-b"
    core = client.CoreV1Api(kube_api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other_ns)))
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", other_ns), 30,
                 "default ServiceAccount")
        other = Experiments(kube_api, other_ns)
        start_operator(namespace, other_ns)
        experiments.create("linear", MINIMAL)
        other.create("linear", MINIMAL)
        first = experiments.wait_pods("linear", NAMES)
        second = other.wait_pods("linear", NAMES)
        experiments.run_all("linear")
        other.run_all("linear")
        other.wait_phase("linear", "Running")
        experiments.set_pod("linear-master-0", "Failed", exit_code=1)
        experiments.wait_phase("linear", "Failed")
        experiments.wait_pods("linear", {"linear-master-0"})
        experiments.delete("linear")
        wait_for(lambda: not experiments.pods("linear"), 30, "first namespace's pods gone")
        # The other namespace's experiment is untouched: same pods, still running.
        assert other.status("linear")["phase"] == "Running"
        now = other.live_pods("linear")
        assert {n: p.metadata.uid for n, p in now.items()} == {
            n: p.metadata.uid for n, p in second.items()}
        assert all(p.metadata.owner_references[0].uid != first["linear-master-0"].metadata
                   .owner_references[0].uid for p in now.values())
    finally:
        core.delete_namespace(other_ns)


def test_large_experiment_takes_its_cluster_spec_from_one_configmap(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    start_operator(namespace)
    workers = 70  # above the inline limit of 64 replicas
    experiments.create("wide", {"experimentFn": "m:f", "replicas": {"worker": workers}})
    pods = experiments.wait_pods("wide", {f"wide-worker-{i}" for i in range(workers)})
    configmap = client.CoreV1Api(kube_api).read_namespaced_config_map(
        "wide-kubelearn-cluster", namespace)
    cluster = json.loads(configmap.data["cluster"])
    assert cluster["worker"][69] == f"wide-worker-69.{namespace}.svc:2222"
    assert configmap.metadata.owner_references[0].name == "wide"
    env = pods["wide-worker-5"].spec.containers[0].env
    names = [e.name for e in env]
    assert names.index("KUBELEARN_CLUSTER_SPEC") < names.index("TF_CONFIG")
    ref = env[names.index("KUBELEARN_CLUSTER_SPEC")].value_from.config_map_key_ref
    assert (ref.name, ref.key) == ("wide-kubelearn-cluster", "cluster")
    # What the kubelet hands the runner once it expands $(KUBELEARN_CLUSTER_SPEC):
    value = env[names.index("TF_CONFIG")].value.replace("$(KUBELEARN_CLUSTER_SPEC)",
                                                        configmap.data["cluster"])
    assert json.loads(value) == {"cluster": cluster, "task": {"type": "worker", "index": 5},
                                 "environment": "cloud"}


def test_network_policy_fences_the_experiment(experiments: Experiments, namespace: str,
                                              start_operator, kube_api: client.ApiClient
                                              ) -> None:
    start_operator(namespace, env={"KUBELEARN_OPERATOR_NAMESPACE": "kubelearn-system",
                                   "KUBELEARN_OPERATOR_SELECTOR": "app=kubelearn-operator"})
    created = experiments.create("linear", MINIMAL)
    experiments.wait_pods("linear", NAMES)
    net = client.NetworkingV1Api(kube_api)
    policy = wait_for(lambda: net.read_namespaced_network_policy("linear-kubelearn", namespace),
                      20, "the experiment's NetworkPolicy")
    assert policy.metadata.owner_references[0].uid == created["metadata"]["uid"]
    assert policy.spec.pod_selector.match_labels == {"kubelearn.dev/experiment": "linear"}
    ports = sorted(p.port for rule in policy.spec.ingress for p in rule.ports)
    assert ports == [2222, 2223]
