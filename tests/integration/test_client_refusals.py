"""How the operator's API client reads the real API server's refusals."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes import client

from kubelearn_operator.kube import ApiError, KubeClient
from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import wait_for

pytestmark = pytest.mark.cluster

HOLD = "kubelearn.dev/test-hold"


def test_a_create_in_a_namespace_being_deleted_reads_as_namespace_terminating(
        control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    # A finalizer nobody removes keeps the namespace terminating while the test looks.
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "held",
                                                               "finalizers": [HOLD]}})
    core.delete_namespace(namespace)
    wait_for(lambda: core.read_namespace(namespace).status.phase == "Terminating", 30,
             f"namespace {namespace} terminating")

    async def scenario() -> tuple[ApiError, ApiError]:
        kube = await KubeClient.connect(str(control_plane.kubeconfig), qps=20, burst=30)
        try:
            pod = {"metadata": {"name": "late"},
                   "spec": {"containers": [{"name": "c", "image": "none"}]}}
            with pytest.raises(ApiError) as terminating:
                await kube.create(f"/api/v1/namespaces/{namespace}/pods", pod)
            quota = {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "not a quantity"}}}
            with pytest.raises(ApiError) as invalid:
                await kube.create(f"/api/v1/namespaces/{namespace}/resourcequotas", quota)
            return terminating.value, invalid.value
        finally:
            await kube.close()

    try:
        terminating, other = asyncio.run(scenario())
        assert terminating.status == 403 and terminating.namespace_terminating
        assert not other.namespace_terminating
    finally:
        core.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
