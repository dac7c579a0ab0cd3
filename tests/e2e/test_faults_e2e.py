"""Faults on a real run: replicas killed or deleted, the operator killed mid-reconcile, a
training error, and a cancel. Every recoverable fault ends Succeeded with no more steps lost
than since the last checkpoint."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import urllib.request

import pytest

from kubelearn import checkpoints
from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster
from tests.e2e.experiments import BAD_DATA_MESSAGE
from tests.e2e.faults import FAULT_HPARAMS, experiment, final_evaluation, progress, wait_progress
from tests.processes import pids_with_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RESTORE = re.compile(r"Restoring ps \[0\] from \S+ \(global step (\d+)\)")


def all_logs(cluster: Cluster, name: str) -> str:
    return "\n".join(cluster.agent.pod_log(cluster.ns, pod) for pod in
                     [f"{name}-ps-0", f"{name}-master-0", f"{name}-worker-0",
                      f"{name}-worker-1"])


def assert_trained_to_the_end(cluster: Cluster, name: str) -> None:
    model_dir = cluster.model_dir(name)
    final = final_evaluation(model_dir)
    assert final["global_step"] >= FAULT_HPARAMS["train_steps"], final
    assert final["loss"] < 1e-2, final
    pods = cluster.wait_pods_finished(name)
    assert all(p.status.phase != "Running" for p in pods.values())
    wait_for(lambda: not pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}"), 20,
             f"every process of {name} to exit")


def start_training(cluster: Cluster, name: str, at_step: int = 1500) -> int:
    cluster.apply(experiment(name, FAULT_HPARAMS))
    cluster.wait_phase(name, "Running", timeout=60)
    return wait_progress(cluster.model_dir(name), at_step,
                         check=cluster.agent.check_alive)


# A killed worker, replaced by the operator under ExitCode, is the node tier's
# (tests/node/test_node_e2e.py::test_killed_worker_process_comes_back_per_restart_policy).
@pytest.mark.parametrize("role", ["ps", "master"])
def test_sigkill_of_a_replica_is_recovered(cluster: Cluster, role: str):
    name = f"kill-{role}"
    start_training(cluster, name)
    model_dir = cluster.model_dir(name)
    checkpoint_before = checkpoints.latest_global_step(str(model_dir)) or 0
    pod = f"{name}-{role}-0"
    old_uid = cluster.core.read_namespaced_pod(pod, cluster.ns).metadata.uid
    os.kill(cluster.pod_pid(pod), signal.SIGKILL)
    step_at_kill = progress(model_dir)
    assert step_at_kill < FAULT_HPARAMS["train_steps"], "killed after training ended"

    status = cluster.wait_phase(name, "Succeeded", timeout=300)
    assert_trained_to_the_end(cluster, name)
    # Exit code 137 is retried under ExitCode: the operator replaced the pod.
    assert status["replicaStatuses"][role]["restarts"] >= 1, status
    new = cluster.pods(name).get(pod)
    assert new is None or new.metadata.uid != old_uid
    logs = all_logs(cluster, name)
    assert "exited with code 137" in cluster.agent.pod_log(cluster.ns, pod)
    if role == "ps":
        # The new ps got its shard back from the newest checkpoint: only the steps since
        # that checkpoint were lost.
        restored = [int(m) for m in RESTORE.findall(logs)]
        assert restored and restored[0] >= checkpoint_before, logs[-3000:]
        assert step_at_kill - restored[0] <= FAULT_HPARAMS["save_checkpoints_steps"] + 500
    else:
        # The ps kept the variables: no step was lost.
        assert not RESTORE.search(logs), logs[-3000:]


def test_deleted_pod_is_recreated_and_training_finishes(cluster: Cluster):
    name = "delete-pod"
    start_training(cluster, name)
    pod = f"{name}-worker-0"
    old = cluster.core.read_namespaced_pod(pod, cluster.ns)
    old_pid = cluster.pod_pid(pod)
    cluster.kubectl("delete", "pod", pod, "--wait=false")
    assert progress(cluster.model_dir(name)) < FAULT_HPARAMS["train_steps"]
    # The node agent stops the process (SIGTERM within the grace period) and removes the pod.
    wait_for(lambda: not os.path.exists(f"/proc/{old_pid}"), 40, "the deleted pod's process")
    wait_for(lambda: (p := cluster.pods(name).get(pod)) is not None
             and p.metadata.uid != old.metadata.uid, 60, f"a new {pod}")
    cluster.wait_phase(name, "Succeeded", timeout=300)
    assert_trained_to_the_end(cluster, name)
    assert not RESTORE.search(all_logs(cluster, name))


def test_operator_killed_mid_reconcile_and_restarted(cluster: Cluster):
    name = "op-kill"
    cluster.apply(experiment(name, FAULT_HPARAMS))
    # Killed while it creates the experiment's objects: some exist, some may not.
    wait_for(lambda: cluster.pods(name) or cluster.operator.check_alive(), 60,
             "the first pod")
    cluster.operator.kill()
    first = {n: p.metadata.uid for n, p in cluster.pods(name).items()}
    cluster.start_operator()
    wait_progress(cluster.model_dir(name), 1500, check=cluster.agent.check_alive)
    # And once more while training: the pods train on without it.
    cluster.operator.kill()
    step = progress(cluster.model_dir(name))
    wait_progress(cluster.model_dir(name), min(step + 300, FAULT_HPARAMS["train_steps"]),
                  check=cluster.agent.check_alive)
    cluster.start_operator()
    status = cluster.wait_phase(name, "Succeeded", timeout=300)
    assert_trained_to_the_end(cluster, name)
    pods = cluster.pods(name)
    assert set(pods) <= {f"{name}-ps-0", f"{name}-master-0", f"{name}-worker-0",
                         f"{name}-worker-1"}
    # The pods made before the kill were adopted, not made again.
    for pod, uid in first.items():
        assert pod not in pods or pods[pod].metadata.uid == uid, pod
    assert sum(r["restarts"] for r in status["replicaStatuses"].values()) == 0, status


def test_training_error_fails_with_an_actionable_reason(cluster: Cluster):
    name = "bad-data"
    cluster.apply(experiment(name, {"train_steps": 500},
                             experiment_fn="tests.e2e.experiments:failing_experiment_fn"))
    status = cluster.wait_phase(name, "Failed", timeout=120)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    # The reason names the replica and its exit code; its log holds the error itself.
    assert re.search(rf"{name}-(master|worker)-\d exited with code 1", failed["message"]), failed
    culprit = re.search(rf"({name}-\w+-\d) exited", failed["message"]).group(1)
    assert BAD_DATA_MESSAGE in cluster.agent.pod_log(cluster.ns, culprit)
    # Exit code 1 is permanent: no restart, and nothing is left running.
    assert sum(r["restarts"] for r in status["replicaStatuses"].values()) == 0, status
    cluster.wait_pods_finished(name)
    model_dir = cluster.model_dir(name)
    wait_for(lambda: not pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}"), 30,
             f"every process of {name} to exit")


def test_kubectl_delete_experiment_removes_everything(cluster: Cluster):
    name = "cancel"
    start_training(cluster, name, at_step=300)
    model_dir = cluster.model_dir(name)
    assert len(pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}")) == 4
    # The chief serves its progress on its own pod address, where the operator can read it.
    # It answers only with the experiment's token, from the experiment's Secret.
    master_ip = cluster.core.read_namespaced_pod(f"{name}-master-0", cluster.ns).status.pod_ip
    secret = cluster.core.read_namespaced_secret(f"{name}-kubelearn-token", cluster.ns)
    token = base64.b64decode(secret.data["token"]).decode()
    request = urllib.request.Request(f"http://{master_ip}:2223/progress",
                                     headers={"Authorization": f"Bearer {token}"})
    report = wait_for(lambda: json.loads(urllib.request.urlopen(request, timeout=5).read()),
                      30, "the progress endpoint")
    assert report["global_step"] >= 300, report
    cluster.kubectl("delete", "exp", name, "--wait=false")
    selector = f"kubelearn.dev/experiment={name}"

    def gone() -> bool:
        return not (cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items
                    or cluster.core.list_namespaced_service(
                        cluster.ns, label_selector=selector).items
                    or cluster.core.list_namespaced_secret(
                        cluster.ns, label_selector=selector).items
                    or pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}"))

    wait_for(gone, 90, f"every pod, service, secret and process of {name} to go")
    assert progress(model_dir) < FAULT_HPARAMS["train_steps"]  # it really was mid-training
