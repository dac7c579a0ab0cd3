"""The case table through the operator's parser and ``kubelearn local`` (its parser and its
command line): the same verdict and the same field as the API server gives
(tests/integration/test_experiment_cases.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubelearn.cli import main
from kubelearn.local import EXIT_BAD_INPUT
from kubelearn.manifest import parse
from kubelearn_operator.experiment_plan import SpecError, parse_spec
from tests.experiment_cases import INVALID, VALID, Case, attribute, ids


def _operator(case: Case):
    return parse_spec(case.spec, name=case.name, namespace="ns", default_image="img")


@pytest.mark.parametrize("case", VALID, ids=ids(VALID))
def test_valid_cases_parse_alike_in_the_operator_and_locally(case: Case) -> None:
    on_cluster, local = _operator(case), parse(case.manifest())
    for path, want in case.expect.items():
        assert attribute(local, path) == want, path
        assert attribute(on_cluster, path) == want, path
    # The same model either way; only the operator's own defaults are added on top.
    assert on_cluster.replicas == local.replicas and on_cluster.run_policy == local.run_policy


#: Refused when written, by rules that compare with the stored object (create included);
#: the operator reads objects the API server already accepted, so it does not refuse them.
ON_WRITE_ONLY = {"worker-count-given-twice"}
STORED = [c for c in INVALID if c.id not in ON_WRITE_ONLY]


@pytest.mark.parametrize("case", STORED, ids=ids(STORED))
def test_invalid_cases_name_the_field_in_the_operator(case: Case) -> None:
    with pytest.raises(SpecError) as raised:
        _operator(case)
    assert raised.value.path == case.field
    assert str(raised.value).startswith(f"{case.field}: ")


@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_invalid_cases_name_the_field_locally(case: Case) -> None:
    with pytest.raises(SpecError) as raised:
        parse(case.manifest())
    assert raised.value.path == case.field


@pytest.mark.parametrize("case", INVALID, ids=ids(INVALID))
def test_kubelearn_local_refuses_with_one_line_and_exit_2(
        case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = tmp_path / "experiment.yaml"
    manifest.write_text(yaml.safe_dump(case.manifest()))
    assert main(["local", str(manifest), "--model-dir", str(tmp_path / "out")]) \
        == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"kubelearn local: error: {case.field}: ")
    assert not (tmp_path / "out").exists()  # nothing started
