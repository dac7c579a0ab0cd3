"""The Sweep controller's pure planner: trials from child Experiments, what to create and
stop, the status and the events."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest

from kubelearn_operator.sweep_plan import outcome, plan_sweep, trial_record
from kubelearn_spec import names
from kubelearn_spec.sweep_model import STOPPED, parse_sweep_spec
from tests.sweep_cases import LR, OPTIMIZER, spec

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
UID = "sweep-uid"


def sweep(status: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    body = {"apiVersion": names.API_VERSION, "kind": names.SWEEP_KIND,
            "metadata": {"name": "s", "namespace": "ns", "uid": UID, "generation": 1},
            "spec": spec(**{"parameters": [LR, OPTIMIZER], "parallelism": 2, "maxTrials": 4,
                            **changes})}
    if status is not None:
        body["status"] = status
    return body


def child(manifest: dict[str, Any], phase: str | None = None,
          metrics: dict[str, Any] | None = None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """The Experiment the API server would hold for a created trial manifest."""
    body = copy.deepcopy(manifest)
    body["metadata"]["creationTimestamp"] = "2026-12-01T11:00:00Z"
    if annotations:
        body["metadata"]["annotations"] = annotations
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
        if phase == "Failed":
            status["conditions"] = [{"type": "Failed", "status": "True",
                                     "message": "worker-0 exited with code 1"}]
    if metrics is not None:
        status["metrics"] = metrics
    body["status"] = status
    return body


def searched(manifest: dict[str, Any]) -> dict[str, Any]:
    """The trial's searched hparams (the template's others are not the search's)."""
    return {k: v for k, v in manifest["spec"]["hparams"].items()
            if k in ("learning_rate", "optimizer")}


def run(body: dict[str, Any], children: list[dict[str, Any]], seed: int = 7, **kw: Any):
    result = plan_sweep(body, children, NOW, seed, **kw)
    body = {**body, "status": result.status}
    return result, body


def test_the_first_plan_starts_parallelism_trials_owned_by_the_sweep() -> None:
    result, _ = run(sweep(), [])
    assert [m["metadata"]["name"] for m in result.creates] == ["s-0", "s-1"]
    first = result.creates[0]
    assert first["metadata"]["labels"] == {names.LABEL_SWEEP: "s", names.LABEL_TRIAL: "0"}
    assert first["metadata"]["ownerReferences"] == [{
        "apiVersion": names.API_VERSION, "kind": "Sweep", "name": "s", "uid": UID,
        "controller": True, "blockOwnerDeletion": True}]
    hparams = first["spec"]["hparams"]
    assert 0.001 <= hparams["learning_rate"] <= 0.1 and hparams["optimizer"] in ("SGD", "Adam")
    status = result.status
    assert status["seed"] == 7 and status["phase"] == "Running"
    assert status["counts"]["running"] == 2 and status["trials"] == "0/4"
    assert [e["state"] for e in status["history"]] == ["running", "running"]
    assert [e.reason for e in result.events] == ["TrialStarted", "TrialStarted"]
    assert "learning_rate = " in result.events[0].message


def test_the_same_seed_and_history_give_the_same_trials() -> None:
    a, _ = run(sweep(), [], seed=3)
    b, _ = run(sweep(), [], seed=3)
    c, _ = run(sweep(), [], seed=4)
    assert a.creates == b.creates
    assert a.creates != c.creates
    # The spec's seed wins over a drawn one, and a kept status.seed over a new draw.
    d, _ = run(sweep(seed=11), [], seed=99)
    assert d.status["seed"] == 11
    e, _ = run(sweep(status={"seed": 5}), [], seed=99)
    assert e.status["seed"] == 5


def test_a_finished_trial_makes_room_and_the_best_is_in_status() -> None:
    first, body = run(sweep(), [])
    children = [child(first.creates[0], "Succeeded", {"loss": 0.25, "global_step": 100}),
                child(first.creates[1], "Running")]
    second, body = run(body, children)
    assert [m["metadata"]["name"] for m in second.creates] == ["s-2"]
    status = second.status
    assert status["best"] == {"name": "s-0", "number": 0,
                              "hparams": searched(first.creates[0]), "objective": 0.25}
    assert status["counts"] == {"running": 2, "succeeded": 1, "failed": 0, "pruned": 0,
                                "stopped": 0}
    assert status["trials"] == "1/4"
    assert [e.reason for e in second.events] == ["TrialSucceeded", "TrialStarted"]
    assert second.events[0].message == "Trial s-0 succeeded: loss = 0.25"


def test_trials_rebuilt_from_the_children_alone_are_never_created_twice() -> None:
    """An operator that lost the status write after its creates: the children say it all."""
    first, _ = run(sweep(), [])
    children = [child(m, "Running") for m in first.creates]
    again, _ = run(sweep(), children)
    assert again.creates == []
    assert [e["hparams"] for e in again.status["history"]] == \
        [searched(m) for m in first.creates]


def test_a_trial_that_succeeded_without_the_objective_counts_as_failed() -> None:
    manifest = run(sweep(), [])[0].creates[0]
    state, value, why = outcome(child(manifest, "Succeeded", {"accuracy": 0.9}), "loss")
    assert (state, value) == ("failed", None)
    assert why == "its final metrics have no loss (they have: accuracy)"
    state, _, why = outcome(child(manifest, "Failed"), "loss")
    assert (state, why) == ("failed", "worker-0 exited with code 1")
    stopped = child(manifest, "Suspended", annotations={
        names.ANNOTATION_TRIAL_STOPPED: "pruned",
        names.ANNOTATION_TRIAL_STOP_REASON: "loss = 3 at step 200 (median pruner)"})
    assert outcome(stopped, "loss") == ("pruned", None, "loss = 3 at step 200 (median pruner)")


def test_too_many_failures_fail_the_sweep_and_stop_the_running_trials() -> None:
    first, body = run(sweep(maxFailedTrials=0), [])
    children = [child(first.creates[0], "Failed"), child(first.creates[1], "Running")]
    result, body = run(body, children)
    assert result.creates == []
    assert [(s.name, s.state) for s in result.stops] == [("s-1", STOPPED)]
    patch = result.stops[0].patch()
    assert patch["spec"] == {"runPolicy": {"suspend": True}}
    assert patch["metadata"]["annotations"][names.ANNOTATION_TRIAL_STOPPED] == "stopped"
    status = result.status
    assert status["phase"] == "Failed" and "completionTime" in status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "MaxFailedTrialsExceeded"
    assert [e.reason for e in result.events] == ["TrialFailed", "TrialStopped", "SweepFailed"]
    # Once over, nothing more is created or stopped, whatever the trials do.
    later, _ = run(body, [child(first.creates[0], "Failed"),
                          child(first.creates[1], "Suspended", annotations={
                              names.ANNOTATION_TRIAL_STOPPED: "stopped"})])
    assert later.creates == [] and later.stops == []
    assert later.status["phase"] == "Failed"
    assert later.status["counts"]["stopped"] == 1


def test_the_goal_ends_the_sweep_with_the_best_trial() -> None:
    first, body = run(sweep(objective={"metric": "loss", "direction": "minimize",
                                       "goal": 0.1}), [])
    children = [child(first.creates[0], "Succeeded", {"loss": 0.05}),
                child(first.creates[1], "Running")]
    result, _ = run(body, children)
    assert result.creates == [] and [s.name for s in result.stops] == ["s-1"]
    succeeded = next(c for c in result.status["conditions"] if c["type"] == "Succeeded")
    assert succeeded["reason"] == "GoalReached" and "s-0" in succeeded["message"]


def test_the_budget_ends_the_sweep_once_the_last_trial_finishes() -> None:
    body = sweep()
    manifests: list[dict[str, Any]] = []
    for _ in range(3):
        result, body = run(body, [child(m, "Succeeded", {"loss": 1.0 / (i + 1)})
                                  for i, m in enumerate(manifests)])
        manifests += result.creates
    assert len(manifests) == 4 and result.status["phase"] == "Succeeded"
    assert result.status["trials"] == "4/4" and result.status["best"]["name"] == "s-3"
    assert next(c for c in result.status["conditions"]
                if c["type"] == "Succeeded")["reason"] == "MaxTrialsReached"


def test_a_deleted_trial_and_a_taken_name_count_as_failed() -> None:
    first, body = run(sweep(), [])
    result, body = run(body, [child(first.creates[1], "Running")], conflicts={2: "taken"})
    history = {e["number"]: e for e in result.status["history"]}
    assert history[0]["state"] == "failed"
    assert history[0]["reason"] == "its Experiment was deleted"
    assert history[2] == {"number": 2, "name": "s-2", "state": "failed", "hparams": {},
                          "reason": "taken", "completionTime": "2026-12-01T12:00:00Z"}
    assert [m["metadata"]["name"] for m in result.creates] == ["s-3"]


def test_early_stopping_prunes_a_trial_clearly_worse_than_the_median() -> None:
    stopping = {"algorithm": "median", "startupTrials": 2, "warmupSteps": 0}
    body = sweep(earlyStopping=stopping, maxTrials=6)
    first, body = run(body, [])
    good = [child(m, "Succeeded", {"loss": 0.1}) for m in first.creates]
    # The finished trials' intermediate values came from their status while they ran.
    for entry in body["status"]["history"]:
        entry["intermediate"] = {"100": 0.5, "200": 0.2}
    second, body = run(body, good)
    assert [m["metadata"]["name"] for m in second.creates] == ["s-2", "s-3"]
    bad = child(second.creates[0], "Running",
                {"eval": {"global_step": 100, "loss": 5.0}})
    fine = child(second.creates[1], "Running",
                 {"eval": {"global_step": 100, "loss": 0.4}})
    result, body = run(body, [*good, bad, fine])
    assert [(s.name, s.state) for s in result.stops] == [("s-2", "pruned")]
    assert result.stops[0].reason == "loss = 5 at step 100 (median pruner)"
    history = {e["number"]: e for e in result.status["history"]}
    assert history[2]["state"] == "pruned" and history[2]["intermediate"] == {"100": 5.0}
    assert history[3]["state"] == "running" and history[3]["intermediate"] == {"100": 0.4}
    assert "TrialPruned" in [e.reason for e in result.events]
    # The pruned trial frees its place at once.
    assert [m["metadata"]["name"] for m in result.creates] == ["s-4"]


def test_intermediate_values_accumulate_across_reconciles() -> None:
    parsed = parse_sweep_spec(spec(earlyStopping={"algorithm": "median"}), name="s",
                              namespace="ns")
    manifest = parsed.trial_manifest(0, {"learning_rate": 0.01})
    first = trial_record(child(manifest, "Running", {"eval": {"global_step": 10, "loss": 2}}),
                         0, parsed, None, NOW)
    second = trial_record(child(manifest, "Running", {"eval": {"global_step": 20, "loss": 1}}),
                          0, parsed, first, NOW)
    assert second["intermediate"] == {"10": 2.0, "20": 1.0}


@pytest.mark.parametrize("value", [float("nan"), True, "0.1"])
def test_a_non_number_objective_is_a_failure(value: Any) -> None:
    manifest = run(sweep(), [])[0].creates[0]
    state, objective, why = outcome(child(manifest, "Succeeded", {"loss": value}), "loss")
    assert (state, objective) == ("failed", None) and "not a finite number" in why


def test_an_invalid_spec_fails_the_sweep_naming_the_field() -> None:
    body = sweep()
    body["spec"]["parallelism"] = 0
    result, _ = run(body, [])
    assert result.creates == [] and result.status["phase"] == "Failed"
    assert "spec.parallelism" in result.status["conditions"][0]["message"]
