"""Helpers for tests against the real control plane: apply YAML, act as a ServiceAccount, wait.

They take a `kubernetes.client.ApiClient`, so the same helpers serve the admin client and a
least-privilege client made from a ServiceAccount token.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import ResourceNotFoundError

T = TypeVar("T")

FIELD_MANAGER = "kubelearn-tests"


def load_yaml_documents(path_or_text: str | Path) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML file (a Path, or a str naming an existing file) or text."""
    if isinstance(path_or_text, Path):
        text = path_or_text.read_text()
    elif "\n" not in path_or_text and Path(path_or_text).is_file():
        text = Path(path_or_text).read_text()
    else:
        text = path_or_text
    docs = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ValueError(f"not a Kubernetes object (needs apiVersion and kind): {doc!r:.200}")
        if doc["kind"].endswith("List") and "items" in doc:
            docs.extend(doc["items"])
        else:
            docs.append(doc)
    return docs


def _resource(dyn: dynamic.DynamicClient, api_version: str, kind: str, timeout: float) -> Any:
    """Look up a resource by apiVersion/kind, refreshing discovery until a new CRD's kind shows."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return dyn.resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError:
            if time.monotonic() >= deadline:
                raise
            dyn.resources.invalidate_cache()
            time.sleep(0.5)


def apply_yaml(
    api_client: client.ApiClient,
    path_or_text: str | Path,
    namespace: str | None = None,
    *,
    discovery_timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Server-side apply every object of a YAML file or text; return the objects as stored.

    Namespaced objects without metadata.namespace go to `namespace` (or "default").
    Objects whose kind is not yet served (a CRD applied just before) are retried until
    discovery shows them or `discovery_timeout` passes.
    """
    docs = load_yaml_documents(path_or_text)
    # A private discovery cache: the client's default file is keyed by host:port only, so a
    # later control plane on a reused port would start from this one's resource list.
    with tempfile.TemporaryDirectory(prefix="kubelearn-discovery-") as cache_dir:
        dyn = dynamic.DynamicClient(api_client, cache_file=os.path.join(cache_dir, "cache.json"))
        return [_apply_one(dyn, obj, namespace, discovery_timeout) for obj in docs]


def _apply_one(
    dyn: dynamic.DynamicClient, obj: dict[str, Any], namespace: str | None, timeout: float
) -> dict[str, Any]:
    """Server-side apply one object (forcing conflicts: the test is the one owner)."""
    res = _resource(dyn, obj["apiVersion"], obj["kind"], timeout)
    meta = obj.setdefault("metadata", {})
    ns = None
    if res.namespaced:
        ns = meta.get("namespace") or namespace or "default"
        meta["namespace"] = ns
    result = dyn.server_side_apply(
        res,
        body=obj,
        name=meta["name"],
        namespace=ns,
        field_manager=FIELD_MANAGER,
        force_conflicts=True,
    )
    return result.to_dict()


def service_account_token(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    expiration_seconds: int = 3600,
    audiences: Iterable[str] = (),
) -> str:
    """A bound token for ServiceAccount namespace/name from the TokenRequest API."""
    spec = client.V1TokenRequestSpec(
        audiences=list(audiences), expiration_seconds=expiration_seconds
    )
    resp = client.CoreV1Api(api_client).create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec=spec)
    )
    return resp.status.token


def client_for_token(api_client: client.ApiClient, token: str) -> client.ApiClient:
    """An ApiClient for the same server and CA as `api_client`, authenticating with `token`."""
    base = api_client.configuration
    cfg = client.Configuration()
    cfg.host = base.host
    cfg.ssl_ca_cert = base.ssl_ca_cert
    cfg.verify_ssl = base.verify_ssl
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(cfg)


def service_account_client(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    expiration_seconds: int = 3600,
) -> client.ApiClient:
    """An ApiClient acting as ServiceAccount namespace/name (token from the TokenRequest API)."""
    token = service_account_token(api_client, namespace, name, expiration_seconds)
    return client_for_token(api_client, token)


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    description: str,
    interval: float = 0.2,
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    An exception from the predicate counts as "not yet". On timeout, raise AssertionError
    naming `description` and what the predicate last returned or raised, so a failing test
    says what it saw instead of only that it waited.
    """
    deadline = time.monotonic() + timeout
    last: str = "predicate never ran"
    while True:
        try:
            value = predicate()
        except Exception as exc:  # "not yet"; reported on timeout
            last = f"raised {type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = f"returned {value!r}"
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {description}; last {last}"
            )
        time.sleep(interval)


def apply_crd(api_client: client.ApiClient, path: str | Path, timeout: float = 30
              ) -> dict[str, Any]:
    """Applies a CustomResourceDefinition file and waits until it is Established (and its
    names accepted); returns the CRD as applied."""
    (crd,) = apply_yaml(api_client, path)
    ext = client.ApiextensionsV1Api(api_client)

    def established() -> dict[str, str]:
        got = ext.read_custom_resource_definition(crd["metadata"]["name"])
        conds = {c.type: c.status for c in got.status.conditions or []}
        if conds.get("Established") == "True" and conds.get("NamesAccepted") == "True":
            return conds
        raise AssertionError(f"conditions {conds}")  # reported by wait_for on timeout

    wait_for(established, timeout, f"the CRD {crd['metadata']['name']} to become Established")
    return crd
