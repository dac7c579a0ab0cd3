"""End to end: ``kubectl apply`` an Experiment; the operator makes pods, the node agent runs
them as real runner processes, and the Experiment ends Succeeded with a trained model."""

from __future__ import annotations

import json

import pytest

from kubelearn import checkpoints
from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster
from tests.operator_stack import EXAMPLE
from tests.processes import pids_with_env
from tests.support import final_evaluation

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_kubectl_apply_example_trains_to_succeeded(cluster: Cluster):
    cluster.kubectl("apply", "-f", str(EXAMPLE))
    status = cluster.wait_phase("linear", "Succeeded", timeout=240)

    model_dir = cluster.model_dir("linear")
    final = final_evaluation(model_dir)
    assert final["global_step"] >= 2000 and final["loss"] < 1e-2, final
    assert checkpoints.latest_global_step(str(model_dir)) >= 2000
    # The master decided success; the ps was told to stop; the clean-up policy (Running)
    # removes whatever still runs, so no pod is left running and no process either.
    pods = cluster.wait_pods_finished("linear")
    master = pods["linear-master-0"]
    assert master.status.phase == "Succeeded"
    assert master.status.container_statuses[0].state.terminated.exit_code == 0
    assert master.status.pod_ip.startswith("127.") and master.spec.node_name
    assert status["replicaStatuses"]["master"]["succeeded"] == 1
    assert "Told to stop at global step" in cluster.agent.pod_log(cluster.ns, "linear-ps-0")
    assert pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}") == []
    # The chief recorded a run that finished.
    runs = list((model_dir / "runs").glob("linear_*/run.yaml"))
    assert runs and "status: Complete" in runs[0].read_text(), runs
    # The replicas reached each other through the Service names in TF_CONFIG.
    tf_config = json.loads(next(e.value for e in master.spec.containers[0].env
                                if e.name == "TF_CONFIG"))
    assert tf_config["cluster"]["ps"] == [f"linear-ps-0.{cluster.ns}.svc:2222"]
    # The final metrics reached the status, from the master's termination message.
    assert status["step"] >= 2000 and status["loss"] < 1e-2, status
    assert status["metrics"]["run"] == str(runs[0].parent)
    out = cluster.kubectl("get", "exp", "linear").stdout
    assert "Succeeded" in out and str(status["step"]) in out, out


LONG = """
apiVersion: kubelearn.dev/v1alpha1
kind: Experiment
metadata:
  name: long
spec:
  experimentFn: kubelearn.examples.linear:experiment_fn
  hparams:
    train_steps: 100000000
    n_features: 128
  replicas:
    ps: 1
    worker: 1
    master: 1
"""


def test_status_follows_training_progress(cluster: Cluster):
    manifest = cluster.workdir / "long.yaml"
    manifest.write_text(LONG)
    cluster.kubectl("apply", "-f", str(manifest))
    # While it trains, the operator polls the chief's progress into the status (every 5 s).
    seen: list[int] = []

    def stepping() -> bool:
        status = cluster.status("long")
        assert status.get("phase") != "Failed", status
        if status.get("phase") == "Running" and status.get("step"):
            seen.append(status["step"])
        return len(set(seen)) >= 2

    wait_for(stepping, 120, "two different steps in the status while training")
    running = cluster.status("long")
    assert running["phase"] == "Running" and running["loss"] is not None
    assert running["metrics"]["global_step"] == running["step"]
    assert "steps_per_sec" in running["metrics"]
    assert running["metrics"]["run"].startswith(str(cluster.model_dir("long")))
    out = cluster.kubectl("get", "exp", "long").stdout
    assert "Running" in out and str(running["step"]) in out, out
    cluster.kubectl("delete", "exp", "long")  # the final metrics: the example test's

