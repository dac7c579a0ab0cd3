"""End to end: ``kubectl scale exp/linear`` while it trains, its replicas real runner processes
that the node agent runs. Workers added join the asynchronous training (the ps logs their
first push), workers removed stop on SIGTERM, no other pod restarts, and the experiment ends
with the example's loss; a synchronous experiment refuses the change."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def linear(name: str, **hparams: Any) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                     "hparams": {"learning_rate": 0.05, "train_steps": 60000, **hparams},
                     "replicas": {"ps": 1, "worker": 2, "master": 1}}}


def uids(cluster: Cluster, name: str) -> dict[str, str]:
    return {n: p.metadata.uid for n, p in cluster.pods(name).items()}


def ps_log(cluster: Cluster, name: str) -> str:
    return cluster.agent.pod_log(cluster.ns, f"{name}-ps-0")


def test_scaling_from_2_to_4_to_1_workers_while_training(cluster: Cluster) -> None:
    # The chief's progress every second, so the step is known while it trains.
    cluster.operator.stop()
    cluster.start_operator({"KUBELEARN_PROGRESS_SECONDS": "1"})
    cluster.apply(linear("elastic"))
    cluster.wait_phase("elastic", "Running", timeout=120)
    wait_for(lambda: cluster.status("elastic").get("step", 0) > 500, 120, "training under way")
    before = uids(cluster, "elastic")
    assert sorted(before) == ["elastic-master-0", "elastic-ps-0", "elastic-worker-0",
                              "elastic-worker-1"]

    cluster.kubectl("scale", "exp/elastic", "--replicas=4")
    # Worker i starts training min(60, 5 i) s after it starts, as in TensorFlow.
    wait_for(lambda: "First push from worker:3" in ps_log(cluster, "elastic"), 90,
             "worker 3's first push")
    assert "First push from worker:2" in ps_log(cluster, "elastic")
    step = cluster.status("elastic")["step"]
    wait_for(lambda: cluster.status("elastic").get("step", 0) > step + 500, 60,
             "training going on with 4 workers")

    cluster.kubectl("scale", "exp/elastic", "--replicas=1")
    wait_for(lambda: set(uids(cluster, "elastic")) == {
        "elastic-master-0", "elastic-ps-0", "elastic-worker-0"}, 60, "three workers gone")
    status = cluster.wait_phase("elastic", "Succeeded", timeout=300)

    # Nobody but the scaled workers started or stopped: the same pods, never restarted.
    assert {n: u for n, u in uids(cluster, "elastic").items()} == {
        n: before[n] for n in ("elastic-master-0", "elastic-ps-0", "elastic-worker-0")}
    assert all(s["restarts"] == 0 for s in status["replicaStatuses"].values()), status
    assert status["workers"]["desired"] == 1
    assert status["step"] >= 60000 and status["loss"] < 1e-2, status
    reasons = {e.reason for e in cluster.core.list_namespaced_event(cluster.ns).items
               if e.involved_object.name == "elastic"}
    assert {"ScaledUp", "ScaledDown"} <= reasons


def test_a_synchronous_experiment_refuses_the_scale(cluster: Cluster) -> None:
    cluster.operator.stop()
    cluster.start_operator({"KUBELEARN_PROGRESS_SECONDS": "1"})
    cluster.apply(linear("sync", sync_replicas=2, train_steps=20000))
    wait_for(lambda: (cluster.status("sync").get("metrics") or {}).get("sync_replicas") == 2,
             120, "the chief's report of synchronous training")
    cluster.kubectl("scale", "exp/sync", "--replicas=3")

    def refused() -> dict[str, Any] | None:
        status = cluster.status("sync")
        return next((c for c in status.get("conditions") or []
                     if c["type"] == "ScaleRefused" and c["status"] == "True"), None)

    condition = wait_for(refused, 30, "the ScaleRefused condition")
    assert condition["reason"] == "SynchronousTraining"
    assert condition["message"].startswith(
        "spec.replicas.worker: 3 refused: the experiment trains synchronously (each step "
        "averages 2 gradients), so it keeps 2 workers")
    assert "sync-worker-2" not in cluster.pods("sync")
    cluster.kubectl("scale", "exp/sync", "--replicas=2")
    status = cluster.wait_phase("sync", "Succeeded", timeout=300)
    assert next(c for c in status["conditions"] if c["type"] == "ScaleRefused")[
        "status"] == "False"
