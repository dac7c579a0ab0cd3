"""The Sweep case table through the Python parser: the same verdict and the same field as the
API server gives (tests/integration/test_sweep_cases.py)."""

from __future__ import annotations

import pytest

from kubelearn_spec.sweep_model import parse_sweep, parse_sweep_spec
from kubelearn_spec.validate import SpecError
from tests.experiment_cases import attribute, ids
from tests.sweep_cases import INVALID, VALID, Case


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_valid_cases_parse_with_their_defaults(case: Case) -> None:
    parsed = parse_sweep(case.manifest())
    for path, want in case.expect.items():
        assert attribute(parsed, path) == want, path
    assert parse_sweep_spec(case.spec, name=case.name, namespace="default") == parsed


@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_invalid_cases_name_the_field(case: Case) -> None:
    with pytest.raises(SpecError) as raised:
        parse_sweep(case.manifest())
    assert raised.value.path == case.field
    assert str(raised.value).startswith(f"{case.field}: ")
