"""pytest plugin: one real control plane per session, a fresh namespace per test.

Load it with `pytest_plugins = ["tests.cluster.fixtures"]`. When the selected tests use
`control_plane`, the binaries are built (or reused) through build.sh right after collection,
before any test runs, so a cold build of several minutes counts against no test's timeout; its
progress shows on the terminal even under output capture. The first test that asks for
`control_plane` starts it; it is stopped at the end of the session, and at interpreter exit
if the session dies first (and the processes die with this one if it is killed outright).
"""

from __future__ import annotations

import atexit
import contextlib
import re
import secrets
import sys
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from tests.cluster.build import ensure_built
from tests.cluster.controlplane import ControlPlane, start_control_plane
from tests.cluster.helpers import wait_for
from tests.session_build import BuiltOnce, terminal_output

_BINARIES = BuiltOnce(lambda progress: ensure_built(progress=progress))


def pytest_collection_finish(session: pytest.Session) -> None:
    _BINARIES.before_tests(session, "control_plane")


@pytest.fixture(scope="session")
def control_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, for the whole session."""
    binaries = _BINARIES.get(request.config)
    with terminal_output(request.config):
        # Audit ServiceAccounts' requests: tests count what the chart's account was refused.
        cp = start_control_plane(binaries.kubecp, binaries.helm, progress=sys.stderr,
                                 audit_log=True)
    atexit.register(cp.stop)  # a crash past the finalizer still ends the processes
    try:
        yield cp
    finally:
        cp.stop()
        atexit.unregister(cp.stop)


#: The default StorageClass, as kind and most clusters have one. Nothing provisions it
#: here (no kubelet mounts volumes; the node agent's processes share one filesystem), so
#: claims of it stay Pending; the real node (tests/node) has a real provisioner.
DEFAULT_STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "standard", "annotations": {
        "storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "kubernetes.io/no-provisioner",
    "volumeBindingMode": "WaitForFirstConsumer",
}


def ensure_default_storage_class(api: client.ApiClient) -> None:
    """Create :data:`DEFAULT_STORAGE_CLASS` unless it is there."""
    try:
        client.StorageV1Api(api).create_storage_class(DEFAULT_STORAGE_CLASS)
    except client.ApiException as error:
        if error.status != 409:  # 409: there already
            raise


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    """An ApiClient with admin (system:masters) credentials, loaded from the kubeconfig;
    the cluster has a default StorageClass (:data:`DEFAULT_STORAGE_CLASS`)."""
    api = config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    try:
        ensure_default_storage_class(api)
        yield api
    finally:
        api.close()


def _namespace_name(nodeid: str) -> str:
    """A readable, unique DNS-1123 label from the test's name."""
    base = re.sub(r"[^a-z0-9]+", "-", nodeid.rsplit("::", 1)[-1].lower()).strip("-")
    return f"{base[:40].rstrip('-') or 'test'}-{secrets.token_hex(3)}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount in place), deleted after the test."""
    core = client.CoreV1Api(kube_api)
    name = _namespace_name(request.node.nodeid)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        # The ServiceAccount admission plugin rejects pods until "default" exists.
        wait_for(
            lambda: core.read_namespaced_service_account("default", name),
            timeout=30,
            description=f"ServiceAccount {name}/default from the controller-manager",
        )
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name)
