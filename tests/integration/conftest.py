"""Fixtures for operator tests on the real control plane: the CRD, an operator process, and
a stand-in kubelet that writes pod status through the API."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.helpers import apply_crd, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "experiments.kubelearn.dev.yaml"
GROUP, VERSION, PLURAL = "kubelearn.dev", "v1alpha1", "experiments"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def experiment_crd(kube_api: client.ApiClient) -> Path:
    """The Experiment CRD from crds/, applied and established."""
    apply_crd(kube_api, CRD)
    return CRD


class Operator:
    """The operator as a subprocess: ``kopf run --standalone -m kubelearn_operator.handlers``."""

    def __init__(self, env: dict[str, str], namespaces: list[str], log: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.namespaces = namespaces
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.env = {**os.environ, **env, "KUBELEARN_METRICS_PORT": str(self.metrics_port),
                    "KUBELEARN_RESYNC_SECONDS": "2", "PYTHONUNBUFFERED": "1",
                    **(extra_env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Operator:
        args = [sys.executable, "-m", "kopf", "run", "--standalone",
                "-m", "kubelearn_operator.handlers",
                "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT,
                                         start_new_session=True)
        wait_for(lambda: self.healthz() is not None, 30, "the operator's liveness endpoint")
        return self

    def healthz(self) -> str | None:
        self.check_alive()
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as resp:
                return resp.read().decode() if resp.status == 200 else None
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}; log:\n"
                                 + self.log.read_text()[-4000:])

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_operator(control_plane: Any, experiment_crd: Path,
                   tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """Start the operator for some namespaces; every one started is stopped after the test."""
    started: list[Operator] = []

    def start(*namespaces: str, env: dict[str, str] | None = None) -> Operator:
        log = tmp_path / f"operator-{len(started)}.log"
        op = Operator(control_plane.env, list(namespaces), log, env)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()


# -- the Experiment API -------------------------------------------------------------------
class Experiments:
    """Experiment, pod and service access for one namespace, plus a stand-in kubelet."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Experiment",
                "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name,
                                                   {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name)

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def condition(self, name: str, ctype: str) -> dict[str, Any] | None:
        for cond in self.status(name).get("conditions") or []:
            if cond["type"] == ctype:
                return cond
        return None

    def wait_phase(self, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status(name)).get("phase") == phase and s,
                        timeout, f"experiment {self.ns}/{name} to reach phase {phase}")

    def pods(self, name: str) -> dict[str, client.V1Pod]:
        items = self.core.list_namespaced_pod(
            self.ns, label_selector=f"kubelearn.dev/experiment={name}").items
        return {p.metadata.name: p for p in items}

    def services(self, name: str) -> dict[str, client.V1Service]:
        items = self.core.list_namespaced_service(
            self.ns, label_selector=f"kubelearn.dev/experiment={name}").items
        return {s.metadata.name: s for s in items}

    def live_pods(self, name: str) -> dict[str, client.V1Pod]:
        return {n: p for n, p in self.pods(name).items() if p.metadata.deletion_timestamp is None}

    def wait_pods(self, name: str, expected: set[str], timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: set(pods := self.live_pods(name)) == expected and pods,
                        timeout, f"pods {sorted(expected)} of {self.ns}/{name}")

    def events(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.ns).items
                if e.involved_object.name == name and e.involved_object.kind == "Experiment"]

    def event_reasons(self, name: str) -> set[str]:
        return {e.reason for e in self.events(name)}

    # -- a kubelet's part: write pod status through the pods/status subresource -------------
    def set_pod(self, pod: str, phase: str, *, exit_code: int | None = None,
                restarts: int = 0, message: str | None = None) -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        current = self.core.read_namespaced_pod(pod, self.ns)
        containers = [c.name for c in current.spec.containers]
        if exit_code is not None:
            state: dict[str, Any] = {"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                "startedAt": now, "finishedAt": now, "message": message}}
        elif phase == "Running":
            state = {"running": {"startedAt": now}}
        else:
            state = {"waiting": {"reason": "ContainerCreating"}}
        statuses = [{"name": c, "image": current.spec.containers[i].image or "none",
                     "imageID": "", "ready": phase == "Running", "restartCount": restarts,
                     "state": state} for i, c in enumerate(containers)]
        body = {"status": {"phase": phase, "startTime": now, "containerStatuses": statuses,
                           "conditions": [{"type": "Ready", "status":
                                           "True" if phase == "Running" else "False"}]}}
        self.core.patch_namespaced_pod_status(pod, self.ns, body)

    def run_all(self, name: str) -> None:
        for pod in self.live_pods(name):
            self.set_pod(pod, "Running")


@pytest.fixture
def experiments(kube_api: client.ApiClient, namespace: str,
                experiment_crd: Path) -> Experiments:
    return Experiments(kube_api, namespace)


def pod_uids(pods: dict[str, client.V1Pod]) -> dict[str, str]:
    return {n: p.metadata.uid for n, p in pods.items()}

