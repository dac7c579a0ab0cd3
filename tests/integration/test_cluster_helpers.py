"""The helpers other tests build on: YAML loading and applying, ServiceAccount tokens, wait_for."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from kubernetes import client

from tests.cluster.helpers import (
    apply_yaml,
    load_yaml_documents,
    service_account_token,
    wait_for,
)


def test_wait_for_returns_first_truthy_value():
    calls = iter([None, 0, "", {"phase": "Running"}])
    assert wait_for(lambda: next(calls), 5, "a value", interval=0) == {"phase": "Running"}


def test_wait_for_timeout_reports_last_value():
    with pytest.raises(AssertionError) as exc:
        wait_for(lambda: [], 0.3, "the pod to run", interval=0.05)
    assert "the pod to run" in str(exc.value)
    assert "returned []" in str(exc.value)


def test_wait_for_timeout_reports_last_exception():
    def failing():
        raise LookupError("pod worker-0 not found")

    with pytest.raises(AssertionError) as exc:
        wait_for(failing, 0.3, "worker-0", interval=0.05)
    assert "raised LookupError: pod worker-0 not found" in str(exc.value)


def test_load_yaml_documents_from_text_path_and_list(tmp_path: Path):
    text = """
apiVersion: v1
kind: ConfigMap
metadata: {name: a}
---
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: b}}
- {apiVersion: v1, kind: Secret, metadata: {name: c}}
"""
    path = tmp_path / "objects.yaml"
    path.write_text(text)
    for source in (text, path, str(path)):
        docs = load_yaml_documents(source)
        assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
            ("ConfigMap", "a"),
            ("ConfigMap", "b"),
            ("Secret", "c"),
        ]


def test_load_yaml_documents_rejects_non_objects():
    with pytest.raises(ValueError, match="apiVersion and kind"):
        load_yaml_documents("metadata: {name: x}\n")


@pytest.mark.cluster
def test_apply_yaml_crd_then_custom_object_in_one_text(kube_api: client.ApiClient, namespace: str):
    group = f"{namespace}.kubelearn.test"  # unique per test: the CRD is cluster-scoped
    text = f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {{type: integer}}
---
apiVersion: {group}/v1
kind: Widget
metadata: {{name: small}}
spec: {{size: 1}}
"""
    try:
        crd, widget = apply_yaml(kube_api, text, namespace)
        assert crd["kind"] == "CustomResourceDefinition"
        assert widget["metadata"]["namespace"] == namespace
        got = client.CustomObjectsApi(kube_api).get_namespaced_custom_object(
            group, "v1", namespace, "widgets", "small"
        )
        assert got["spec"] == {"size": 1}
        # Applying again is a no-op update, not an error.
        (_, again) = apply_yaml(kube_api, text, namespace)
        assert again["metadata"]["uid"] == widget["metadata"]["uid"]
    finally:
        client.ApiextensionsV1Api(kube_api).delete_custom_resource_definition(f"widgets.{group}")


@pytest.mark.cluster
def test_service_account_token_is_bound_and_expires(kube_api: client.ApiClient, namespace: str):
    token = service_account_token(kube_api, namespace, "default", expiration_seconds=600)
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    assert claims["exp"] - claims["iat"] == 600
    review = client.AuthenticationV1Api(kube_api).create_token_review(
        client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
    )
    assert review.status.authenticated
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"
