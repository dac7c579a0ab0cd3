"""The operator as integration and end-to-end tests run it: the image's own command, as a child
process in its own process group, plus the CRDs and the example they share.

A pytest plugin (tests/conftest.py loads it): ``experiment_crd``, ``podgroup_crd``,
``operator_credentials`` and ``start_operator`` fixtures. The operator's command is read from
the Dockerfile's ENTRYPOINT, so the tests start exactly what the image starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kubelearn.local import free_port
from tests.cluster.helpers import apply_crd, apply_yaml, wait_for

ROOT = Path(__file__).resolve().parents[1]
CRD = ROOT / "crds" / "experiments.kubelearn.dev.yaml"
SWEEP_CRD = ROOT / "crds" / "sweeps.kubelearn.dev.yaml"
#: The one example manifest, as a user would apply it.
EXAMPLE = ROOT / "examples" / "experiment.yaml"

# The PodGroup API of scheduler-plugins (scheduling.x-k8s.io/v1alpha1), reduced to the fields
# the operator sets; the server needs the type, not the scheduler.
PODGROUP_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: podgroups.scheduling.x-k8s.io
spec:
  group: scheduling.x-k8s.io
  scope: Namespaced
  names: {plural: podgroups, singular: podgroup, kind: PodGroup, shortNames: [pg]}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              minMember: {type: integer, format: int32}
              minResources: {type: object, x-kubernetes-preserve-unknown-fields: true}
              scheduleTimeoutSeconds: {type: integer, format: int32}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
PODGROUP_CRD_NAME = "podgroups.scheduling.x-k8s.io"


def image_command() -> list[str]:
    """The operator image's ENTRYPOINT after tini, with this interpreter for ``python``."""
    from tests.unit.test_dockerfile import DOCKERFILE, parse

    _, stages = parse(DOCKERFILE.read_text())
    operator = next(s for s in stages if s.name == "operator")
    entrypoint = json.loads(operator.last("ENTRYPOINT"))
    assert entrypoint[:2] == ["/usr/bin/tini", "--"], entrypoint
    command = entrypoint[2:]
    return [sys.executable if command[0] == "python" else command[0], *command[1:]]


class Process:
    """A child in its own process group, its output appended to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.argv[:4]} exited with {self.proc.returncode}; log:\n"
                                 + self.log.read_text(errors="replace")[-4000:])

    def kill(self) -> None:
        """SIGKILL to the whole group: no clean-up of any kind, as when a node dies."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Operator(Process):
    """The operator for some namespaces (all when none are given), with metrics and liveness
    on free loopback ports, started with the image's command."""

    def __init__(self, env: dict[str, str], namespaces: list[str], log: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.namespaces = namespaces
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        argv = [*image_command(), *(f"--namespace={ns}" for ns in namespaces),
                *([] if namespaces else ["--all-namespaces"]),
                f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"]
        full_env = {**os.environ, **env, "KUBELEARN_METRICS_PORT": str(self.metrics_port),
                    "KUBELEARN_RESYNC_SECONDS": "2", "PYTHONUNBUFFERED": "1",
                    **(extra_env or {})}
        super().__init__(argv, full_env, log)

    def start(self, timeout: float = 60) -> Operator:
        super().start()
        deadline = time.monotonic() + timeout
        while self.healthz() is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError("operator not live; log:\n" + self.log.read_text()[-4000:])
            time.sleep(0.2)
        return self

    def healthz(self) -> str | None:
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

    def memory_kib(self) -> dict[str, int]:
        """Resident and peak resident memory of the operator process (VmRSS, VmHWM)."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values


def install_podgroup_crd(api: client.ApiClient) -> None:
    """Apply the PodGroup CRD and wait until it is established."""
    ext = client.ApiextensionsV1Api(api)
    apply_yaml(api, PODGROUP_CRD)
    wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in
                         ext.read_custom_resource_definition(PODGROUP_CRD_NAME).status
                         .conditions or []), 30, "the PodGroup CRD established")


def remove_podgroup_crd(api: client.ApiClient) -> None:
    """Delete the PodGroup CRD and wait until the API is gone."""
    ext = client.ApiextensionsV1Api(api)
    with contextlib.suppress(client.ApiException):
        ext.delete_custom_resource_definition(PODGROUP_CRD_NAME)

    def gone() -> bool:
        try:
            ext.read_custom_resource_definition(PODGROUP_CRD_NAME)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 60, "the PodGroup CRD removed")


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def experiment_crd(kube_api: client.ApiClient) -> Path:
    """The Experiment CRD from crds/, applied and established."""
    apply_crd(kube_api, CRD)
    return CRD


@pytest.fixture(scope="session")
def sweep_crd(kube_api: client.ApiClient) -> Path:
    """The Sweep CRD from crds/, applied and established."""
    apply_crd(kube_api, SWEEP_CRD)
    return SWEEP_CRD


@pytest.fixture
def podgroup_crd(kube_api: client.ApiClient) -> Iterator[Callable[[], None]]:
    """Installs the PodGroup CRD when called (a test may first run without it); removed after
    the test, so other tests see the cluster without it."""
    installed: list[bool] = []

    def install() -> None:
        install_podgroup_crd(kube_api)
        installed.append(True)

    yield install
    if installed:
        remove_podgroup_crd(kube_api)


@pytest.fixture
def operator_credentials() -> Callable[[Operator], None] | None:
    """What gives an operator its credentials, called just before it starts: here nothing,
    so it acts with the control plane's admin kubeconfig. A tier's conftest overrides it
    (tests/integration gives each operator the chart's ServiceAccount and RBAC)."""
    return None


@pytest.fixture
def start_operator(control_plane: Any, experiment_crd: Path, sweep_crd: Path,
                   operator_credentials: Callable[[Operator], None] | None,
                   tmp_path: Path) -> Iterator[Callable[..., Operator]]:
    """Start the operator for some namespaces (all when none are named), with the
    credentials ``operator_credentials`` gives it; every one started is stopped after the
    test."""
    started: list[Operator] = []

    def start(*namespaces: str, env: dict[str, str] | None = None,
              log: Path | None = None) -> Operator:
        op = Operator(control_plane.env, list(namespaces),
                      log or tmp_path / f"operator-{len(started)}.log", env)
        if operator_credentials is not None:
            operator_credentials(op)
        started.append(op)
        return op.start()

    yield start
    for op in started:
        op.stop()
        # Captured, so shown only when the test fails: what the operator said besides routine.
        print(f"-- {op.log.name}, its last warnings and errors:")
        print(*notable_lines(op.log), sep="\n")


def notable_lines(log: Path, limit: int = 30) -> list[str]:
    """The last `limit` lines of an operator's log at WARNING or above (kopf's and ours)."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [line[:400] for line in lines if "[WARNING" in line or "[ERROR" in line][-limit:]
