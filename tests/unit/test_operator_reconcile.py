"""The reconcile decision for every policy, condition and transition (pure, no cluster)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kubelearn_operator.experiment_plan import (
    PODGROUP_MISSING,
    Observed,
    Plan,
    StorageClasses,
    claim_to_check,
    plan,
    status_patch,
)
from kubelearn_operator.pods import PodState, pod_state
from kubelearn_operator.settings import Settings
from kubelearn_operator.status import format_time
from kubelearn_spec import names
from tests.experiment_cases import MINIMAL

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
UID = "uid-1"
ALL = [("master", 0), ("ps", 0), ("worker", 0), ("worker", 1)]


def body(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
         **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": "exp", "namespace": "ns", "uid": UID, "generation": 3, **meta},
            "spec": copy.deepcopy(spec or MINIMAL), "status": copy.deepcopy(status or {})}


def pod(role: str, index: int, phase: str = "Running", *, exit_code: int | None = None,
        restarts: int = 0, uid: str | None = None, deleting: bool = False,
        termination: str | None = None) -> PodState:
    """A pod as the API would return it, read through the operator's own parser."""
    name = f"exp-{role}-{index}"
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": uid or f"{name}-uid",
                            "labels": names.replica_labels("exp", role, index),
                            "ownerReferences": [{"uid": UID, "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = format_time(NOW)
    cstatus: dict[str, Any] = {"name": "kubelearn", "restartCount": restarts, "state": {}}
    if exit_code is not None:
        cstatus["state"] = {"terminated": {"exitCode": exit_code, "message": termination}}
    state = pod_state({"metadata": meta,
                       "status": {"phase": phase, "containerStatuses": [cstatus]}})
    assert state is not None
    return state


def observe(*pods: PodState, services: bool = True, podgroup: bool = False) -> Observed:
    svcs = frozenset(f"exp-{r}-{i}" for r, i in ALL) if services else frozenset()
    return Observed(pods={p.name: p for p in pods}, services=svcs, podgroup_available=podgroup)


def running(*, except_: tuple[str, int] | None = None, phase: str = "Running") -> list[PodState]:
    return [pod(r, i, phase) for r, i in ALL if (r, i) != except_]


def conditions(result: Plan) -> dict[str, str]:
    assert result.status is not None
    return {c["type"]: c["status"] for c in result.status["conditions"]}


def reasons(result: Plan) -> list[str]:
    return [e.reason for e in result.events]


def step(b: dict[str, Any], observed: Observed, now: datetime = NOW) -> Plan:
    """Reconcile and write the status back into the body, as the controller does."""
    result = plan(b, observed, now, Settings(image="runner:1"))
    if result.status is not None:
        for key, value in result.status.items():
            if value is None:
                b["status"].pop(key, None)
            else:
                b["status"][key] = value
    return result


# -- creation -----------------------------------------------------------------------------
def test_first_reconcile_creates_everything_once() -> None:
    result = plan(body(), Observed(), NOW)
    assert result.ensure_secret
    assert sorted(p["metadata"]["name"] for p in result.create_pods) == [
        "exp-master-0", "exp-ps-0", "exp-worker-0", "exp-worker-1"]
    assert sorted(s["metadata"]["name"] for s in result.create_services) == [
        "exp-master-0", "exp-ps-0", "exp-worker-0", "exp-worker-1"]
    assert conditions(result) == {"Created": "True", "StorageReady": "True"}
    assert result.status["phase"] == "Created"
    assert result.status["startTime"] == format_time(NOW)
    assert result.status["observedGeneration"] == 3
    assert result.status["replicas"] == "0/4"
    assert reasons(result) == ["ExperimentCreated"] and result.counters == ["created"]


def test_only_missing_objects_are_created() -> None:
    observed = Observed(pods={p.name: p for p in [pod("master", 0, "Pending"),
                                                  pod("worker", 1, "Pending")]},
                        services=frozenset({"exp-master-0", "exp-ps-0"}))
    result = plan(body(), observed, NOW)
    assert sorted(p["metadata"]["name"] for p in result.create_pods) == ["exp-ps-0",
                                                                         "exp-worker-0"]
    assert sorted(s["metadata"]["name"] for s in result.create_services) == [
        "exp-worker-0", "exp-worker-1"]


def test_nothing_to_do_when_everything_exists_and_status_is_current() -> None:
    b = body()
    step(b, observe(*running()))
    again = step(b, observe(*running()))
    assert not again.create_pods and not again.create_services and not again.delete_pods
    assert status_patch(b["status"], again.status) == {}
    assert again.events == [] and again.counters == []


def test_scaled_down_replicas_are_removed() -> None:
    spec = copy.deepcopy(MINIMAL)
    spec["replicas"]["worker"] = 1
    result = plan(body(spec), observe(*running()), NOW)
    assert result.delete_pods == [("exp-worker-1", "exp-worker-1-uid")]
    assert result.delete_services == ["exp-worker-1"]


def scaled(workers: int) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    spec["replicas"]["worker"] = workers
    return spec


def test_status_shows_the_workers_for_the_scale_subresource() -> None:
    b = body()
    result = step(b, observe(*running()))
    assert result.status["workers"] == {
        "desired": 2, "active": 2,
        "selector": "kubelearn.dev/experiment=exp,kubelearn.dev/role=worker"}
    assert "ScaledUp" not in reasons(result) and "ScaledDown" not in reasons(result)


def test_a_scale_up_adds_workers_and_restarts_nothing() -> None:
    b = body()
    step(b, observe(*running()))
    b["spec"] = scaled(4)
    result = step(b, observe(*running()))
    assert sorted(p["metadata"]["name"] for p in result.create_pods) == [
        "exp-worker-2", "exp-worker-3"]
    assert result.delete_pods == []
    assert [e.message for e in result.events if e.reason == "ScaledUp"] == [
        "Workers scaled from 2 to 4."]
    # The new workers are told the whole current cluster.
    tf_config = json.loads(next(e["value"] for e in result.create_pods[0]["spec"][
        "containers"][0]["env"] if e["name"] == "TF_CONFIG"))
    assert len(tf_config["cluster"]["worker"]) == 4
    assert tf_config["task"] == {"type": "worker", "index": 2}
    assert b["status"]["workers"]["desired"] == 4
    again = step(b, observe(*running(), pod("worker", 2), pod("worker", 3)))
    assert "ScaledUp" not in reasons(again) and again.create_pods == []


def test_a_scale_down_stops_the_highest_workers_and_keeps_worker_0() -> None:
    b = body(scaled(4))
    pods = {p.name: p for p in [*running(), pod("worker", 2), pod("worker", 3)]}
    observed = Observed(pods=pods, services=frozenset(pods))
    step(b, observed)
    b["spec"] = scaled(1)
    result = step(b, observed)
    assert sorted(n for n, _ in result.delete_pods) == [
        "exp-worker-1", "exp-worker-2", "exp-worker-3"]
    assert sorted(result.delete_services) == ["exp-worker-1", "exp-worker-2", "exp-worker-3"]
    assert [e.message for e in result.events if e.reason == "ScaledDown"] == [
        "Workers scaled from 4 to 1: exp-worker-1, exp-worker-2, exp-worker-3 stop."]
    assert conditions(result).get("Failed") is None


def test_synchronous_training_refuses_a_scale_with_a_condition() -> None:
    b = body()
    report = {"global_step": 10, "sync_replicas": 2}
    step(b, Observed(pods={p.name: p for p in running()}, services=observe().services,
                     progress=report))
    b["spec"] = scaled(4)
    observed = Observed(pods={p.name: p for p in running()}, services=observe().services,
                        progress=report)
    result = step(b, observed)
    assert result.create_pods == [] and result.delete_pods == []
    refused = next(c for c in result.status["conditions"] if c["type"] == "ScaleRefused")
    assert refused["status"] == "True" and refused["reason"] == "SynchronousTraining"
    assert refused["message"].startswith("spec.replicas.worker: 4 refused: the experiment "
                                         "trains synchronously (each step averages 2")
    assert reasons(result).count("ScaleRefused") == 1
    assert b["status"]["workers"]["desired"] == 2
    assert "ScaleRefused" not in reasons(step(b, observed))  # said once
    b["spec"] = scaled(2)  # set back: the condition clears
    back = step(b, observed)
    assert conditions(back)["ScaleRefused"] == "False"


def test_deleted_experiment_is_left_to_the_garbage_collector() -> None:
    result = plan(body(deletionTimestamp=format_time(NOW)), observe(*running()), NOW)
    assert result.status is None and not result.create_pods and not result.delete_pods


# -- running ------------------------------------------------------------------------------
def test_running_once_every_pod_runs() -> None:
    b = body()
    step(b, observe(*running(except_=("ps", 0)), pod("ps", 0, "Pending")))
    assert b["status"]["phase"] == "Created"
    result = step(b, observe(*running()))
    assert conditions(result) == {"Created": "True", "StorageReady": "True", "Running": "True"}
    assert b["status"]["phase"] == "Running"
    assert b["status"]["replicas"] == "4/4"
    assert b["status"]["replicaStatuses"]["worker"] == {"active": 2, "succeeded": 0,
                                                         "failed": 0, "restarts": 0}
    assert reasons(result) == ["ExperimentRunning"]


# -- success ------------------------------------------------------------------------------
def _finish(spec: dict[str, Any], pods: list[PodState]) -> Plan:
    b = body(spec)
    step(b, observe(*[pod(p.role, p.index) for p in pods]))
    return step(b, observe(*pods))


def test_master_success_decides_and_running_pods_are_cleaned() -> None:
    result = _finish(MINIMAL, [pod("master", 0, "Succeeded", exit_code=0), pod("ps", 0),
                               pod("worker", 0), pod("worker", 1, "Failed", exit_code=1)])
    assert conditions(result)["Succeeded"] == "True"
    assert conditions(result)["Running"] == "False"
    assert result.status["phase"] == "Succeeded"
    assert result.status["completionTime"] == format_time(NOW)
    # cleanPodPolicy Running (default): the still-running ps and worker go.
    assert sorted(n for n, _ in result.delete_pods) == ["exp-ps-0", "exp-worker-0"]
    assert result.counters == ["succeeded"] and "ExperimentSucceeded" in reasons(result)


def test_worker_zero_decides_without_master() -> None:
    spec = {**MINIMAL, "replicas": {"ps": 1, "worker": 2}}
    result = _finish(spec, [pod("ps", 0), pod("worker", 0, "Succeeded", exit_code=0),
                            pod("worker", 1)])
    assert result.status["phase"] == "Succeeded"
    not_yet = _finish(spec, [pod("ps", 0), pod("worker", 0),
                             pod("worker", 1, "Succeeded", exit_code=0)])
    assert not_yet.status["phase"] == "Running"


def test_all_workers_policy_waits_for_every_worker() -> None:
    spec = {**MINIMAL, "replicas": {"ps": 1, "worker": 2}, "successPolicy": "AllWorkers"}
    partial = _finish(spec, [pod("ps", 0), pod("worker", 0, "Succeeded", exit_code=0),
                             pod("worker", 1)])
    assert partial.status["phase"] == "Running"
    done = _finish(spec, [pod("ps", 0), pod("worker", 0, "Succeeded", exit_code=0),
                          pod("worker", 1, "Succeeded", exit_code=0)])
    assert done.status["phase"] == "Succeeded"


def test_ps_and_evaluator_never_decide_success() -> None:
    spec = {**MINIMAL, "replicas": {"ps": 1, "worker": 1, "evaluator": 1}}
    result = _finish(spec, [pod("ps", 0, "Succeeded", exit_code=0), pod("worker", 0),
                            pod("evaluator", 0, "Succeeded", exit_code=0)])
    assert result.status["phase"] == "Running"


def test_evaluator_failure_is_reported_but_not_decisive() -> None:
    spec = {**MINIMAL, "replicas": {"worker": 1, "evaluator": 1},
            "replicaSpecs": {"evaluator": {"restartPolicy": "Never"}}}
    spec["replicas"] = {"worker": 1}
    b = body(spec)
    step(b, observe(pod("worker", 0), pod("evaluator", 0)))
    result = step(b, observe(pod("worker", 0), pod("evaluator", 0, "Failed", exit_code=1)))
    assert b["status"]["phase"] == "Running"
    assert "ReplicaFailed" in reasons(result)
    assert b["status"]["replicaStatuses"]["evaluator"]["failed"] == 1
    again = step(b, observe(pod("worker", 0), pod("evaluator", 0, "Failed", exit_code=1)))
    assert "ReplicaFailed" not in reasons(again)


# -- failure and restart policies ---------------------------------------------------------
def test_permanent_failure_fails_and_stops_the_rest() -> None:
    b = body({**MINIMAL, "runPolicy": {"cleanPodPolicy": "None"}})
    step(b, observe(*running()))
    result = step(b, observe(*running(except_=("worker", 1)),
                             pod("worker", 1, "Failed", exit_code=2)))
    assert b["status"]["phase"] == "Failed"
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ExperimentFailed"
    assert "exp-worker-1 exited with code 2" in failed["message"]
    assert conditions(result)["Running"] == "False"
    # Failure stops the active pods even with cleanPodPolicy None; the failed pod stays.
    assert sorted(n for n, _ in result.delete_pods) == ["exp-master-0", "exp-ps-0",
                                                        "exp-worker-0"]
    assert result.counters == ["failed"]
    assert [e.type for e in result.events if e.reason == "ExperimentFailed"] == ["Warning"]


def test_failure_reason_carries_the_runners_error() -> None:
    b = body({**MINIMAL, "runPolicy": {"cleanPodPolicy": "None"}})
    step(b, observe(*running()))
    error = json.dumps({"error": "NanLossDuringTrainingError: NaN loss during training at "
                                 "step 12.", "global_step": 12})
    step(b, observe(*running(except_=("master", 0)),
                    pod("master", 0, "Failed", exit_code=1, termination=error)))
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert ("exp-master-0 exited with code 1: NanLossDuringTrainingError: NaN loss during "
            "training at step 12.") in failed["message"]
    # A message that is not the runner's JSON (the kubelet's fallback to the log tail) is
    # kept as it is, shortened from the front.
    b = body({**MINIMAL, "runPolicy": {"cleanPodPolicy": "None"}})
    step(b, observe(*running()))
    tail = "Traceback ...\n" + "x" * 500 + "\nImportError: no module named foo"
    step(b, observe(*running(except_=("master", 0)),
                    pod("master", 0, "Failed", exit_code=1, termination=tail)))
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert "ImportError: no module named foo" in failed["message"]
    assert len(failed["message"]) < 500


def test_ps_failure_fails_the_experiment() -> None:
    b = body()
    step(b, observe(*running()))
    step(b, observe(*running(except_=("ps", 0)), pod("ps", 0, "Failed", exit_code=1)))
    assert b["status"]["phase"] == "Failed"


def test_exit_code_restart_is_recorded_once_then_pod_recreated() -> None:
    b = body()
    step(b, observe(*running()))
    failed = pod("worker", 1, "Failed", exit_code=137, uid="old")
    first = step(b, observe(*running(except_=("worker", 1)), failed))
    assert b["status"]["phase"] == "Restarting"
    assert first.delete_pods == [("exp-worker-1", "old")]
    assert first.counters == ["restarted"]
    assert "RestartingPod" in reasons(first) and "ExperimentRestarting" in reasons(first)
    assert b["status"]["podRestarts"]["exp-worker-1"] == {"role": "worker", "count": 1,
                                                         "uid": "old"}
    assert b["status"]["replicaStatuses"]["worker"]["restarts"] == 1
    # The same failed pod seen again (the delete has not landed yet): not counted twice.
    second = step(b, observe(*running(except_=("worker", 1)), failed))
    assert second.counters == [] and b["status"]["podRestarts"]["exp-worker-1"]["count"] == 1
    assert second.delete_pods == [("exp-worker-1", "old")]
    # Gone: recreated, carrying its restart count.
    third = step(b, observe(*running(except_=("worker", 1))))
    (created,) = third.create_pods
    assert created["metadata"]["name"] == "exp-worker-1"
    assert created["metadata"]["annotations"][names.ANNOTATION_RESTARTS] == "1"
    assert b["status"]["phase"] == "Restarting"
    back = step(b, observe(*running()))
    assert conditions(back) == {"Created": "True", "StorageReady": "True", "Running": "True",
                                "Restarting": "False"}
    assert b["status"]["replicaStatuses"]["worker"]["restarts"] == 1


def test_exit_code_restarts_count_against_backoff_limit() -> None:
    b = body({**MINIMAL, "runPolicy": {"backoffLimit": 1}})
    step(b, observe(*running()))
    step(b, observe(*running(except_=("worker", 0)),
                    pod("worker", 0, "Failed", exit_code=143, uid="a")))
    assert b["status"]["phase"] == "Restarting"
    step(b, observe(*running()))
    result = step(b, observe(*running(except_=("worker", 0)),
                             pod("worker", 0, "Failed", exit_code=143, uid="b")))
    assert b["status"]["phase"] == "Failed"
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert ("exp-worker-0", "b") not in result.delete_pods  # kept for its logs
    assert sorted(n for n, _ in result.delete_pods) == ["exp-master-0", "exp-ps-0",
                                                        "exp-worker-1"]


def test_backoff_limit_zero_fails_on_first_retryable_failure() -> None:
    b = body({**MINIMAL, "runPolicy": {"backoffLimit": 0}})
    step(b, observe(*running()))
    step(b, observe(*running(except_=("ps", 0)), pod("ps", 0, "Failed", exit_code=130)))
    assert b["status"]["phase"] == "Failed"


def test_on_failure_restarts_by_the_kubelet_count_against_backoff_limit() -> None:
    spec = {"experimentFn": "m:f", "runPolicy": {"backoffLimit": 2},
            "replicaSpecs": {"worker": {"replicas": 2, "restartPolicy": "OnFailure"}}}
    b = body(spec)
    step(b, observe(pod("worker", 0), pod("worker", 1)))
    step(b, observe(pod("worker", 0, restarts=1), pod("worker", 1, restarts=1)))
    assert b["status"]["phase"] == "Running"
    assert b["status"]["replicaStatuses"]["worker"]["restarts"] == 2
    step(b, observe(pod("worker", 0, restarts=2), pod("worker", 1, restarts=1)))
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"


# -- deadline and ttl ---------------------------------------------------------------------
def test_active_deadline_fails_and_requeues_for_the_exact_moment() -> None:
    b = body({**MINIMAL, "runPolicy": {"activeDeadlineSeconds": 30}})
    first = step(b, observe(*running()))
    assert first.requeue_after == pytest.approx(30)
    later = step(b, observe(*running()), NOW + timedelta(seconds=12))
    assert later.requeue_after == pytest.approx(18)
    result = step(b, observe(*running()), NOW + timedelta(seconds=30))
    failed = next(c for c in b["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert len(result.delete_pods) == 4


def test_ttl_after_finished_deletes_the_experiment() -> None:
    b = body({**MINIMAL, "replicas": {"worker": 1}, "runPolicy": {"ttlSecondsAfterFinished": 5}})
    step(b, observe(pod("worker", 0)))
    done = step(b, observe(pod("worker", 0, "Succeeded", exit_code=0)))
    assert done.requeue_after == pytest.approx(5) and not done.delete_experiment
    wait = step(b, observe(pod("worker", 0, "Succeeded", exit_code=0)), NOW + timedelta(seconds=3))
    assert wait.requeue_after == pytest.approx(2) and not wait.delete_experiment
    gone = step(b, observe(pod("worker", 0, "Succeeded", exit_code=0)), NOW + timedelta(seconds=5))
    assert gone.delete_experiment


# -- clean pod policy ---------------------------------------------------------------------
@pytest.mark.parametrize(("policy", "deleted", "services"), [
    ("None", [], False),
    ("Running", ["exp-ps-0"], False),
    ("All", ["exp-master-0", "exp-ps-0", "exp-worker-0", "exp-worker-1"], True),
])
def test_clean_pod_policy_on_success(policy: str, deleted: list[str], services: bool) -> None:
    b = body({**MINIMAL, "runPolicy": {"cleanPodPolicy": policy}})
    step(b, observe(*running()))
    result = step(b, observe(pod("master", 0, "Succeeded", exit_code=0), pod("ps", 0),
                             pod("worker", 0, "Succeeded", exit_code=0),
                             pod("worker", 1, "Succeeded", exit_code=0)))
    assert b["status"]["phase"] == "Succeeded"
    assert sorted(n for n, _ in result.delete_pods) == deleted
    assert bool(result.delete_services) is services
    # Later reconciles stay finished and never create anything again.
    later = step(b, observe())
    assert not later.create_pods and b["status"]["phase"] == "Succeeded"


def test_final_counts_outlive_the_pods_that_clean_up_deletes() -> None:
    b = body({**MINIMAL, "runPolicy": {"cleanPodPolicy": "All"}})
    step(b, observe(*running()))
    step(b, observe(pod("master", 0, "Succeeded", exit_code=0), pod("ps", 0),
                    pod("worker", 0, "Succeeded", exit_code=0),
                    pod("worker", 1, "Failed", exit_code=1)))
    assert b["status"]["phase"] == "Succeeded"
    final = {role: (s["succeeded"], s["failed"]) for role, s in
             b["status"]["replicaStatuses"].items()}
    assert final == {"master": (1, 0), "ps": (0, 0), "worker": (1, 1)}
    assert b["status"]["replicas"] == "2/4"  # finished: succeeded/total
    step(b, observe())  # every pod deleted by clean-up
    after = {role: (s["succeeded"], s["failed"]) for role, s in
             b["status"]["replicaStatuses"].items()}
    assert after == final
    assert b["status"]["replicas"] == "2/4"


# -- suspend ------------------------------------------------------------------------------
def test_suspend_deletes_pods_and_resume_recreates_them() -> None:
    b = body({**MINIMAL, "runPolicy": {"activeDeadlineSeconds": 100}})
    step(b, observe(*running()))
    b["spec"]["runPolicy"]["suspend"] = True
    suspended = step(b, observe(*running()), NOW + timedelta(seconds=10))
    assert b["status"]["phase"] == "Suspended"
    assert len(suspended.delete_pods) == 4 and not suspended.create_pods
    assert conditions(suspended)["Running"] == "False"
    assert "startTime" not in b["status"]
    assert "ExperimentSuspended" in reasons(suspended)
    still = step(b, observe(), NOW + timedelta(seconds=500))
    assert not still.create_pods and b["status"]["phase"] == "Suspended"
    b["spec"]["runPolicy"]["suspend"] = False
    resumed = step(b, observe(), NOW + timedelta(seconds=600))
    assert len(resumed.create_pods) == 4
    assert conditions(resumed)["Suspended"] == "False"
    assert "ExperimentResumed" in reasons(resumed)
    # The deadline counts from the resume.
    assert b["status"]["startTime"] == format_time(NOW + timedelta(seconds=600))
    assert resumed.requeue_after == pytest.approx(100)


def test_suspended_from_the_start_creates_no_pods() -> None:
    result = plan(body({**MINIMAL, "runPolicy": {"suspend": True}}), Observed(), NOW)
    assert not result.create_pods and result.status["phase"] == "Suspended"


# -- gang scheduling ----------------------------------------------------------------------
def test_gang_scheduling_with_podgroup_crd() -> None:
    spec = {**MINIMAL, "runPolicy": {"schedulingPolicy": {"minAvailable": 4}}}
    result = plan(body(spec), Observed(podgroup_available=True), NOW)
    assert result.podgroup is not None and result.podgroup["spec"]["minMember"] == 4
    assert all(p["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
               for p in result.create_pods)
    assert result.status["podGroup"] == {"name": "exp", "message": ""}


def test_gang_scheduling_without_podgroup_crd_says_so() -> None:
    spec = {**MINIMAL, "runPolicy": {"schedulingPolicy": {"minAvailable": 4}}}
    b = body(spec)
    result = step(b, Observed(podgroup_available=False))
    assert result.podgroup is None
    assert all("schedulerName" not in p["spec"] for p in result.create_pods)
    assert b["status"]["podGroup"]["message"] == PODGROUP_MISSING
    assert "PodGroupUnavailable" in reasons(result)
    assert "PodGroupUnavailable" not in reasons(step(b, Observed(podgroup_available=False)))


# -- invalid spec, progress, ownership ----------------------------------------------------
def test_invalid_spec_fails_without_creating_anything() -> None:
    result = plan(body({**MINIMAL, "replicas": {"master": 2, "worker": 1}}), Observed(), NOW)
    assert not result.create_pods and not result.ensure_secret
    failed = next(c for c in result.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.replicas.master" in failed["message"]


def test_progress_from_the_deciding_replica() -> None:
    report = json.dumps({"step": 120, "loss": 0.25, "accuracy": 0.9})
    b = body()
    step(b, observe(*running(except_=("master", 0)),
                    pod("master", 0, "Succeeded", exit_code=0, termination=report)))
    assert b["status"]["step"] == 120 and b["status"]["loss"] == 0.25
    assert b["status"]["metrics"]["accuracy"] == 0.9


def test_conditions_keep_transition_times() -> None:
    b = body()
    step(b, observe(*running()))
    created = next(c for c in b["status"]["conditions"] if c["type"] == "Created")
    step(b, observe(*running()), NOW + timedelta(seconds=60))
    again = next(c for c in b["status"]["conditions"] if c["type"] == "Created")
    assert again["lastTransitionTime"] == created["lastTransitionTime"] == format_time(NOW)


def test_status_patch_holds_only_changes_and_removals() -> None:
    old = {"phase": "Running", "startTime": "t", "replicas": "1/1"}
    assert status_patch(old, {"phase": "Running", "startTime": None, "replicas": "0/1",
                              "completionTime": None}) == {"startTime": None, "replicas": "0/1"}


def test_deadline_times_are_rounded_up_never_early() -> None:
    b = body({**MINIMAL, "runPolicy": {"activeDeadlineSeconds": 10}})
    start = NOW + timedelta(milliseconds=900)
    first = step(b, observe(*running()), start)
    assert b["status"]["startTime"] == format_time(NOW + timedelta(seconds=1))
    assert first.requeue_after == pytest.approx(10.1)
    step(b, observe(*running()), start + timedelta(seconds=9.5))
    assert b["status"]["phase"] == "Running"  # 9.5 s after the real start: not yet
    step(b, observe(*running()), start + timedelta(seconds=10.1))
    assert b["status"]["phase"] == "Failed"


def test_network_policy_when_the_operator_knows_its_own_pods() -> None:
    from kubelearn_operator.netpol import NetworkPolicyConfig

    config = NetworkPolicyConfig("kubelearn-system", {"app": "kubelearn-operator"})
    result = plan(body(), Observed(), NOW, Settings(network_policy=config))
    policy = result.network_policy
    assert policy is not None and policy["metadata"]["name"] == "exp-kubelearn"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == UID
    assert policy["spec"]["podSelector"] == {"matchLabels": {names.LABEL_EXPERIMENT: "exp"}}
    assert plan(body(), Observed(), NOW).network_policy is None


# -- the model directory's storage ------------------------------------------------------------
def storage_step(spec: dict[str, Any], claim_exists: bool | None,
                 classes: StorageClasses | None = None) -> Plan:
    return plan(body(spec), Observed(claim_exists=claim_exists, storage_classes=classes), NOW,
                Settings(image="runner:1"))


def test_the_default_claim_is_made_from_the_default_class_before_the_pods() -> None:
    result = storage_step(MINIMAL, False, StorageClasses(frozenset({"standard"}), "standard"))
    assert result.claim is not None and result.claim["metadata"]["name"] == "exp-model"
    assert "storageClassName" not in result.claim["spec"]  # the default class takes it
    assert len(result.create_pods) == 4
    assert conditions(result)["StorageReady"] == "True"
    assert result.status is not None and result.status["storage"] == {
        "claimName": "exp-model", "modelDir": "/tmp/kubelearn/ns/exp"}


def test_without_a_default_class_the_experiment_waits_and_says_how_to_fix_it() -> None:
    b = body()
    result = step(b, Observed(claim_exists=False, storage_classes=StorageClasses()))
    assert result.create_pods == [] and result.create_services == [] and result.claim is None
    condition = next(c for c in result.status["conditions"] if c["type"] == "StorageReady")
    assert condition["status"] == "False" and condition["reason"] == "NoDefaultStorageClass"
    for hint in ("spec.storage.storageClassName", "spec.storage.ephemeral: true",
                 "storageclass.kubernetes.io/is-default-class"):
        assert hint in condition["message"]
    assert result.status["phase"] == "Created"
    assert reasons(result) == ["ExperimentCreated", "NoDefaultStorageClass"]
    assert result.requeue_after is not None and result.requeue_after <= 10
    # Told once: the next reconcile of the same wait posts no second event.
    again = step(b, Observed(claim_exists=False, storage_classes=StorageClasses()))
    assert reasons(again) == [] and again.create_pods == []
    # A default class appears: the claim and the pods are made.
    fixed = step(b, Observed(claim_exists=False,
                             storage_classes=StorageClasses(frozenset({"s"}), "s")))
    assert fixed.claim is not None and len(fixed.create_pods) == 4
    assert conditions(fixed)["StorageReady"] == "True"


def test_a_missing_existing_claim_names_the_field_and_creates_nothing() -> None:
    spec = {**MINIMAL, "storage": {"persistentVolumeClaim": {"claimName": "models"}}}
    result = storage_step(spec, False)
    assert result.create_pods == [] and result.claim is None
    condition = next(c for c in result.status["conditions"] if c["type"] == "StorageReady")
    assert condition["reason"] == "ClaimNotFound"
    assert condition["message"].startswith("spec.storage.persistentVolumeClaim.claimName: ")
    assert "models" in condition["message"]
    ok = storage_step(spec, True)
    assert ok.claim is None and len(ok.create_pods) == 4  # an existing claim is only used
    assert ok.status["storage"]["claimName"] == "models"


def test_a_storage_class_that_does_not_exist_names_the_field() -> None:
    spec = {**MINIMAL, "storage": {"storageClassName": "fast"}}
    result = storage_step(spec, False, StorageClasses(frozenset({"slow"}), "slow"))
    assert result.create_pods == []
    condition = next(c for c in result.status["conditions"] if c["type"] == "StorageReady")
    assert condition["reason"] == "StorageClassNotFound"
    assert condition["message"].startswith("spec.storage.storageClassName: ")
    made = storage_step(spec, False, StorageClasses(frozenset({"fast"}), None))
    assert made.claim is not None and made.claim["spec"]["storageClassName"] == "fast"


def test_ephemeral_storage_needs_no_claim() -> None:
    result = storage_step({**MINIMAL, "storage": {"ephemeral": True}}, None)
    assert result.claim is None and len(result.create_pods) == 4
    assert result.status["storage"] == {"claimName": "", "modelDir": "/tmp/kubelearn/ns/exp"}


def test_claim_is_looked_up_only_before_the_experiment_has_pods() -> None:
    assert claim_to_check(body(), Observed()) == ("exp-model", True)
    existing = body({**MINIMAL, "storage": {"persistentVolumeClaim": {"claimName": "m"}}})
    assert claim_to_check(existing, Observed()) == ("m", False)
    assert claim_to_check(body(), observe(*running())) is None
    assert claim_to_check(body({**MINIMAL, "storage": {"ephemeral": True}}), Observed()) is None
    done = body(status={"conditions": [{"type": "Succeeded", "status": "True"}]})
    assert claim_to_check(done, Observed()) is None
    assert claim_to_check(body({**MINIMAL, "runPolicy": {"suspend": True}}), Observed()) is None


def test_status_keeps_the_final_export_the_chief_reports() -> None:
    final = json.dumps({"global_step": 10, "export": "/tmp/kubelearn/ns/exp/export/1700"})
    b = body()
    pods = [pod(r, i, "Succeeded", exit_code=0,
                termination=final if r == "master" else None) for r, i in ALL]
    result = step(b, observe(*pods))
    assert result.status["storage"]["export"] == "/tmp/kubelearn/ns/exp/export/1700"
    later = step(b, observe())  # finished, pods cleaned up: the status keeps it
    assert later.status["storage"]["export"] == "/tmp/kubelearn/ns/exp/export/1700"


def test_tensorboard_comes_with_the_storage_and_stays_after_the_end() -> None:
    spec = {**MINIMAL, "tensorboard": True}
    waiting = plan(body(spec), Observed(claim_exists=False, storage_classes=StorageClasses()),
                   NOW, Settings(image="runner:1"))
    assert waiting.tensorboard is None  # no claim yet to read
    b = body(spec)
    result = step(b, observe())
    assert result.tensorboard is not None
    assert result.tensorboard.deployment["metadata"]["name"] == "exp-tensorboard"
    assert result.status["tensorboard"] == {"service": "exp-tensorboard",
                                            "url": "http://exp-tensorboard.ns.svc:6006"}
    pods = [pod(r, i, "Succeeded", exit_code=0) for r, i in ALL]
    done = step(b, observe(*pods))
    assert conditions(done)["Succeeded"] == "True" and done.tensorboard is not None
    assert plan(body(), observe(), NOW).tensorboard is None


def test_tensorboard_turned_off_is_removed_and_leaves_the_status() -> None:
    on = step(body({**MINIMAL, "tensorboard": True}), observe())
    assert on.status is not None and not on.remove_tensorboard
    off = plan(body(MINIMAL, status=on.status), observe(*running()), NOW)
    assert off.remove_tensorboard and off.tensorboard is None
    assert off.status is not None and status_patch(on.status, off.status)["tensorboard"] is None
    # Once the status no longer names it, there is nothing more to remove.
    after = plan(body(MINIMAL, status={**on.status, "tensorboard": None}), observe(*running()),
                 NOW)
    assert not after.remove_tensorboard
    never = plan(body(MINIMAL), observe(*running()), NOW)
    assert not never.remove_tensorboard


def test_a_url_model_dir_needs_no_claim_nor_a_storage_class() -> None:
    spec = {**MINIMAL, "modelDir": "s3://models/exp", "storage": {"secretName": "keys"}}
    result = storage_step(spec, None, StorageClasses(frozenset(), None))
    assert result.claim is None and len(result.create_pods) == 4
    assert result.status is not None
    condition = {c["type"]: c for c in result.status["conditions"]}["StorageReady"]
    assert condition["status"] == "True" and condition["reason"] == "ObjectStore"
    assert "s3://models/exp" in condition["message"] and "Secret keys" in condition["message"]
    assert result.status is not None and result.status["storage"] == {
        "claimName": "", "modelDir": "s3://models/exp"}
    assert claim_to_check(body(spec), Observed()) is None


def test_restarts_in_status_never_go_down_when_pods_are_cleaned_up() -> None:
    restarted = [pod(r, i, restarts=2 if (r, i) == ("worker", 1) else 0) for r, i in ALL]
    first = plan(body(), observe(*restarted), NOW)
    assert first.status is not None
    assert first.status["replicaStatuses"]["worker"]["restarts"] == 2
    # The worker's pod is gone (deleted at the end): its kubelet restarts stay reported.
    later = plan(body(status=first.status), observe(*running(except_=("worker", 1))), NOW)
    assert later.status is not None
    assert later.status["replicaStatuses"]["worker"]["restarts"] == 2


# -- stuck replicas -------------------------------------------------------------------------
def _waiting(role: str, index: int, reason: str, message: str) -> PodState:
    name = f"exp-{role}-{index}"
    state = pod_state({
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid",
                     "labels": names.replica_labels("exp", role, index),
                     "ownerReferences": [{"uid": UID, "controller": True}]},
        "status": {"phase": "Pending", "containerStatuses": [
            {"name": "sidecar", "state": {"running": {}}},
            {"name": "kubelearn", "state": {"waiting": {"reason": reason,
                                                          "message": message}}}]}})
    assert state is not None
    return state


@pytest.mark.parametrize("reason", ["CreateContainerConfigError", "ErrImagePull",
                                    "ImagePullBackOff", "ErrImageNeverPull",
                                    "InvalidImageName", "CrashLoopBackOff"])
def test_a_stuck_replica_is_named_with_the_kubelets_reason(reason: str) -> None:
    b = body()
    step(b, observe())
    stuck = _waiting("worker", 1, reason, "the kubelet says why")
    first = step(b, observe(*running(except_=("worker", 1)), stuck))
    assert [e.message for e in first.events if e.reason == "ReplicaStuck"] == [
        f"pod exp-worker-1: {reason}: the kubelet says why"]
    condition = next(c for c in b["status"]["conditions"] if c["type"] == "ReplicasStuck")
    assert condition["status"] == "True" and condition["reason"] == reason
    assert condition["message"] == f"pod exp-worker-1: {reason}: the kubelet says why"
    again = step(b, observe(*running(except_=("worker", 1)), stuck))
    assert "ReplicaStuck" not in reasons(again)  # told once
    step(b, observe(*running()))
    condition = next(c for c in b["status"]["conditions"] if c["type"] == "ReplicasStuck")
    assert condition["status"] == "False"


def test_a_waiting_container_that_will_start_is_not_stuck() -> None:
    b = body()
    step(b, observe())
    result = step(b, observe(*running(except_=("ps", 0)),
                             _waiting("ps", 0, "ContainerCreating", "")))
    assert "ReplicaStuck" not in reasons(result)
    assert all(c["type"] != "ReplicasStuck" for c in b["status"]["conditions"])
