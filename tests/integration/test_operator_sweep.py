"""Sweeps on the real API server: the operator creates trial Experiments owned by the Sweep,
never more than ``parallelism`` at once, follows them to the end (a stand-in kubelet finishes
their pods, with the final metrics in the termination message, as the runner writes them),
and keeps the counts, the best trial, conditions and events in the Sweep; killed mid-sweep
and restarted, it creates exactly ``maxTrials`` trials, the same ones."""

from __future__ import annotations

import json
import math
import subprocess
from typing import Any

import pytest
from kubernetes import client

from kubelearn_search import Search
from kubelearn_spec.sweep_model import parse_sweep_spec
from tests.cluster.helpers import wait_for
from tests.integration.conftest import Experiments

pytestmark = pytest.mark.cluster

GROUP, VERSION = "kubelearn.dev", "v1alpha1"
TEMPLATE = {"experimentFn": "kubelearn.examples.linear:experiment_fn",
            "hparams": {"train_steps": 100}, "replicas": {"worker": 1}}
#: A learning rate of 1 or more "diverges": its trial fails.
SPEC = {"experiment": TEMPLATE,
        "parameters": [{"name": "learning_rate", "type": "double", "min": 0.001, "max": 3.0,
                        "distribution": "logUniform"}],
        "objective": {"metric": "loss", "direction": "minimize"},
        "algorithm": "random", "parallelism": 2, "maxTrials": 6, "maxFailedTrials": 5,
        "seed": 11}


class Sweeps:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.ns, "sweeps",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Sweep", "metadata": {"name": name},
             "spec": spec})

    def status(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, "sweeps", name).get("status") or {}

    def trials(self, name: str) -> dict[str, dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.ns, "experiments",
            label_selector=f"kubelearn.dev/sweep={name}")["items"]
        return {i["metadata"]["name"]: i for i in items}

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.ns).items
                if e.involved_object.name == name and e.involved_object.kind == "Sweep"]


def loss_of(learning_rate: float) -> float:
    """The stand-in's final loss: best near 0.05."""
    return round(abs(math.log10(learning_rate) - math.log10(0.05)) + 0.01, 6)


def finish_pending(experiments: Experiments, trials: dict[str, dict[str, Any]],
                   done: set[str], only: set[str] | None = None) -> None:
    """Ends every trial (of `only`, if given) whose pod exists: success with its loss, or
    failure (lr >= 1)."""
    for name, trial in sorted(trials.items()):
        if name in done or (only is not None and name not in only):
            continue
        pod = f"{name}-worker-0"
        if pod not in experiments.live_pods(name):
            continue
        lr = trial["spec"]["hparams"]["learning_rate"]
        if lr >= 1.0:
            experiments.set_pod(pod, "Failed", exit_code=2)
        else:
            report = json.dumps({"global_step": 100, "loss": loss_of(lr)})
            experiments.set_pod(pod, "Succeeded", exit_code=0, message=report)
        done.add(name)


def finished(experiments: Experiments, sweeps: Sweeps, name: str, done: set[str],
             only: set[str]) -> bool:
    """Finishes the trials named in `only` as their pods appear, and no other (a next trial
    the Sweep starts meanwhile is left running); True once they all are. If not, says what it
    saw (wait_for reports the last exception on timeout)."""
    trials = sweeps.trials(name)
    finish_pending(experiments, trials, done, only)
    if only <= done:
        return True
    seen = {n: ((t.get("status") or {}).get("phase"), sorted(experiments.live_pods(n)))
            for n, t in sorted(trials.items())}
    raise LookupError(f"{len(done)} finished ({sorted(done)}); trials (phase, pods): {seen}")


def run_to_the_end(experiments: Experiments, sweeps: Sweeps, name: str,
                   timeout: float = 120) -> tuple[dict[str, Any], int]:
    """Finishes trials as they come until the Sweep ends; the most trials seen running."""
    done: set[str] = set()
    most = 0

    def ended() -> dict[str, Any] | None:
        nonlocal most
        trials = sweeps.trials(name)
        running = sum(1 for t in trials.values()
                      if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
        most = max(most, running)
        finish_pending(experiments, trials, done)
        status = sweeps.status(name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(ended, timeout, f"sweep {name} to end"), most


@pytest.fixture
def sweeps(kube_api: client.ApiClient, namespace: str, sweep_crd) -> Sweeps:
    return Sweeps(kube_api, namespace)


def expected_hparams(name: str, namespace: str) -> list[float]:
    """Random search's trials are a function of the seed and the trial number alone."""
    search = Search(parse_sweep_spec(SPEC, name=name, namespace=namespace))
    return [search.suggest(n, [])["learning_rate"] for n in range(SPEC["maxTrials"])]


def test_a_sweep_runs_its_trials_and_keeps_the_best(experiments: Experiments, sweeps: Sweeps,
                                                    namespace: str, start_operator,
                                                    control_plane) -> None:
    start_operator(namespace)
    created = sweeps.create("lr", SPEC)
    status, most = run_to_the_end(experiments, sweeps, "lr")

    trials = sweeps.trials("lr")
    assert sorted(trials) == [f"lr-{n}" for n in range(6)]
    assert most <= 2
    for trial in trials.values():
        owner = trial["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "Sweep", created["metadata"]["uid"], True)
        assert trial["spec"]["hparams"]["train_steps"] == 100  # the template's own
    rates = [trials[f"lr-{n}"]["spec"]["hparams"]["learning_rate"] for n in range(6)]
    assert rates == pytest.approx(expected_hparams("lr", namespace))

    failed = sum(r >= 1.0 for r in rates)
    assert status["phase"] == "Succeeded", status
    assert status["counts"] == {"running": 0, "succeeded": 6 - failed, "failed": failed,
                                "pruned": 0, "stopped": 0}
    assert status["trials"] == "6/6" and status["seed"] == 11
    best = min((r for r in rates if r < 1.0), key=loss_of)
    assert status["best"]["hparams"] == {"learning_rate": pytest.approx(best)}
    assert status["best"]["objective"] == pytest.approx(loss_of(best))
    assert status["best"]["name"] == f"lr-{rates.index(best)}"
    condition = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert condition["reason"] == "MaxTrialsReached"
    history = status["history"]
    assert [h["number"] for h in history] == list(range(6))
    assert all(h["startTime"] and h["completionTime"] for h in history)

    reasons = wait_for(lambda: (r := [e.reason for e in sweeps.events("lr")]).count(
        "TrialStarted") == 6 and "SweepSucceeded" in r and r, 20, "the sweep's events")
    assert reasons.count("TrialSucceeded") == 6 - failed
    assert reasons.count("TrialFailed") == failed

    out = subprocess.run([*control_plane.kubectl, "get", "sweep", "lr", "-n", namespace],
                         capture_output=True, text=True, check=True).stdout
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "TRIALS", "BEST", "OBJECTIVE", "AGE"]
    assert row.split()[:4] == ["lr", "Succeeded", "6/6", status["best"]["name"]]


def test_too_many_failures_fail_the_sweep(experiments: Experiments, sweeps: Sweeps,
                                          namespace: str, start_operator) -> None:
    start_operator(namespace)
    spec = {**SPEC, "parameters": [{"name": "learning_rate", "type": "discrete",
                                    "values": [2.0, 3.0]}],
            "maxFailedTrials": 1, "parallelism": 1}
    sweeps.create("bad", spec)
    status, _ = run_to_the_end(experiments, sweeps, "bad")
    assert status["phase"] == "Failed"
    assert status["counts"]["failed"] == 2 and "best" not in status
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "MaxFailedTrialsExceeded"
    assert len(sweeps.trials("bad")) == 2


def test_a_killed_operator_resumes_the_sweep_without_duplicates(
        experiments: Experiments, sweeps: Sweeps, namespace: str, start_operator) -> None:
    first = start_operator(namespace)
    sweeps.create("lr", SPEC)
    done: set[str] = set()
    # Two trials running, then two more after the first two end.
    wait_for(lambda: len(sweeps.trials("lr")) == 2, 30, "the first two trials")
    wait_for(lambda: finished(experiments, sweeps, "lr", done, {"lr-0", "lr-1"}), 30,
             "their pods")
    # Killed with those two running: their pods made (the trials' Experiments alone may
    # be created a moment before their pods are).
    wait_for(lambda: len(sweeps.trials("lr")) == 4
             and all(experiments.live_pods(f"lr-{n}") for n in (2, 3)), 30,
             "the next two trials and their pods")
    first.kill()
    # While it is down, the running trials' pods finish.
    wait_for(lambda: finished(experiments, sweeps, "lr", done, {"lr-2", "lr-3"}), 30,
             "the running trials' pods")
    start_operator(namespace)
    status, _ = run_to_the_end(experiments, sweeps, "lr")
    trials = sweeps.trials("lr")
    assert sorted(trials) == [f"lr-{n}" for n in range(6)]
    rates = [trials[f"lr-{n}"]["spec"]["hparams"]["learning_rate"] for n in range(6)]
    assert rates == pytest.approx(expected_hparams("lr", namespace))
    assert status["phase"] == "Succeeded" and status["trials"] == "6/6"
    assert [h["number"] for h in status["history"]] == list(range(6))
