"""The operator's own integration flows, run again with the chart's RBAC instead of admin.

The test below runs tests/integration/test_operator_*.py in a pytest session of their own
with this module as a plugin (``-p``). In that session every operator the flows start is
given, just before it starts, the chart's ServiceAccount, Role(s) and ClusterRole (the chart's
namespace scope, for exactly the namespaces that operator serves, as `helm template` renders
them) and a kubeconfig with a TokenRequest token of that account. At the end the plugin reads
the API server's audit log: every request of those accounts, and the 403s among them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.helpers import apply_yaml, client_for_token, service_account_token, wait_for
from tests.integration.test_chart import (
    CHART,
    CRD_RULES,
    NAMESPACE_RULES,
    NAMESPACED_RULES,
    STORAGE_CLASS_RULES,
    audit_of,
    forbidden,
    helm,
    load_yaml_documents,
    refused_by_admission,
    sa_username,
    used,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
REPORT_ENV = "KUBELEARN_CHART_FLOWS_REPORT"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_operator_flows_are_refused_nothing_with_the_chart_rbac(tmp_path: Path):
    flows = sorted((REPO / "tests" / "integration").glob("test_operator_*.py"))
    assert flows, "no operator integration flows found"
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "tests.integration.test_chart_flows", *map(str, flows)],
        env={**os.environ, REPORT_ENV: str(report)}, cwd=REPO, capture_output=True,
        text=True, timeout=1100, check=False)
    summary = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert report.exists(), f"the plugin wrote no report:\n{summary}"
    data = json.loads(report.read_text())
    # The flows themselves pass with the chart's permissions...
    assert proc.returncode == 0, summary
    assert data["operators"] >= len(flows), data
    # ...and the API server refused the chart's accounts nothing.
    assert data["forbidden"] == [], json.dumps(data, indent=1)
    # 403s from admission, not RBAC: only the flow that creates pods naming a missing
    # PriorityClass, to see the operator report it.
    for refusal in data["refused_by_admission"]:
        assert refusal.startswith("create /api/v1/namespaces/") and "/pods" in refusal, refusal
        assert "PriorityClass" in refusal or "priorityclass" in refusal.lower(), refusal
    granted = {**NAMESPACED_RULES, **CRD_RULES, **NAMESPACE_RULES, **STORAGE_CLASS_RULES}
    for key, verbs in data["used"].items():
        group, resource = key.split(" ", 1)
        assert set(verbs) <= granted.get((group, resource), set()), (key, verbs)
    print("verbs used in the flows:", json.dumps(data["used"], sort_keys=True))


# -- the plugin, active only in the session the test above starts ---------------------------
def _wait_until_allowed(kube_api: client.ApiClient, token: str,
                        namespaces: list[str]) -> None:
    """RBAC objects take effect a moment after they are stored; ask as the account itself
    (a self review is always allowed, so waiting adds no 403 of its own)."""
    auth = client.AuthorizationV1Api(client_for_token(kube_api, token))
    checks = [("kubelearn.dev", "experiments", ns) for ns in namespaces or [None]]
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

    wait_for(allowed, 30, "the chart's roles to take effect")


@pytest.fixture(scope="session", autouse=True)
def _operators_use_the_chart_rbac(request: pytest.FixtureRequest) -> Iterator[None]:
    report = os.environ.get(REPORT_ENV)
    if not report:
        yield
        return
    cp = request.getfixturevalue("control_plane")
    kube_api = request.getfixturevalue("kube_api")
    flows = sys.modules["tests.operator_stack"]
    original_start = flows.Operator.start
    users: list[str] = []
    workdir = Path(report).parent

    def start(self: Any) -> Any:
        release = f"flows-{len(users)}"
        if self.namespaces:  # the chart's namespace scope, for these namespaces
            home = self.namespaces[0]
            sets = ["rbac.scope=namespace",
                    "rbac.namespaces={" + ",".join(self.namespaces) + "}"]
        else:  # an operator of every namespace: the cluster scope
            home = "default"
            sets = ["rbac.scope=cluster"]
        args = ["template", release, str(CHART), "--namespace", home]
        for s in sets:
            args += ["--set", s]
        docs = [d for d in load_yaml_documents(helm(cp, *args)) if d["kind"] in RBAC_KINDS]
        apply_yaml(kube_api, yaml_dump(docs), home)
        sa_name = next(d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount")
        token = service_account_token(kube_api, home, sa_name, expiration_seconds=7200)
        _wait_until_allowed(kube_api, token, list(self.namespaces))
        kubeconfig = write_kubeconfig(workdir / f"{release}.kubeconfig", cp, token, home)
        self.env["KUBECONFIG"] = str(kubeconfig)
        users.append(sa_username(home, sa_name))
        return original_start(self)

    flows.Operator.start = start
    try:
        yield
    finally:
        flows.Operator.start = original_start
        time.sleep(1)  # the last requests' audit lines
        events = [e for user in users for e in audit_of(cp, user)
                  if e.get("objectRef", {}).get("apiGroup") != "authorization.k8s.io"]
        Path(report).write_text(json.dumps({
            "operators": len(users),
            "requests": len(events),
            "forbidden": forbidden(events),
            "refused_by_admission": refused_by_admission(events),
            "used": {f"{g} {r}": sorted(v) for (g, r), v in sorted(used(events).items())},
        }, indent=1))


def yaml_dump(docs: list[dict[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(docs)
