"""Fixtures for end-to-end tests: the CRD, and per test the operator plus a node agent that
runs the pods of the test's namespace as real processes."""

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
from tests.e2e.stack import NodeAgent
from tests.operator_stack import Operator
from tests.processes import pids_with_env

GROUP, VERSION, PLURAL = "kubelearn.dev", "v1alpha1", "experiments"


class Cluster:
    """One test's view: its namespace, the operator, the node agent and kubectl."""

    def __init__(self, api: client.ApiClient, control_plane: Any, namespace: str,
                 workdir: Path, start_operator: Callable[..., Operator]) -> None:
        self.api = api
        self.cp = control_plane
        self.ns = namespace
        self.workdir = workdir
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
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
    def experiment(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.experiment(name).get("status") or {}

    def wait_phase(self, name: str, phase: str, timeout: float = 180) -> dict[str, Any]:
        def reached() -> dict[str, Any] | bool:
            self.agent.check_alive()
            for op in self.operators[-1:]:
                op.check_alive()
            status = self.status(name)
            if status.get("phase") in ("Succeeded", "Failed") and status["phase"] != phase:
                raise AssertionError(f"{name} ended {status['phase']}, not {phase}: "
                                     f"{json.dumps(status)[:3000]}\n{self.logs(name)}")
            return status.get("phase") == phase and status

        try:
            return wait_for(reached, timeout, f"experiment {self.ns}/{name} phase {phase}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs(name)}") from None

    def pods(self, name: str) -> dict[str, client.V1Pod]:
        items = self.core.list_namespaced_pod(
            self.ns, label_selector=f"kubelearn.dev/experiment={name}").items
        return {p.metadata.name: p for p in items}

    def wait_pods_finished(self, name: str, timeout: float = 60) -> dict[str, client.V1Pod]:
        """The experiment's pods once none is Pending or Running any more."""
        def finished() -> dict[str, client.V1Pod] | bool:
            pods = self.pods(name)
            return all(p.status.phase in ("Succeeded", "Failed") for p in pods.values()) \
                and pods

        return wait_for(finished, timeout, f"every pod of {name} to finish")

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
