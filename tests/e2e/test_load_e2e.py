"""Load: 20 small experiments applied at once on one node, all trained to Succeeded (each
master telling its ps to stop, its run record in the status); the operator's memory and
reconcile latency are reported (measured, not asserted)."""

from __future__ import annotations

import json
import re
import time

import pytest

from kubelearn import checkpoints
from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster, pids_with_env
from tests.e2e.faults import experiment, final_evaluation

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXPERIMENTS = 20
HPARAMS = {"train_steps": 300, "save_checkpoints_steps": 100, "n_examples": 1024}
REPLICAS = {"ps": 1, "worker": 1, "master": 1}


def histogram(metrics: str, name: str) -> tuple[int, float, list[tuple[float, int]]]:
    """count, sum and cumulative buckets of a Prometheus histogram without labels."""
    count = int(float(re.search(rf"^{name}_count (\S+)$", metrics, re.M).group(1)))
    total = float(re.search(rf"^{name}_sum (\S+)$", metrics, re.M).group(1))
    buckets = [(float(le), int(float(v))) for le, v in
               re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M)]
    return count, total, buckets


def quantile(buckets: list[tuple[float, int]], count: int, q: float) -> float:
    """Upper bound of the bucket holding the q-quantile."""
    for bound, cumulative in buckets:
        if cumulative >= q * count:
            return bound
    return float("inf")


def test_twenty_experiments_at_once_all_succeed(cluster: Cluster, capsys, record_property):
    names = [f"load-{i:02d}" for i in range(EXPERIMENTS)]
    docs = [experiment(n, HPARAMS, REPLICAS) for n in names]
    path = cluster.workdir / "load.yaml"
    path.write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    started = time.monotonic()
    cluster.kubectl("apply", "-f", str(path))

    def all_pods_made() -> bool:
        cluster.operator.check_alive()
        pods = cluster.core.list_namespaced_pod(cluster.ns).items
        return len(pods) >= EXPERIMENTS * sum(REPLICAS.values())

    wait_for(all_pods_made, 120, "every pod of the load")
    pods_made_secs = time.monotonic() - started

    def all_finished() -> bool:
        cluster.agent.check_alive()
        cluster.operator.check_alive()
        phases = [cluster.status(n).get("phase") for n in names]
        if "Failed" in phases:
            bad = names[phases.index("Failed")]
            raise AssertionError(f"{bad} failed: {cluster.status(bad)}\n{cluster.logs(bad)}")
        return all(p == "Succeeded" for p in phases)

    try:
        wait_for(all_finished, 480, f"{EXPERIMENTS} experiments to succeed", interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.logs(names[0])}") from None
    all_done_secs = time.monotonic() - started
    memory = cluster.operator.memory_kib()
    count, total, buckets = histogram(cluster.operator.metrics(),
                                      "kubelearn_reconcile_duration_seconds")

    for name in names:
        model_dir = cluster.model_dir(name)
        final = final_evaluation(model_dir)
        # No step lost and none restarted: each trained once to its train_steps.
        assert final["global_step"] >= HPARAMS["train_steps"], (name, final)
        assert checkpoints.latest_global_step(str(model_dir)) >= HPARAMS["train_steps"]
        status = cluster.status(name)
        assert sum(r["restarts"] for r in status["replicaStatuses"].values()) == 0, status
        # The master decided success and told its ps to stop; its run record is named in
        # the status, from its termination message.
        assert status["replicaStatuses"]["master"]["succeeded"] == 1, status
        assert "Told to stop at global step" in cluster.agent.pod_log(cluster.ns,
                                                                      f"{name}-ps-0")
        assert status["metrics"]["run"].startswith(str(model_dir)), status
    wait_for(lambda: not pids_with_env(f"KUBELEARN_MODEL_DIR=/tmp/kubelearn/{cluster.ns}/"),
             60, "every pod process of the load to exit")

    report = {
        "experiments": EXPERIMENTS, "pods": EXPERIMENTS * sum(REPLICAS.values()),
        "all_pods_created_secs": round(pods_made_secs, 2),
        "all_succeeded_secs": round(all_done_secs, 2),
        "operator_rss_mib": round(memory["VmRSS"] / 1024, 1),
        "operator_peak_rss_mib": round(memory["VmHWM"] / 1024, 1),
        "reconciles": count,
        "reconcile_mean_ms": round(1000 * total / count, 2) if count else None,
        "reconcile_p95_le_ms": 1000 * quantile(buckets, count, 0.95),
        "reconcile_p99_le_ms": 1000 * quantile(buckets, count, 0.99),
    }
    for key, value in report.items():
        record_property(key, value)
    with capsys.disabled():
        print(f"\n[e2e load] {json.dumps(report)}")
    assert count > 0
