"""The Sweep case table through the real API server and the generated CRD: every valid case
is accepted as is, every invalid one refused with the field the Python validator names (as
``kubectl apply`` sends it: a server-side dry run with strict field validation)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.sweep_cases import INVALID, VALID, Case, ids

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "kubelearn.dev", "v1alpha1", "sweeps"


def _create(api: client.ApiClient, namespace: str, case: Case) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, case.manifest(), dry_run="All",
        field_validation="Strict")


def _fields(error: client.ApiException) -> tuple[list[str], str]:
    """The fields the server names, in its order, and its message."""
    body = json.loads(error.body)
    fields = [c.get("field", "") for c in (body.get("details") or {}).get("causes") or []]
    return [f for f in fields if f and f != "<nil>"], body.get("message", "")


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_valid_cases_are_accepted_as_is(kube_api: client.ApiClient, sweep_crd: Path,
                                        namespace: str, case: Case) -> None:
    stored = _create(kube_api, namespace, case)
    assert stored["spec"] == case.spec  # nothing defaulted, nothing pruned


@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_invalid_cases_are_refused_naming_the_field(
        kube_api: client.ApiClient, sweep_crd: Path, namespace: str, case: Case) -> None:
    with pytest.raises(client.ApiException) as raised:
        _create(kube_api, namespace, case)
    fields, message = _fields(raised.value)
    assert raised.value.status in (400, 422), raised.value.body
    if raised.value.status == 400:  # strict field validation: an unknown field
        assert f'unknown field "{case.field}"' in message, message
    else:  # the first field named is the one the model names (it stops at the first)
        assert fields[:1] == [case.field], raised.value.body
