"""``python -m kubelearn_operator``'s command line, as the image, the chart and the tests give
it (every operator test on the cluster starts the operator through this entry point)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kubelearn_operator.__main__ import parse_args
from tests.operator_stack import image_command
from tests.unit.test_dockerfile import DOCKERFILE, parse

REPO = Path(__file__).resolve().parents[2]


def _operator_cmd() -> list[str]:
    _, stages = parse(DOCKERFILE.read_text())
    return json.loads(next(s for s in stages if s.name == "operator").last("CMD"))


def test_the_tests_start_what_the_image_starts() -> None:
    assert image_command()[1:] == ["-m", "kubelearn_operator"]


def test_the_image_default_serves_every_namespace() -> None:
    args = parse_args(_operator_cmd())
    assert args.all_namespaces and args.namespace == []
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_namespaces_as_the_chart_names_them() -> None:
    args = parse_args(["--namespace=a", "--namespace=b", "--liveness=http://127.0.0.1:1/h"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces


def test_some_namespaces_and_all_of_them_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--namespace=a", "--all-namespaces"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_no_top_level_operator_package():
    # 'operator' is a standard-library module imported at start-up.
    assert not (REPO / "operator" / "__init__.py").exists()
    assert "operator" in sys.stdlib_module_names
