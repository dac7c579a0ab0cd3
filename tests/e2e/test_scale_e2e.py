"""End to end: ``kubectl scale exp/sync`` of a synchronous experiment, its replicas real
runner processes that the node agent runs: the operator refuses the change once the chief
reports synchronous training, and clears the refusal when the scale is set back.

Scaling an asynchronous experiment while it trains is the node tier's
(tests/node/test_node_e2e.py::test_kubectl_scale_adds_and_removes_workers_while_it_trains)."""

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
