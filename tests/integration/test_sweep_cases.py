"""The Sweep case table through the real API server and the generated CRD: every valid case
is accepted as is, every invalid one refused with the field the Python validator names (as
``kubectl apply`` sends it: a server-side dry run with strict field validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.experiment_cases import ids
from tests.support import assert_refused_naming
from tests.sweep_cases import INVALID, VALID, Case

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "kubelearn.dev", "v1alpha1", "sweeps"


def _create(api: client.ApiClient, namespace: str, case: Case) -> dict[str, Any]:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, case.manifest(), dry_run="All",
        field_validation="Strict")


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_valid_cases_are_accepted_as_is(kube_api: client.ApiClient, sweep_crd: Path,
                                        namespace: str, case: Case) -> None:
    stored = _create(kube_api, namespace, case)
    assert stored["spec"] == case.spec  # nothing defaulted, nothing pruned


#: Refused by the operator and kubelearn local only: the API server cannot see the keys of a
#: map of values of several types (see ``api_server`` in tests/experiment_cases.py).
REFUSED = [c for c in INVALID if c.api_server]
NOT_SEEN = [c for c in INVALID if not c.api_server]


@pytest.mark.parametrize("case", REFUSED, ids=ids(REFUSED))
def test_invalid_cases_are_refused_naming_the_field(
        kube_api: client.ApiClient, sweep_crd: Path, namespace: str, case: Case) -> None:
    with pytest.raises(client.ApiException) as raised:
        _create(kube_api, namespace, case)
    assert_refused_naming(raised.value, case.field)


@pytest.mark.parametrize("case", NOT_SEEN, ids=ids(NOT_SEEN))
def test_cases_only_the_model_refuses_are_accepted_by_the_api_server(
        kube_api: client.ApiClient, sweep_crd: Path, namespace: str, case: Case) -> None:
    _create(kube_api, namespace, case)  # the operator fails it (InvalidSpec), naming the field
