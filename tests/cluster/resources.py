"""Experiments and their pods, services and events in one namespace of the real control plane,
for the integration tier (which also plays the kubelet, writing pod status) and the e2e tier
(whose node agent runs the pods; tests/e2e/conftest.py adds the processes)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes import client

from tests.cluster.helpers import wait_for

GROUP, VERSION = "kubelearn.dev", "v1alpha1"
PLURAL, SWEEPS = "experiments", "sweeps"
#: Every replica's pod and service carries both labels; a TensorBoard has no role label.
EXPERIMENT_LABEL, ROLE_LABEL = "kubelearn.dev/experiment", "kubelearn.dev/role"


class Experiments:
    """Experiment, pod, service and event access for one namespace, plus a stand-in kubelet."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    # -- the Experiment ----------------------------------------------------------------------
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

    def wait_phase(self, name: str, phase: str, timeout: float = 30,
                   check: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
        """The status once it shows `phase`. `check` is given the status on every poll (to
        see, say, that the processes behind it are alive); what it raises is reported on
        timeout."""
        def reached() -> dict[str, Any] | bool:
            status = self.status(name)
            if check is not None:
                check(status)
            return status.get("phase") == phase and status

        return wait_for(reached, timeout, f"experiment {self.ns}/{name} to reach phase {phase}")

    # -- a sweep -----------------------------------------------------------------------------
    def sweep_status(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.ns, SWEEPS, name).get("status") or {}

    # -- what the operator made --------------------------------------------------------------
    def pods(self, name: str) -> dict[str, client.V1Pod]:
        """The experiment's replicas, deleted or not (its TensorBoard has no role label)."""
        items = self.core.list_namespaced_pod(
            self.ns, label_selector=f"{EXPERIMENT_LABEL}={name},{ROLE_LABEL}").items
        return {p.metadata.name: p for p in items}

    def services(self, name: str) -> dict[str, client.V1Service]:
        items = self.core.list_namespaced_service(
            self.ns, label_selector=f"{EXPERIMENT_LABEL}={name},{ROLE_LABEL}").items
        return {s.metadata.name: s for s in items}

    def live_pods(self, name: str) -> dict[str, client.V1Pod]:
        return {n: p for n, p in self.pods(name).items() if p.metadata.deletion_timestamp is None}

    def wait_pods(self, name: str, expected: set[str], timeout: float = 30) -> dict[str, Any]:
        return wait_for(lambda: set(pods := self.live_pods(name)) == expected and pods,
                        timeout, f"pods {sorted(expected)} of {self.ns}/{name}")

    def wait_pods_finished(self, name: str, timeout: float = 60) -> dict[str, client.V1Pod]:
        """The experiment's pods once none is Pending or Running any more."""
        def finished() -> dict[str, client.V1Pod] | bool:
            pods = self.pods(name)
            return all(p.status.phase in ("Succeeded", "Failed") for p in pods.values()) \
                and pods

        return wait_for(finished, timeout, f"every pod of {self.ns}/{name} to finish")

    def events(self, name: str, kind: str = "Experiment") -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.ns).items
                if e.involved_object.name == name and e.involved_object.kind == kind]

    def event_reasons(self, name: str, kind: str = "Experiment") -> set[str]:
        return {e.reason for e in self.events(name, kind)}

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


def pod_uids(pods: dict[str, client.V1Pod]) -> dict[str, str]:
    return {n: p.metadata.uid for n, p in pods.items()}
