"""The operator's API client keeps idle connections as long as client-go does, and the
operator's start-up tunes the cycle collector; both without a server."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import pytest
from kubernetes_asyncio import client

from kubelearn_operator import __main__ as entry
from kubelearn_operator.kube import KEEPALIVE_SECONDS, KubeClient


def test_idle_connections_are_kept_as_long_as_client_go_keeps_them() -> None:
    async def build() -> float:
        configuration = client.Configuration(host="https://127.0.0.1:1")
        kube = KubeClient(configuration)
        try:
            return kube.api.rest_client.pool_manager.connector._keepalive_timeout
        finally:
            await kube.close()

    assert asyncio.run(build()) == KEEPALIVE_SECONDS == 90.0


def test_the_keepalive_attribute_is_the_one_aiohttp_reads() -> None:
    async def build() -> float:
        connector = aiohttp.TCPConnector(keepalive_timeout=7.0)
        try:
            return connector._keepalive_timeout
        finally:
            await connector.close()

    assert asyncio.run(build()) == 7.0


def test_start_up_freezes_its_objects_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        entry.tune_gc()
        assert gc.get_threshold() == entry.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_resource_table_makes_every_path_the_operator_uses():
    from kubelearn_operator.kube import CLAIMS, EXPERIMENTS, PODGROUPS, STORAGE_CLASSES, SWEEPS

    assert CLAIMS.path("ml", "c") == "/api/v1/namespaces/ml/persistentvolumeclaims/c"
    assert EXPERIMENTS.path("ml") == "/apis/kubelearn.dev/v1alpha1/namespaces/ml/experiments"
    assert SWEEPS.path("ml", "s", subresource="status") == (
        "/apis/kubelearn.dev/v1alpha1/namespaces/ml/sweeps/s/status")
    assert STORAGE_CLASSES.path() == "/apis/storage.k8s.io/v1/storageclasses"
    assert PODGROUPS.group_version == "/apis/scheduling.x-k8s.io/v1alpha1"
    with pytest.raises(ValueError, match="namespaced"):
        CLAIMS.path()
