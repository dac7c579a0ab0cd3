"""The Helm chart: lint, what it renders, and the operator running with the chart's own
ServiceAccount token on the real control plane, refused nothing (the API server's audit log
counts every 403 the account gets).

There is no container runtime here, so the Deployment's pod never starts. In its place the
operator runs as a subprocess with the Deployment's own arguments and environment, as its
ServiceAccount (a TokenRequest token), which is what the pod would do.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelearn_operator.netpol import NetworkPolicyConfig, build_network_policy, parse_selector
from kubelearn_operator.objects import ExperimentRef
from kubelearn_operator.settings import Settings
from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import (
    client_for_token,
    load_yaml_documents,
    service_account_token,
    wait_for,
)
from tests.operator_stack import EXAMPLE, free_port, image_command

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kubelearn"

# What the operator does with each resource: the chart grants exactly these.
NAMESPACED_RULES = {
    ("kubelearn.dev", "experiments"): {"list", "watch", "get", "create", "patch", "delete"},
    ("kubelearn.dev", "experiments/status"): {"patch"},
    ("kubelearn.dev", "sweeps"): {"list", "watch"},
    ("kubelearn.dev", "sweeps/status"): {"patch"},
    ("", "pods"): {"list", "watch", "create", "delete"},
    ("", "services"): {"list", "watch", "get", "create", "delete"},
    ("", "secrets"): {"create", "get"},
    ("", "configmaps"): {"create", "patch"},
    ("", "events"): {"create"},
    ("scheduling.x-k8s.io", "podgroups"): {"create"},
    ("networking.k8s.io", "networkpolicies"): {"create"},
    ("", "persistentvolumeclaims"): {"get", "create"},
    ("apps", "deployments"): {"get", "create", "delete"},
}
CRD_RULES = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
#: Cluster-wide in both scopes: which class makes the model directory's claim.
STORAGE_CLASS_RULES = {("storage.k8s.io", "storageclasses"): {"list"}}
NAMESPACE_RULES = {("", "namespaces"): {"list", "watch"}}


# -- helpers ------------------------------------------------------------------------------
def _run(argv: list[str], cp: ControlPlane, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **cp.env}, check=False, cwd=REPO)


def helm(cp: ControlPlane, *args: str) -> str:
    out = _run([str(cp.helm), *args], cp)
    assert out.returncode == 0, f"helm {' '.join(args)}:\n{out.stderr}"
    return out.stdout


def render(cp: ControlPlane, namespace: str = "ml", *sets: str,
           release: str = "kl") -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    return load_yaml_documents(helm(cp, *args))


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = kinds(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs, refusing wildcards and resourceNames-less surprises."""
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "*" not in rule["apiGroups"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def sa_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def audit_of(cp: ControlPlane, user: str) -> list[dict[str, Any]]:
    """The audit events of one user. The log holds every ServiceAccount's requests of the
    session (the operator's tests run as the chart's accounts), so only the lines naming the
    user are parsed."""
    if cp.audit_log is None or not cp.audit_log.exists():
        return cp.audit_events()  # raises without an audit log
    events = []
    for line in cp.audit_log.read_text(errors="replace").splitlines():
        if user in line:
            with contextlib.suppress(ValueError):  # a line being written
                event = json.loads(line)
                if event.get("user", {}).get("username") == user:
                    events.append(event)
    return events


def _decision(event: dict[str, Any]) -> str:
    return (event.get("annotations") or {}).get("authorization.k8s.io/decision", "")


def forbidden(events: list[dict[str, Any]]) -> list[str]:
    """Requests that got 403 because RBAC did not allow them."""
    return [f"{e['verb']} {e['requestURI']}" for e in events
            if e.get("responseStatus", {}).get("code") == 403 and _decision(e) != "allow"]


def refused_by_admission(events: list[dict[str, Any]]) -> list[str]:
    """Requests RBAC allowed that an admission plugin answered with 403 (a pod naming a
    missing PriorityClass, say): not a permission the chart lacks. Creates refused in a
    namespace being deleted are left out: a cluster-wide operator meets those whenever an
    earlier test's namespace is still going with an Experiment in it."""
    return [f"{e['verb']} {e['requestURI']}: {e['responseStatus'].get('message', '')}"
            for e in events
            if e.get("responseStatus", {}).get("code") == 403 and _decision(e) == "allow"
            and "because it is being terminated" not in e["responseStatus"].get("message", "")]


def used(events: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource[/subresource]) -> verbs the account was allowed to use."""
    out: dict[tuple[str, str], set[str]] = {}
    for e in events:
        ref = e.get("objectRef")
        if not ref or e.get("responseStatus", {}).get("code") == 403:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.setdefault((ref.get("apiGroup", ""), resource), set()).add(e["verb"])
    return out


def write_kubeconfig(path: Path, cp: ControlPlane, token: str, namespace: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "kubecp", "cluster": {
            "server": cp.server, "certificate-authority": str(cp.ca_file)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {
            "cluster": "kubecp", "user": "sa", "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


class ChartOperator:
    """The operator run as the chart's Deployment would run it, outside a container."""

    def __init__(self, cp: ControlPlane, deployment: dict[str, Any], kubeconfig: Path,
                 log: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        namespace = deployment["metadata"]["namespace"]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == \
                    "metadata.namespace":
                env[var["name"]] = namespace  # the downward API's answer
            else:
                raise AssertionError(f"cannot resolve env {var} outside a pod")
        self.health_port, self.metrics_port = free_port(), free_port()
        env["KUBELEARN_METRICS_PORT"] = str(self.metrics_port)  # not the pod's own 9090
        self.chart_env = env
        self.env = {**os.environ, **cp.env, **env, "KUBECONFIG": str(kubeconfig),
                    "KUBELEARN_RESYNC_SECONDS": "2", "PYTHONUNBUFFERED": "1"}
        # The image's ENTRYPOINT (after tini) with the Deployment's args; the health endpoint
        # on a free loopback port instead of the pod's own.
        health = f"--liveness=http://0.0.0.0:{container['ports'][0]['containerPort']}/healthz"
        args = container.get("args", [])
        assert health in args, args
        args = [a if a != health else f"--liveness=http://127.0.0.1:{self.health_port}/healthz"
                for a in args]
        self.argv = [*image_command(), *args]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChartOperator:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        wait_for(self.healthy, 60, "the operator's health endpoint")
        return self

    def healthy(self) -> bool:
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def release_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A namespace for the chart's release, as `kubelearn-system` would be."""
    core = client.CoreV1Api(kube_api)
    name = f"kubelearn-system-{os.urandom(3).hex()}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def install(control_plane: ControlPlane, kube_api: client.ApiClient,
            experiment_crd: Path) -> Iterator[Any]:
    """helm install into a namespace; uninstalled after the test."""
    installed: list[tuple[str, str]] = []

    def do(release: str, namespace: str, *sets: str) -> dict[str, Any]:
        args = ["install", release, str(CHART), "--namespace", namespace, "--wait=false"]
        for s in sets:
            args += ["--set", s]
        helm(control_plane, *args)
        installed.append((release, namespace))
        apps = client.AppsV1Api(kube_api)
        return _api_dict(apps.read_namespaced_deployment(f"{release}-kubelearn", namespace))

    yield do
    for release, namespace in installed:
        _run([str(control_plane.helm), "uninstall", release, "--namespace", namespace],
             control_plane)


def _api_dict(obj: Any) -> dict[str, Any]:
    """A typed client object as its API (camelCase) JSON."""
    return client.ApiClient().sanitize_for_serialization(obj)


# -- lint and render -----------------------------------------------------------------------
def test_helm_lint_is_clean_in_every_mode(control_plane: ControlPlane):
    for sets in ([], ["rbac.scope=namespace"], ["networkPolicy.enabled=false"],
                 ["metrics.serviceMonitor.enabled=true"]):
        args = ["lint", "--strict", str(CHART)]
        for s in sets:
            args += ["--set", s]
        out = helm(control_plane, *args)
        assert "1 chart(s) linted, 0 chart(s) failed" in out
        assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_cluster_scope_grants_exactly_the_operator_verbs(control_plane: ControlPlane):
    docs = render(control_plane)
    assert not kinds(docs, "Role") and not kinds(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    assert rules_of(role) == {**NAMESPACED_RULES, **CRD_RULES, **STORAGE_CLASS_RULES}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                  "kind": "ClusterRole", "name": role["metadata"]["name"]}
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "ml"}]
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]


def test_namespace_scope_grants_the_verbs_in_its_namespaces_only(control_plane: ControlPlane):
    docs = render(control_plane, "ml", "rbac.scope=namespace", "rbac.namespaces={ml,team-b}")
    roles = kinds(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "team-b"]
    for role in roles:
        assert rules_of(role) == NAMESPACED_RULES
    bindings = kinds(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "team-b"]
    for b in bindings:
        assert b["subjects"][0]["namespace"] == "ml"  # the operator's account, in its home
    # Outside them: reading CRDs, namespaces and storage classes only.
    assert rules_of(one(docs, "ClusterRole")) == {**CRD_RULES, **NAMESPACE_RULES,
                                                  **STORAGE_CLASS_RULES}
    container = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--namespace=ml", "--namespace=team-b",
                                 "--liveness=http://0.0.0.0:8080/healthz"]
    # Without a list: the release namespace.
    docs = render(control_plane, "ml", "rbac.scope=namespace")
    assert [r["metadata"]["namespace"] for r in kinds(docs, "Role")] == ["ml"]


def test_network_policy_value_turns_off_the_rule_and_the_setting(control_plane: ControlPlane):
    for enabled in (True, False):
        docs = render(control_plane, "ml", f"networkPolicy.enabled={str(enabled).lower()}")
        rules = rules_of(one(docs, "ClusterRole"))
        assert (("networking.k8s.io", "networkpolicies") in rules) is enabled
        env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"][
            "containers"][0]["env"]}
        assert env["KUBELEARN_NETWORK_POLICY"]["value"] == str(enabled).lower()
        assert env["KUBELEARN_OPERATOR_NAMESPACE"]["valueFrom"] == {
            "fieldRef": {"fieldPath": "metadata.namespace"}}
        # The selector the operator puts in each policy matches the operator's own pods.
        selector = parse_selector(env["KUBELEARN_OPERATOR_SELECTOR"]["value"])
        pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert selector and selector.items() <= pod_labels.items()


def test_deployment_is_locked_down_and_probed(control_plane: ControlPlane):
    docs = render(control_plane)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532  # the Dockerfile's fixed uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "kubelearn/operator:0.1.0"
    sc = container["securityContext"]
    assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBELEARN_METRICS_PORT"] == "9090"
    assert env["KUBELEARN_RUNNER_IMAGE"] == "kubelearn/runner:0.1.0"
    assert container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    # The Service reaches the metrics and health ports of the operator's pods.
    service = one(docs, "Service")
    assert service["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"][
        "matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"},
        {"name": "health", "port": 8080, "targetPort": "health", "protocol": "TCP"}]


def test_service_monitor_is_optional(control_plane: ControlPlane):
    assert not kinds(render(control_plane), "ServiceMonitor")
    docs = render(control_plane, "ml", "metrics.serviceMonitor.enabled=true",
                  "metrics.serviceMonitor.labels.release=prom")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


@pytest.mark.parametrize(("value", "message"), [
    ("rbac.scope=everywhere", "/rbac/scope"),
    ("metrics.port=0", "/metrics/port"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("networkPolicy.enabled=maybe", "/networkPolicy/enabled"),
    ("imagee.tag=x", "imagee"),
])
def test_values_schema_names_the_bad_value(control_plane: ControlPlane, value, message):
    out = _run([str(control_plane.helm), "template", "kl", str(CHART), "--set", value],
               control_plane)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


def test_chart_crds_are_the_crds_files(control_plane: ControlPlane):
    out = helm(control_plane, "show", "crds", str(CHART))
    files = [(REPO / "crds" / name).read_text().strip()
             for name in ("experiments.kubelearn.dev.yaml", "sweeps.kubelearn.dev.yaml")]
    assert out.strip() == "\n\n".join(files)


def test_namespace_scope_passes_server_side_dry_run(
        control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str):
    rendered = helm(control_plane, "template", "kl", str(CHART), "--namespace", namespace,
                    "--set", "rbac.scope=namespace", "--set",
                    "metrics.service.type=NodePort")
    dry = subprocess.run(
        [*control_plane.kubectl, "apply", "--server-side", "--dry-run=server",
         "--force-conflicts", "-n", namespace, "-f", "-"],
        input=rendered, capture_output=True, text=True, timeout=120,
        env={**os.environ, **control_plane.env}, check=False)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert len(lines) == len(load_yaml_documents(rendered))
    assert all(line.endswith("(server dry run)") for line in lines), dry.stdout


# -- installed, and the operator as the chart's ServiceAccount ------------------------------
def _reconcile_example(cp: ControlPlane, kube_api: client.ApiClient, experiments: Any,
                       deployment: dict[str, Any], sa_name: str, release_ns: str,
                       tmp_path: Path) -> list[dict[str, Any]]:
    """Run the operator as the chart's account, take the example Experiment to Succeeded;
    return the account's audit events."""
    token = service_account_token(kube_api, release_ns, sa_name)
    kubeconfig = write_kubeconfig(tmp_path / "sa.kubeconfig", cp, token, release_ns)
    ns = experiments.ns
    body = yaml.safe_load(EXAMPLE.read_text())
    name = body["metadata"]["name"]
    with ChartOperator(cp, deployment, kubeconfig, tmp_path / "operator.log") as op:
        experiments.create(name, body["spec"])
        try:
            pods = experiments.wait_pods(
                name, {f"{name}-ps-0", f"{name}-worker-0", f"{name}-worker-1",
                       f"{name}-master-0"}, timeout=60)
            wait_for(lambda: len(experiments.services(name)) == 4, 30, "four services")
            core = client.CoreV1Api(kube_api)
            secret = core.read_namespaced_secret(f"{name}-kubelearn-token", ns)
            assert len(base64.b64decode(secret.data["token"])) == 64
            image = {p.spec.containers[0].image for p in pods.values()}
            assert image == {op.chart_env["KUBELEARN_RUNNER_IMAGE"]}
            experiments.run_all(name)
            wait_for(lambda: experiments.status(name).get("phase") == "Running", 30,
                     "phase Running")
            final = json.dumps({"step": 2000, "loss": 0.0123})
            for pod in sorted(pods, key=lambda p: "-master-" in p):  # the master last
                experiments.set_pod(pod, "Succeeded", exit_code=0, message=final)
            status = experiments.wait_phase(name, "Succeeded", timeout=60)
            assert status["step"] == 2000 and status["loss"] == pytest.approx(0.0123)
            # What `kubectl get exp` shows (the README's expected output).
            out = subprocess.run([*cp.kubectl, "get", "exp", "-n", ns], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            header, row = out.splitlines()[:2]
            assert header.split() == ["NAME", "PHASE", "REPLICAS", "STEP", "LOSS", "AGE"]
            assert row.split()[:2] == [name, "Succeeded"] and "2000" in row.split()
        except BaseException:
            print(op.tail())
            raise
        # The experiment's NetworkPolicy, as the operator builds it from the chart's settings.
        selector = parse_selector(op.chart_env["KUBELEARN_OPERATOR_SELECTOR"])
        exp = experiments.get(name)
        ref = ExperimentRef(name, ns, exp["metadata"]["uid"])
        policy = build_network_policy(name, ns, ref.owner_reference(), NetworkPolicyConfig(
            op.chart_env["KUBELEARN_OPERATOR_NAMESPACE"], selector))
        admin_net = client.NetworkingV1Api(kube_api)
        if "network_policy" in Settings.__dataclass_fields__:
            # The operator creates it.
            wait_for(lambda: admin_net.read_namespaced_network_policy(
                policy["metadata"]["name"], ns), 30, "the experiment's NetworkPolicy")
        else:
            # Until the operator creates it: made here with the operator's own token, so
            # the account may, and the API server takes the policy.
            net = client.NetworkingV1Api(client_for_token(kube_api, token))
            net.create_namespaced_network_policy(ns, policy)
        stored = _api_dict(admin_net.read_namespaced_network_policy(
            policy["metadata"]["name"], ns))
        assert stored["spec"] == policy["spec"]
        assert stored["metadata"]["ownerReferences"][0]["uid"] == ref.uid
        time.sleep(1)  # the last requests' audit lines
    return audit_of(cp, sa_username(release_ns, sa_name))


def test_installed_chart_operator_reconciles_as_its_service_account_cluster_scope(
        control_plane: ControlPlane, kube_api: client.ApiClient, install: Any,
        release_namespace: str, experiments: Any, tmp_path: Path):
    release = f"c{os.urandom(2).hex()}"
    deployment = install(release, release_namespace)
    sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    events = _reconcile_example(control_plane, kube_api, experiments, deployment, sa_name,
                                release_namespace, tmp_path)
    assert events, "the audit log has nothing from the chart's account"
    assert forbidden(events) == []
    assert refused_by_admission(events) == []
    granted = {**NAMESPACED_RULES, **CRD_RULES, **STORAGE_CLASS_RULES}
    for key, verbs in used(events).items():
        assert verbs <= granted.get(key, set()), (key, verbs)
    # The account did its work: every kind of object an experiment needs was created.
    by_kind = used(events)
    for key in (("", "pods"), ("", "services"), ("", "secrets"), ("", "events"),
                ("", "persistentvolumeclaims"), ("networking.k8s.io", "networkpolicies")):
        assert "create" in by_kind[key], key
    assert "patch" in by_kind[("kubelearn.dev", "experiments/status")]
    print("verbs used:", json.dumps({f"{g}/{r}": sorted(v) for (g, r), v in
                                     sorted(by_kind.items())}))


def test_installed_chart_operator_reconciles_as_its_service_account_namespace_scope(
        control_plane: ControlPlane, kube_api: client.ApiClient, install: Any,
        namespace: str, experiments: Any, tmp_path: Path):
    # The release and the Experiment share the namespace the operator serves.
    release = f"n{os.urandom(2).hex()}"
    deployment = install(release, namespace, "rbac.scope=namespace")
    sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        f"--namespace={namespace}", "--liveness=http://0.0.0.0:8080/healthz"]
    events = _reconcile_example(control_plane, kube_api, experiments, deployment, sa_name,
                                namespace, tmp_path)
    assert events
    assert forbidden(events) == []
    assert refused_by_admission(events) == []
    granted = {**NAMESPACED_RULES, **CRD_RULES, **NAMESPACE_RULES, **STORAGE_CLASS_RULES}
    for key, verbs in used(events).items():
        assert verbs <= granted.get(key, set()), (key, verbs)
    # Nothing of other namespaces: asked of the API server (as the admin, so the
    # account's audit stays clean), the account may not list pods in "default".
    review = client.AuthorizationV1Api(kube_api).create_subject_access_review(
        client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=sa_username(namespace, sa_name),
            groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            resource_attributes=client.V1ResourceAttributes(
                namespace="default", verb="list", resource="pods"))))
    assert review.status.allowed is False


def test_audit_log_counts_a_refusal(control_plane: ControlPlane, kube_api: client.ApiClient,
                                    namespace: str):
    # The 403 count above can fail: a request the account may not make shows up.
    token = service_account_token(kube_api, namespace, "default")
    core = client.CoreV1Api(client_for_token(kube_api, token))
    with pytest.raises(client.ApiException) as refused:
        core.list_namespaced_secret(namespace)
    assert refused.value.status == 403
    user = sa_username(namespace, "default")
    found = wait_for(lambda: forbidden(audit_of(control_plane, user)), 10, "the 403 audited")
    assert any(f"/api/v1/namespaces/{namespace}/secrets" in f for f in found)
    assert refused_by_admission(audit_of(control_plane, user)) == []
    assert Counter(e["verb"] for e in audit_of(control_plane, user))["list"] >= 1


def test_runner_pull_policy_reaches_the_operator_only_when_set(control_plane: ControlPlane):
    def env(*sets: str) -> dict[str, str | None]:
        (container,) = one(render(control_plane, "ml", *sets), "Deployment")["spec"][
            "template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    assert "KUBELEARN_RUNNER_IMAGE_PULL_POLICY" not in env()
    assert env("runnerImage.pullPolicy=Never")["KUBELEARN_RUNNER_IMAGE_PULL_POLICY"] == "Never"
