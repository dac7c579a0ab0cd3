"""The node agent on its own, with pods made by the test: binding (gang all or none),
addresses and names, status as a kubelet writes it, restart policy and deletion."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.helpers import wait_for
from tests.e2e.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

def make_pod(node: Cluster, name: str, code: str, *, restart: str = "Never",
             labels: dict[str, str] | None = None, env: dict[str, str] | None = None,
             container: dict[str, Any] | None = None) -> client.V1Pod:
    env = {"KUBELEARN_TEST_NAMESPACE": node.ns, **(env or {})}
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"restartPolicy": restart, "containers": [{
                "name": "main", "image": "none", "command": ["python", "-c", code],
                "env": [{"name": k, "value": v} for k, v in env.items()],
                **(container or {})}]}}
    return node.core.create_namespaced_pod(node.ns, body)


def wait_pod(node: Cluster, name: str, phase: str, timeout: float = 60) -> client.V1Pod:
    def reached() -> client.V1Pod | None:
        node.agent.check_alive()
        pod = node.core.read_namespaced_pod(name, node.ns)
        return pod if pod.status.phase == phase else None

    try:
        return wait_for(reached, timeout, f"pod {name} {phase}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.agent.pod_log(node.ns, name)}") from None


def test_node_is_ready(node: Cluster):
    ready = next(c for c in node.core.read_node(node.agent.node_name).status.conditions
                 if c.type == "Ready")
    assert ready.status == "True"


def test_exit_code_termination_message_and_restart_policy(node: Cluster, tmp_path):
    make_pod(node, "exit3", "open('/dev/termination-log', 'w').write('bad value for x')\n"
                            "raise SystemExit(3)")
    make_pod(node, "fallback", "print('the last words'); raise SystemExit(1)",
             container={"terminationMessagePolicy": "FallbackToLogsOnError"})
    marker = tmp_path / "ran-once"
    make_pod(node, "flaky", "import os, sys\np = os.environ['MARKER']\n"
                            "if not os.path.exists(p):\n    open(p, 'w').close(); sys.exit(1)",
             restart="OnFailure", env={"MARKER": str(marker)})

    pod = wait_pod(node, "exit3", "Failed")
    term = pod.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason, term.message) == (3, "Error", "bad value for x")
    assert pod.status.pod_ip.startswith("127.") and pod.spec.node_name == node.agent.node_name

    term = wait_pod(node, "fallback", "Failed").status.container_statuses[0].state.terminated
    assert term.exit_code == 1 and "the last words" in term.message

    flaky = wait_pod(node, "flaky", "Succeeded").status.container_statuses[0]
    assert flaky.restart_count == 1 and flaky.state.terminated.exit_code == 0
    assert flaky.last_state.terminated.exit_code == 1
    # The host's own /etc/hosts and /dev/termination-log content are not the pods'.
    host_log = Path("/dev/termination-log")
    assert not host_log.exists() or "bad value" not in host_log.read_text()


def test_service_names_resolve_to_pod_addresses_inside_pods(node: Cluster):
    node.core.create_namespaced_service(node.ns, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "peer"},
        "spec": {"clusterIP": "None", "selector": {"app": "peer"},
                 "ports": [{"port": 2222}]}})
    make_pod(node, "peer", "import os, socket, time\n"
                           "s = socket.socket(); s.bind((os.environ['POD_IP'], 2222))\n"
                           "s.listen(); c, _ = s.accept(); c.sendall(b'hello from peer')",
             labels={"app": "peer"})
    peer_ip = wait_pod(node, "peer", "Running").status.pod_ip
    make_pod(node, "asker", "import os, socket\n"
                            f"host = 'peer.{node.ns}.svc'\n"
                            "print(host, socket.gethostbyname(host))\n"
                            "print(socket.create_connection((host, 2222)).recv(100))")
    wait_pod(node, "asker", "Succeeded")
    wait_pod(node, "peer", "Succeeded")
    log = node.agent.pod_log(node.ns, "asker")
    assert f"peer.{node.ns}.svc {peer_ip}" in log and "hello from peer" in log, log
    assert f"peer.{node.ns}" not in Path("/etc/hosts").read_text()


def test_deletion_waits_the_grace_period_then_kills(node: Cluster):
    make_pod(node, "stubborn", "import signal, time\n"
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "print('ignoring SIGTERM', flush=True); time.sleep(600)")
    wait_pod(node, "stubborn", "Running")
    pid = node.pod_pid("stubborn")
    wait_for(lambda: "ignoring SIGTERM" in node.agent.pod_log(node.ns, "stubborn"), 30,
             "the handler in place")
    started = time.monotonic()
    node.core.delete_namespaced_pod("stubborn", node.ns, grace_period_seconds=3)
    wait_for(lambda: not node.core.list_namespaced_pod(node.ns).items, 30, "the pod gone")
    took = time.monotonic() - started
    assert not os.path.exists(f"/proc/{pid}")
    assert took >= 2.5, took  # the 3 s grace period was honoured before the kill
    assert "exited with code 137" in node.agent.pod_log(node.ns, "stubborn")


def test_gang_is_bound_all_or_none(node: Cluster, kube_api: client.ApiClient, podgroup_crd):
    podgroup_crd()
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        "scheduling.x-k8s.io", "v1alpha1", node.ns, "podgroups",
        {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
         "metadata": {"name": "g"}, "spec": {"minMember": 3}})
    labels = {"scheduling.x-k8s.io/pod-group": "g"}
    for name in ("g-0", "g-1"):
        make_pod(node, name, "pass", labels=labels)
    # A solitary pod without the gang label is bound at once.
    make_pod(node, "solo", "pass")
    wait_pod(node, "solo", "Succeeded")
    time.sleep(2)
    pods = {p.metadata.name: p for p in node.core.list_namespaced_pod(node.ns).items}
    assert pods["g-0"].spec.node_name is None and pods["g-1"].spec.node_name is None
    make_pod(node, "g-2", "pass", labels=labels)
    for name in ("g-0", "g-1", "g-2"):
        assert wait_pod(node, name, "Succeeded").spec.node_name == node.agent.node_name
