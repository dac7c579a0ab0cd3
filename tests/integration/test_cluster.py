"""The test control plane is a real one: CRD schemas, garbage collection, namespace deletion,
RBAC with ServiceAccount tokens, and the built kubectl and helm all behave as in a cluster."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import apply_yaml, service_account_client, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubelearn"


def _gone(read) -> bool:
    """True once `read()` answers 404."""
    try:
        read()
    except client.ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _api_error(exc: client.ApiException) -> str:
    """The server's message from an API error body."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(exc.body)


def _run(
    argv: list[str], cp: ControlPlane, stdin: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **cp.env},
        check=False,
    )


def test_server_reports_built_version(control_plane: ControlPlane, kube_api: client.ApiClient):
    info = client.VersionApi(kube_api).get_code()
    assert (int(info.major), int(info.minor.rstrip("+"))) >= (1, 34), info
    out = _run([*control_plane.kubectl, "version", "-o", "json"], control_plane)
    assert out.returncode == 0, out.stderr
    versions = json.loads(out.stdout)
    assert versions["serverVersion"]["gitVersion"] == info.git_version
    assert versions["clientVersion"]["gitVersion"] == info.git_version


@pytest.mark.parametrize("component", ["kubelet", "scheduler", "proxy"])
def test_node_components_are_built_at_the_server_version(
    control_plane: ControlPlane, kube_api: client.ApiClient, component: str
):
    info = client.VersionApi(kube_api).get_code()
    out = _run([str(control_plane.kubecp), component, "--version"], control_plane)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["Kubernetes", info.git_version]


def _experiment(name: str, spec: dict) -> dict:
    return {
        "apiVersion": "kubelearn.dev/v1alpha1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": spec,
    }


def test_experiment_crd_established_and_schema_enforced(
    experiment_crd: Path, kube_api: client.ApiClient, namespace: str
):
    co = client.CustomObjectsApi(kube_api)
    args = ("kubelearn.dev", "v1alpha1", namespace, "experiments")
    good = _experiment(
        "linear",
        {"experimentFn": "kubelearn.examples.linear:experiment_fn", "replicas": {"worker": 2}},
    )
    created = co.create_namespaced_custom_object(*args, good)
    assert created["spec"]["replicas"] == {"worker": 2}

    negative = _experiment(
        "negative",
        {"experimentFn": "kubelearn.examples.linear:experiment_fn", "replicas": {"worker": -1}},
    )
    with pytest.raises(client.ApiException) as exc:
        co.create_namespaced_custom_object(*args, negative)
    assert exc.value.status == 422
    assert "spec.replicas.worker" in _api_error(exc.value)

    missing = _experiment("missing", {"replicas": {"worker": 1}})
    with pytest.raises(client.ApiException) as exc:
        co.create_namespaced_custom_object(*args, missing)
    assert exc.value.status == 422
    assert "spec.experimentFn" in _api_error(exc.value)

    names = [o["metadata"]["name"] for o in co.list_namespaced_custom_object(*args)["items"]]
    assert names == ["linear"]


def _pod(name: str, owner: client.V1ConfigMap | None = None) -> client.V1Pod:
    refs = None
    if owner is not None:
        refs = [
            client.V1OwnerReference(
                api_version="v1", kind="ConfigMap", name=owner.metadata.name, uid=owner.metadata.uid
            )
        ]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, owner_references=refs),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="busybox")]),
    )


def test_garbage_collector_deletes_owned_pod(kube_api: client.ApiClient, namespace: str):
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    core.create_namespaced_pod(namespace, _pod("owned", owner))
    core.create_namespaced_pod(namespace, _pod("bystander"))

    core.delete_namespaced_config_map("owner", namespace)

    wait_for(
        lambda: _gone(lambda: core.read_namespaced_pod("owned", namespace)),
        60,
        "the garbage collector to delete the pod owned by the deleted ConfigMap",
    )
    assert core.read_namespaced_pod("bystander", namespace).metadata.deletion_timestamp is None


def test_namespace_controller_empties_and_removes_namespace(kube_api: client.ApiClient):
    core = client.CoreV1Api(kube_api)
    name = "doomed-namespace"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"))
    )
    core.delete_namespace(name)
    wait_for(
        lambda: _gone(lambda: core.read_namespace(name)),
        60,
        "the namespace controller to finalize the deleted namespace",
    )


def test_rbac_service_account_needs_role_binding(kube_api: client.ApiClient, namespace: str):
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    sa_core = client.CoreV1Api(service_account_client(kube_api, namespace, "reader"))

    with pytest.raises(client.ApiException) as exc:
        sa_core.list_namespaced_pod(namespace)
    assert exc.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in _api_error(exc.value)

    apply_yaml(
        kube_api,
        f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-reads-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {namespace}}}
""",
        namespace,
    )
    pods = wait_for(
        lambda: sa_core.list_namespaced_pod(namespace),
        30,
        "the RoleBinding to let the ServiceAccount list pods",
    )
    assert pods.items == []
    # Only where the binding is: other namespaces stay forbidden.
    with pytest.raises(client.ApiException) as exc:
        sa_core.list_namespaced_pod("default")
    assert exc.value.status == 403


def test_built_kubectl_applies_manifest(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str, tmp_path: Path
):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        """
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {learning_rate: "0.01"}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: trainer}
"""
    )
    out = _run(
        [*control_plane.kubectl, "apply", "-n", namespace, "-f", str(manifest)], control_plane
    )
    assert out.returncode == 0, out.stderr
    assert "configmap/settings created" in out.stdout
    assert "serviceaccount/trainer created" in out.stdout
    core = client.CoreV1Api(kube_api)
    assert core.read_namespaced_config_map("settings", namespace).data == {"learning_rate": "0.01"}
    assert core.read_namespaced_service_account("trainer", namespace).metadata.name == "trainer"


def test_helm_template_passes_server_side_dry_run(
    control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str
):
    rendered = _run(
        [
            str(control_plane.helm),
            "template",
            "kubelearn",
            str(CHART),
            "--namespace",
            namespace,
            "--include-crds",
            "--kube-version",
            client.VersionApi(kube_api).get_code().git_version,
        ],
        control_plane,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {d["kind"] for d in docs} >= {
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
    }

    dry = _run(
        [
            *control_plane.kubectl,
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",  # validity is the point here, not field ownership
            "-n",
            namespace,
            "-f",
            "-",
        ],
        control_plane,
        stdin=rendered.stdout,
    )
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert all(line.endswith("(server dry run)") for line in lines), dry.stdout
    assert sorted(line.split()[0].split("/", 1)[1] for line in lines) == sorted(
        d["metadata"]["name"] for d in docs
    )
    # A dry run stores nothing.
    apps = client.AppsV1Api(kube_api)
    assert _gone(lambda: apps.read_namespaced_deployment("kubelearn", namespace))


def test_chart_service_account_has_what_the_operator_needs_and_no_more(
    control_plane: ControlPlane,
    kube_api: client.ApiClient,
    experiment_crd: Path,
    namespace: str,
):
    release = f"rbac-{namespace[-6:]}"  # cluster-scoped names must not collide across tests
    rendered = _run(
        [str(control_plane.helm), "template", release, str(CHART), "--namespace", namespace],
        control_plane,
    )
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    sa_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
    role_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "ClusterRole")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    try:
        apply_yaml(kube_api, rendered.stdout, namespace)
        sa_api = service_account_client(kube_api, namespace, sa_name)
        co = client.CustomObjectsApi(sa_api)
        core = client.CoreV1Api(sa_api)
        # Watching experiments in every namespace, and the pods it runs them as.
        wait_for(
            lambda: co.list_cluster_custom_object("kubelearn.dev", "v1alpha1", "experiments"),
            30,
            "the chart's ClusterRoleBinding to let the operator list experiments",
        )
        pod = core.create_namespaced_pod(namespace, _pod("replica-0"))
        assert pod.metadata.name == "replica-0"
        core.create_namespaced_service(
            namespace,
            client.V1Service(
                metadata=client.V1ObjectMeta(name="replica-0"),
                spec=client.V1ServiceSpec(cluster_ip="None", selector={"r": "0"}),
            ),
        )
        # Nothing beyond that: no reading secrets, no namespaces (serving all of them, the
        # operator never lists them).
        for forbidden in (
            lambda: core.list_namespaced_secret(namespace),
            lambda: core.list_namespace(),
            lambda: core.delete_namespace(namespace),
        ):
            with pytest.raises(client.ApiException) as exc:
                forbidden()
            assert exc.value.status == 403
    finally:
        rbac.delete_cluster_role_binding(role_name)
        rbac.delete_cluster_role(role_name)
