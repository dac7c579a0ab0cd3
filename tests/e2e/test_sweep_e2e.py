"""End to end: ``kubectl apply`` a Sweep; the operator runs its trials as Experiments whose
pods the node agent runs as real runner processes, stops a trial early whose first evaluation
is clearly worse than a finished trial's, finds an accurate model with the digits example,
and resumes a sweep after being killed.

Trials two at a time, a failed one counted and the best kept are the node tier's
(tests/node/test_node_e2e.py::test_a_sweep_runs_its_trials_as_pods_and_keeps_the_best) and,
trial by trial, the integration tier's (tests/integration/test_operator_sweep.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def sweep(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Sweep",
            "metadata": {"name": name}, "spec": spec}


def template(**hparams: Any) -> dict[str, Any]:
    """The linear example as one master (the cheapest trial that trains and evaluates)."""
    return {"experimentFn": "kubelearn.examples.linear:experiment_fn",
            "hparams": hparams, "replicas": {"master": 1}}


def wait_sweep(cluster: Cluster, name: str, timeout: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        cluster.check_alive()
        status = cluster.sweep_status(name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        return wait_for(ended, timeout, f"sweep {name} to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.sweep_status(name)}\n"
                             f"{cluster.logs(name)}") from None


def test_a_trial_clearly_behind_at_its_first_evaluation_is_pruned(cluster: Cluster):
    # The operator polls the chiefs every second, so it sees each first evaluation.
    cluster.operator.stop()
    cluster.start_operator({"KUBELEARN_PROGRESS_SECONDS": "1"})
    # One at a time, in the grid's order for seed 7: 0.05 first, which finishes; then
    # 1e-05, whose loss at step 1 is far above it, is stopped long before its 40000 steps.
    cluster.apply(sweep("slow", {
        "experiment": template(train_steps=40_000, eval_throttle_secs=3),
        "parameters": [{"name": "learning_rate", "type": "discrete",
                        "values": [0.05, 0.00001]}],
        "objective": {"metric": "loss", "direction": "minimize"},
        "algorithm": "grid", "parallelism": 1, "maxTrials": 2, "seed": 7,
        "earlyStopping": {"algorithm": "median", "startupTrials": 1}}))
    status = wait_sweep(cluster, "slow", timeout=420)

    history = {h["hparams"]["learning_rate"]: h for h in status["history"]}
    assert history[0.05]["state"] == "succeeded", status
    assert history[0.00001]["state"] == "pruned", status
    assert "at step 1 (median pruner)" in history[0.00001]["reason"]
    assert status["counts"]["pruned"] == 1 and status["phase"] == "Succeeded"
    pruned = cluster.get(history[0.00001]["name"])
    assert pruned["metadata"]["annotations"]["kubelearn.dev/trial-stopped"] == "pruned"
    assert pruned["spec"]["runPolicy"]["suspend"] is True
    # Stopped: its pods are gone, well before its last step.
    wait_for(lambda: not cluster.pods(history[0.00001]["name"]), 60, "the pruned trial's pods")
    assert (pruned.get("status") or {}).get("step", 0) < 40_000
    reasons = cluster.event_reasons("slow", kind="Sweep")
    assert {"TrialStarted", "TrialSucceeded", "TrialPruned", "SweepSucceeded"} <= reasons


def test_the_digits_sweep_example_finds_an_accurate_model(cluster: Cluster):
    cluster.kubectl("apply", "-f", str(ROOT / "examples" / "sweep-digits.yaml"))
    status = wait_sweep(cluster, "sweep-digits", timeout=600)
    assert status["phase"] == "Succeeded" and status["trials"] == "8/8", status
    assert status["counts"]["succeeded"] == 8
    best = status["best"]
    assert best["objective"] > 0.9, best
    assert best["hparams"]["hidden_units"] in ("32", "64,32", "128,64")
    assert cluster.status(best["name"])["metrics"]["accuracy"] == best["objective"]
    print(cluster.kubectl("get", "sweep").stdout)


def test_an_operator_killed_mid_sweep_resumes_it_with_exactly_max_trials(cluster: Cluster):
    cluster.apply(sweep("resume", {
        "experiment": template(train_steps=3000),
        "parameters": [{"name": "learning_rate", "type": "double", "min": 0.01, "max": 0.1,
                        "distribution": "logUniform"}],
        "objective": {"metric": "loss", "direction": "minimize"},
        "parallelism": 2, "maxTrials": 4, "seed": 5}))

    def trials() -> list[str]:
        items = cluster.custom.list_namespaced_custom_object(
            "kubelearn.dev", "v1alpha1", cluster.ns, "experiments",
            label_selector="kubelearn.dev/sweep=resume")["items"]
        return sorted(i["metadata"]["name"] for i in items)

    # Killed once the first two trials have their pods (before that, nothing would make
    # them while it is down).
    wait_for(lambda: len(names := trials()) == 2 and all(cluster.pods(t) for t in names), 60,
             "the first two trials and their pods")
    cluster.operator.kill()  # SIGKILL: no clean-up of any kind
    # While it is down the trials go on training (their pods are the node's).
    assert all(cluster.pods(t) for t in trials())
    cluster.start_operator()
    status = wait_sweep(cluster, "resume", timeout=300)
    assert trials() == ["resume-0", "resume-1", "resume-2", "resume-3"]
    assert status["phase"] == "Succeeded" and status["trials"] == "4/4", status
    assert status["counts"]["succeeded"] == 4
    assert [h["number"] for h in status["history"]] == [0, 1, 2, 3]
