"""Fixtures for end-to-end tests: the CRD, and per test the operator plus a node agent that
runs the pods of the test's namespace as real processes.

This tier keeps what needs no container: faults injected at a chosen moment (a replica or the
operator killed, a pod deleted, a training error, a cancel), the node agent itself, load, and
runs whose point is the training itself (a synchronous experiment refusing a scale, a trial
pruned, the digits sweep, the developer's demo). The user's flows with containers are the
node tier's (tests/node/test_node_e2e.py), which also covers what this tier used to run:

- the example trained to Succeeded: test_example_succeeds_and_users_see_its_progress_and_logs
  (the status following training: test_kubectl_scale_adds_and_removes_workers_while_it_trains;
  the ps told to stop: tests/e2e/test_load_e2e.py);
- a SIGKILLed worker replaced: test_killed_worker_process_comes_back_per_restart_policy;
- scaling 2 to 4 to 1 workers while training:
  test_kubectl_scale_adds_and_removes_workers_while_it_trains;
- a sweep's trials two at a time, a failed one counted, the best kept:
  test_a_sweep_runs_its_trials_as_pods_and_keeps_the_best (and, trial by trial,
  tests/integration/test_operator_sweep.py::test_a_sweep_runs_its_trials_and_keeps_the_best).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.cluster.helpers import wait_for
from tests.cluster.resources import Experiments
from tests.e2e.stack import NodeAgent
from tests.operator_stack import Operator
from tests.processes import pids_with_env


class Cluster(Experiments):
    """One test's view: its namespace's experiments (tests/cluster/resources.py), the
    operator, the node agent and kubectl."""

    def __init__(self, api: client.ApiClient, control_plane: Any, namespace: str,
                 workdir: Path, start_operator: Callable[..., Operator]) -> None:
        super().__init__(api, namespace)
        self.cp = control_plane
        self.workdir = workdir
        self.operators: list[Operator] = []
        self._start_operator = start_operator
        self.agent = NodeAgent(control_plane.env, [namespace], workdir / "node",
                               node_name=f"node-{namespace}"[:63],
                               ip_octet=random.randint(16, 250))

    # -- processes ----------------------------------------------------------------------
    def start_operator(self, extra_env: dict[str, str] | None = None) -> Operator:
        op = self._start_operator(self.ns, env=extra_env,
                                  log=self.workdir / f"operator-{len(self.operators)}.log")
        self.operators.append(op)
        return op

    @property
    def operator(self) -> Operator:
        return self.operators[-1]

    def check_alive(self) -> None:
        """The node agent and the newest operator still run."""
        self.agent.check_alive()
        for op in self.operators[-1:]:
            op.check_alive()

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60,
                ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.cp.kubectl, "-n", self.ns, *args], capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def apply(self, manifest: dict[str, Any] | Path) -> None:
        if isinstance(manifest, Path):
            self.kubectl("apply", "-f", str(manifest))
            return
        path = self.workdir / f"{manifest['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        self.kubectl("apply", "-f", str(path))

    # -- reading ------------------------------------------------------------------------
    def wait_phase(self, name: str, phase: str, timeout: float = 180,
                   check: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
        """As the base's, with the processes checked on every poll, a run that ended
        otherwise reported, and the pods' and the operator's logs on a timeout."""
        def ended_otherwise(status: dict[str, Any]) -> None:
            self.check_alive()
            if check is not None:
                check(status)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}, not {phase}: "
                                     f"{json.dumps(status)[:3000]}")

        try:
            return super().wait_phase(name, phase, timeout, check=ended_otherwise)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs(name)}") from None

    def pod_pid(self, pod: str) -> int:
        """The pid of the pod's running process (the node agent records it)."""
        def current() -> int | None:
            p = self.core.read_namespaced_pod(pod, self.ns)
            statuses = p.status.container_statuses or []
            if not statuses or not statuses[0].state.running:
                return None
            pid = int((self.agent.pod_dir(self.ns, pod) / "pid").read_text())
            return pid if os.path.exists(f"/proc/{pid}") else None

        return wait_for(current, 60, f"pod {pod} running")

    def logs(self, name: str) -> str:
        """The tail of every pod log of an experiment and of the operator, for failures."""
        parts = []
        for path in sorted((self.agent.workdir / "pods").glob(f"{self.ns}_{name}-*/*.log")):
            parts.append(f"== {path.parent.name}\n{path.read_text(errors='replace')[-1500:]}")
        for op in self.operators:
            if op.log.exists():
                parts.append(f"== {op.log.name}\n{op.log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def model_dir(self, name: str) -> Path:
        return Path(f"/tmp/kubelearn/{self.ns}/{name}")


def _no_operator(*_: Any, **__: Any) -> Operator:
    raise AssertionError("this fixture runs no operator")


@contextlib.contextmanager
def _running(kube_api: client.ApiClient, control_plane: Any, namespace: str, tmp_path: Path,
             start_operator: Callable[..., Operator] | None) -> Iterator[Cluster]:
    c = Cluster(kube_api, control_plane, namespace, tmp_path,
                start_operator or _no_operator)
    c.agent.start()
    try:
        wait_for(lambda: (c.agent.check_alive(), c.core.read_node(c.agent.node_name))[1],
                 60, "the node agent's Node")
        if start_operator is not None:
            c.start_operator()
        yield c
    finally:
        for op in c.operators:
            op.stop()
        c.agent.stop()
        with contextlib.suppress(client.ApiException):
            c.core.delete_node(c.agent.node_name)
        shutil.rmtree(f"/tmp/kubelearn/{namespace}", ignore_errors=True)
    deadline = time.monotonic() + 10
    marker = f"KUBELEARN_TEST_NAMESPACE={namespace}"
    while (left := pids_with_env(f"KUBELEARN_MODEL_DIR=/tmp/kubelearn/{namespace}/")
           + pids_with_env(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"pod processes outlived the test: {left}"


@pytest.fixture
def cluster(kube_api: client.ApiClient, control_plane: Any, namespace: str,
            tmp_path: Path, start_operator: Callable[..., Operator]) -> Iterator[Cluster]:
    """The node agent and the operator for this test's namespace; all stopped afterwards,
    and no process of the namespace's pods may outlive the test."""
    with _running(kube_api, control_plane, namespace, tmp_path, start_operator) as c:
        yield c


@pytest.fixture
def node(kube_api: client.ApiClient, control_plane: Any, namespace: str,
         tmp_path: Path) -> Iterator[Cluster]:
    """Only the node agent, for pods made by the test itself."""
    with _running(kube_api, control_plane, namespace, tmp_path, None) as c:
        yield c
