"""Fixtures for operator tests on the real control plane: Experiment access with a stand-in
kubelet that writes pod status through the API (tests/cluster/resources.py), and the
credentials every operator a test starts runs with: the chart's (the CRDs and the operator
process come from tests/operator_stack.py).

Each operator is given, just before it starts, the chart's ServiceAccount, Role(s) and
ClusterRole, as `helm template` renders them (the chart's namespace scope for exactly the
namespaces that operator serves; its cluster scope for one of every namespace), and a
kubeconfig with a TokenRequest token of that account. After the test, once its operators
have stopped, the API server's audit log must show that the accounts made requests, were
refused none by RBAC, and used no verb the chart does not grant.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import client_for_token, service_account_token, wait_for
from tests.cluster.resources import GROUP, PLURAL, VERSION, Experiments, pod_uids
from tests.integration.test_chart import (
    CHART,
    CRD_RULES,
    NAMESPACE_RULES,
    NAMESPACED_RULES,
    STORAGE_CLASS_RULES,
    forbidden,
    helm,
    load_yaml_documents,
    refused_by_admission,
    sa_username,
    used,
    write_kubeconfig,
)
from tests.operator_stack import Operator

__all__ = ["GROUP", "PLURAL", "VERSION", "Experiments", "pod_uids"]

RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
#: What the chart grants in either scope.
GRANTED = {**NAMESPACED_RULES, **CRD_RULES, **NAMESPACE_RULES, **STORAGE_CLASS_RULES}
#: (group resource) -> verbs the chart's accounts used, over the session.
USED: dict[str, set[str]] = {}


@pytest.fixture
def experiments(kube_api: client.ApiClient, namespace: str,
                experiment_crd: Path) -> Experiments:
    return Experiments(kube_api, namespace)


# -- the chart's account for every operator ---------------------------------------------------
class ChartAccounts:
    """The chart's RBAC and a token for each operator of one test, and the audit check."""

    def __init__(self, cp: ControlPlane, api: client.ApiClient, workdir: Path) -> None:
        assert cp.audit_log is not None, "the control plane audits ServiceAccounts"
        self.cp, self.api, self.workdir = cp, api, workdir
        self.users: list[str] = []
        self.cluster_objects: list[tuple[str, str]] = []  # (kind, name)
        self.audit_offset = cp.audit_log.stat().st_size if cp.audit_log.exists() else 0

    def __call__(self, op: Operator) -> None:
        release = f"it-{secrets.token_hex(3)}"
        if op.namespaces:  # the chart's namespace scope, for these namespaces
            home = op.namespaces[0]
            sets = ["rbac.scope=namespace", "rbac.namespaces={" + ",".join(op.namespaces) + "}"]
        else:  # an operator of every namespace: the cluster scope
            home = "default"
            sets = ["rbac.scope=cluster"]
        args = ["template", release, str(CHART), "--namespace", home]
        for s in sets:
            args += ["--set", s]
        docs = [d for d in load_yaml_documents(helm(self.cp, *args)) if d["kind"] in RBAC_KINDS]
        for doc in sorted(docs, key=lambda d: RBAC_KINDS.index(d["kind"])):
            self._create(doc, home)
        sa_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        token = service_account_token(self.api, home, sa_name, expiration_seconds=7200)
        self._wait_until_allowed(token, op.namespaces)
        op.env["KUBECONFIG"] = str(write_kubeconfig(
            self.workdir / f"{release}.kubeconfig", self.cp, token, home))
        self.users.append(sa_username(home, sa_name))

    def _create(self, doc: dict[str, Any], home: str) -> None:
        rbac, core = client.RbacAuthorizationV1Api(self.api), client.CoreV1Api(self.api)
        kind, name = doc["kind"], doc["metadata"]["name"]
        namespace = doc["metadata"].get("namespace") or home
        if kind == "ServiceAccount":
            core.create_namespaced_service_account(namespace, doc)
        elif kind == "Role":
            rbac.create_namespaced_role(namespace, doc)
        elif kind == "RoleBinding":
            rbac.create_namespaced_role_binding(namespace, doc)
        elif kind == "ClusterRole":
            rbac.create_cluster_role(doc)
            self.cluster_objects.append((kind, name))
        else:
            rbac.create_cluster_role_binding(doc)
            self.cluster_objects.append((kind, name))

    def _wait_until_allowed(self, token: str, namespaces: list[str]) -> None:
        """RBAC objects take effect a moment after they are stored; ask as the account itself
        (a self review is always allowed, so waiting adds no 403 of its own)."""
        auth = client.AuthorizationV1Api(client_for_token(self.api, token))
        checks = [(GROUP, PLURAL, ns) for ns in namespaces or [None]]
        checks.append(("apiextensions.k8s.io", "customresourcedefinitions", None))
        if namespaces:
            checks.append(("", "namespaces", None))

        def allowed() -> bool:
            for group, resource, namespace in checks:
                review = auth.create_self_subject_access_review(client.V1SelfSubjectAccessReview(
                    spec=client.V1SelfSubjectAccessReviewSpec(
                        resource_attributes=client.V1ResourceAttributes(
                            namespace=namespace, verb="watch", group=group,
                            resource=resource))))
                if not review.status.allowed:
                    return False
            return True

        try:
            wait_for(allowed, 30, "the chart's roles to take effect", interval=0.05)
        finally:
            auth.api_client.close()

    def events(self) -> list[dict[str, Any]]:
        """The accounts' audit events since the test began (the access reviews left out).

        A request the API server refuses is logged before its answer is sent, so every 403
        an operator got is here once it has stopped."""
        assert self.cp.audit_log is not None
        with self.cp.audit_log.open("rb") as log:
            log.seek(self.audit_offset)
            lines = log.read().decode(errors="replace").splitlines()
        users = set(self.users)
        events = []
        for line in lines:
            if not any(user in line for user in users):
                continue
            try:
                event = json.loads(line)
            except ValueError:  # a line being written: a request still under way
                continue
            if (event.get("user", {}).get("username") in users
                    and event.get("objectRef", {}).get("apiGroup") != "authorization.k8s.io"):
                events.append(event)
        return events

    def check(self) -> None:
        events = self.events()
        seen = {e["user"]["username"] for e in events}
        assert seen == set(self.users), f"nothing in the audit log from {set(self.users) - seen}"
        # The API server refused the chart's accounts nothing...
        assert forbidden(events) == [], "refused by RBAC:\n" + "\n".join(forbidden(events))
        # ...but admission may, for a reason that is no permission: a pod naming a missing
        # PriorityClass, which the operator reports.
        for refusal in refused_by_admission(events):
            assert refusal.startswith("create /api/v1/namespaces/") and "/pods" in refusal, \
                refusal
            assert "priorityclass" in refusal.lower(), refusal
        for (group, resource), verbs in used(events).items():
            assert verbs <= GRANTED.get((group, resource), set()), (group, resource, verbs)
            USED.setdefault(f"{group} {resource}", set()).update(verbs)

    def remove(self) -> None:
        """The cluster-wide objects (the namespaced ones go with the test's namespaces)."""
        rbac = client.RbacAuthorizationV1Api(self.api)
        for kind, name in self.cluster_objects:
            try:
                if kind == "ClusterRole":
                    rbac.delete_cluster_role(name)
                else:
                    rbac.delete_cluster_role_binding(name)
            except client.ApiException as error:
                if error.status != 404:
                    raise


@pytest.fixture
def operator_credentials(control_plane: ControlPlane, kube_api: client.ApiClient,
                         tmp_path: Path) -> Iterator[ChartAccounts]:
    """Every operator the test starts runs as the chart's ServiceAccount, with its RBAC; once
    they have stopped, the audit log is checked (see the module's docstring)."""
    accounts = ChartAccounts(control_plane, kube_api, tmp_path)
    yield accounts
    try:
        if accounts.users:
            accounts.check()
    finally:
        accounts.remove()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if USED:
        terminalreporter.write_line("verbs the chart's accounts used in the operator's tests: "
                                    + json.dumps({k: sorted(v) for k, v in sorted(USED.items())}))
