"""Restart, backoff, deadline, TTL, clean-up, suspend and success policies on the API server."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from tests.cluster.helpers import wait_for

from .conftest import Experiments, pod_uids

pytestmark = pytest.mark.cluster

FN = "kubelearn.examples.linear:experiment_fn"


def workers(n: int, **extra) -> dict:
    return {"experimentFn": FN, "replicas": {"worker": n}, **extra}


def _reason(experiments: Experiments, name: str, ctype: str) -> str:
    cond = experiments.condition(name, ctype)
    return cond["reason"] if cond else ""


def test_exit_code_policy_restarts_signals_until_backoff_limit(
        experiments: Experiments, namespace: str, start_operator) -> None:
    op = start_operator(namespace)
    experiments.create("exp", workers(2, runPolicy={"backoffLimit": 1}))
    pods = experiments.wait_pods("exp", {"exp-worker-0", "exp-worker-1"})
    experiments.run_all("exp")
    experiments.wait_phase("exp", "Running")
    first_uid = pods["exp-worker-1"].metadata.uid

    experiments.set_pod("exp-worker-1", "Failed", exit_code=137)  # killed by SIGKILL: retry
    replaced = wait_for(
        lambda: (p := experiments.live_pods("exp").get("exp-worker-1")) is not None
        and p.metadata.uid != first_uid and p, 30, "exp-worker-1 recreated")
    assert replaced.metadata.annotations["kubelearn.dev/restarts"] == "1"
    status = experiments.status("exp")
    assert status["phase"] == "Restarting"
    assert status["replicaStatuses"]["worker"]["restarts"] == 1
    experiments.set_pod("exp-worker-1", "Running")
    experiments.wait_phase("exp", "Running")
    assert wait_for(lambda: {"RestartingPod", "ExperimentRestarting"}
                    <= experiments.event_reasons("exp"), 10, "restart events")

    experiments.set_pod("exp-worker-1", "Failed", exit_code=143)  # over the limit of 1
    experiments.wait_phase("exp", "Failed")
    assert _reason(experiments, "exp", "Failed") == "BackoffLimitExceeded"
    # The failed pod stays for its logs, the rest is stopped.
    experiments.wait_pods("exp", {"exp-worker-1"})
    metrics = op.metrics()
    assert f'kubelearn_experiments_restarted_total{{namespace="{namespace}"}} 1.0' in metrics
    assert f'kubelearn_experiments_failed_total{{namespace="{namespace}"}} 1.0' in metrics


def test_exit_code_one_to_127_is_permanent(experiments: Experiments, namespace: str,
                                          start_operator) -> None:
    start_operator(namespace)
    experiments.create("exp", workers(1))
    pods = experiments.wait_pods("exp", {"exp-worker-0"})
    experiments.set_pod("exp-worker-0", "Failed", exit_code=1)
    experiments.wait_phase("exp", "Failed")
    assert _reason(experiments, "exp", "Failed") == "ExperimentFailed"
    assert pod_uids(experiments.live_pods("exp")) == pod_uids(pods)  # not restarted


def test_on_failure_policy_counts_kubelet_restarts(experiments: Experiments, namespace: str,
                                                  start_operator) -> None:
    start_operator(namespace)
    experiments.create("exp", {"experimentFn": FN, "runPolicy": {"backoffLimit": 2},
                               "replicaSpecs": {"worker": {"replicas": 1,
                                                           "restartPolicy": "OnFailure"}}})
    pods = experiments.wait_pods("exp", {"exp-worker-0"})
    assert pods["exp-worker-0"].spec.restart_policy == "OnFailure"
    experiments.set_pod("exp-worker-0", "Running", restarts=2)
    wait_for(lambda: experiments.status("exp").get("replicaStatuses", {}).get("worker", {})
             .get("restarts") == 2, 20, "two restarts counted")
    assert experiments.status("exp")["phase"] == "Running"
    experiments.set_pod("exp-worker-0", "Running", restarts=3)
    experiments.wait_phase("exp", "Failed")
    assert _reason(experiments, "exp", "Failed") == "BackoffLimitExceeded"


def test_active_deadline_is_acted_on_within_seconds(experiments: Experiments, namespace: str,
                                                    start_operator) -> None:
    # A long resync: the deadline must be met by the operator's own timer, not a resync.
    start_operator(namespace, env={"KUBELEARN_RESYNC_SECONDS": "300"})
    experiments.create("exp", workers(1, runPolicy={"activeDeadlineSeconds": 3}))
    experiments.wait_pods("exp", {"exp-worker-0"})
    experiments.run_all("exp")
    status = experiments.wait_phase("exp", "Failed", timeout=3 + 5)
    assert _reason(experiments, "exp", "Failed") == "DeadlineExceeded"
    started = status["startTime"]
    assert started and status["completionTime"] >= started
    wait_for(lambda: not experiments.live_pods("exp"), 10, "pods stopped at the deadline")


def test_ttl_after_finished_deletes_the_experiment(experiments: Experiments, namespace: str,
                                                  start_operator) -> None:
    start_operator(namespace, env={"KUBELEARN_RESYNC_SECONDS": "300"})
    experiments.create("exp", workers(1, runPolicy={"ttlSecondsAfterFinished": 2}))
    experiments.wait_pods("exp", {"exp-worker-0"})
    experiments.set_pod("exp-worker-0", "Succeeded", exit_code=0)
    status = experiments.wait_phase("exp", "Succeeded")
    wait_for(lambda: not experiments.exists("exp"), 2 + 5, "the experiment deleted by its TTL")
    # Not before its time: the operator's deletion event is stamped (in whole seconds) no
    # earlier than the recorded completion plus ttlSecondsAfterFinished.
    deleted = min(wait_for(lambda: [e for e in experiments.events("exp")
                                    if e.reason == "ExperimentDeleted"],
                           10, "the ExperimentDeleted event"),
                  key=lambda e: e.first_timestamp)
    assert "deleted 2s after it finished" in deleted.message
    completed = datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
    assert deleted.first_timestamp >= completed + timedelta(seconds=2)
    wait_for(lambda: not experiments.pods("exp") and not experiments.services("exp"), 30,
             "its pods and services gone with it")


@pytest.mark.parametrize(("policy", "pods_left", "services_left"), [
    ("All", set(), False),
    ("None", {"exp-ps-0", "exp-worker-0", "exp-worker-1"}, True),
])
def test_clean_pod_policy(experiments: Experiments, namespace: str, start_operator,
                          policy: str, pods_left: set[str], services_left: bool) -> None:
    start_operator(namespace)
    experiments.create("exp", {"experimentFn": FN, "replicas": {"ps": 1, "worker": 2},
                               "runPolicy": {"cleanPodPolicy": policy}})
    experiments.wait_pods("exp", {"exp-ps-0", "exp-worker-0", "exp-worker-1"})
    experiments.run_all("exp")
    experiments.set_pod("exp-worker-0", "Succeeded", exit_code=0)  # worker 0 decides
    experiments.wait_phase("exp", "Succeeded")
    if policy == "All":
        wait_for(lambda: not experiments.live_pods("exp") and not experiments.services("exp"),
                 20, "every pod and service deleted")
    else:
        time.sleep(3)  # give a wrong deletion time to happen (resync is 2 s)
        assert set(experiments.live_pods("exp")) == pods_left
        assert bool(experiments.services("exp")) is services_left


def test_suspend_deletes_pods_and_resume_recreates_them(experiments: Experiments,
                                                       namespace: str, start_operator) -> None:
    start_operator(namespace)
    names = {"exp-ps-0", "exp-worker-0", "exp-worker-1"}
    experiments.create("exp", {"experimentFn": FN, "replicas": {"ps": 1, "worker": 2}})
    before = experiments.wait_pods("exp", names)
    experiments.run_all("exp")
    experiments.wait_phase("exp", "Running")
    experiments.patch_spec("exp", {"runPolicy": {"suspend": True}})
    experiments.wait_phase("exp", "Suspended")
    wait_for(lambda: not experiments.pods("exp"), 20, "pods deleted while suspended")
    assert _reason(experiments, "exp", "Suspended") == "ExperimentSuspended"
    assert experiments.condition("exp", "Running")["status"] == "False"
    experiments.patch_spec("exp", {"runPolicy": {"suspend": False}})
    after = experiments.wait_pods("exp", names)
    assert not set(pod_uids(after).values()) & set(pod_uids(before).values())
    assert experiments.condition("exp", "Suspended")["status"] == "False"
    experiments.run_all("exp")
    experiments.wait_phase("exp", "Running")
    assert {"ExperimentSuspended", "ExperimentResumed"} <= experiments.event_reasons("exp")


def test_all_workers_success_policy_and_evaluator_not_decisive(
        experiments: Experiments, namespace: str, start_operator) -> None:
    start_operator(namespace)
    experiments.create("exp", {"experimentFn": FN, "successPolicy": "AllWorkers",
                               "replicas": {"worker": 2},
                               "replicaSpecs": {"evaluator": {"restartPolicy": "Never"}}})
    names = {"exp-worker-0", "exp-worker-1", "exp-evaluator-0"}
    experiments.wait_pods("exp", names)
    experiments.run_all("exp")
    experiments.wait_phase("exp", "Running")
    experiments.set_pod("exp-evaluator-0", "Failed", exit_code=1)
    experiments.set_pod("exp-worker-0", "Succeeded", exit_code=0)
    wait_for(lambda: "ReplicaFailed" in experiments.event_reasons("exp"), 20,
             "the evaluator's failure reported")
    status = experiments.status("exp")
    assert status["phase"] == "Running"  # neither worker 0 alone nor the evaluator decides
    assert status["replicaStatuses"]["evaluator"]["failed"] == 1
    experiments.set_pod("exp-worker-1", "Succeeded", exit_code=0)
    experiments.wait_phase("exp", "Succeeded")
