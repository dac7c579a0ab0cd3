"""The chart against the operator's settings (``kubelearn_operator.settings.SETTINGS``): every
variable it sets or mentions is a setting, and what it sets with its default values means
what the setting's own default means."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelearn_operator.netpol import ENV_OPERATOR_NAMESPACE, ENV_OPERATOR_SELECTOR
from kubelearn_operator.settings import SETTINGS, Setting

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubelearn"
DEPLOYMENT = CHART / "templates" / "deployment.yaml"
VARIABLE = re.compile(r"\bKUBELEARN_[A-Z0-9_]*[A-Z0-9]")
ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
#: The chart fills these from the cluster and its release, not from values.
CLUSTER_GIVEN = {ENV_OPERATOR_NAMESPACE: "kubelearn-system",
                 ENV_OPERATOR_SELECTOR: "app.kubernetes.io/name=kubelearn"}


def _setting(variable: str) -> Setting:
    return next(s for s in SETTINGS if variable in s.variables)


def _go_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class _Template:
    """Just enough of Helm's templating to render the deployment's env and args with the
    chart's default values: ``.Values`` paths, ``default .Chart.AppVersion``, ``quote`` and
    ``with``; anything else (``include``) renders as None."""

    def __init__(self) -> None:
        self.values = yaml.safe_load((CHART / "values.yaml").read_text())
        self.app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    def lookup(self, path: str, dot: Any) -> Any:
        if path == ".":
            return dot
        node: Any = self.values
        assert path.startswith(".Values."), path
        for key in path.split(".")[2:]:
            node = node[key]
        return node

    def action(self, text: str, dot: Any) -> str | None:
        first, *pipes = (part.strip() for part in text.split("|"))
        if first.startswith("include"):
            return None
        value = self.lookup(first, dot)
        for pipe in pipes:
            if pipe == "default .Chart.AppVersion":
                value = value or self.app_version
            elif pipe == "quote":
                value = '"' + _go_text(value) + '"'
            else:
                raise AssertionError(f"unknown pipe {pipe!r}")
        return _go_text(value)

    def render(self, line: str, dot: Any) -> str | None:
        parts: list[str] = []
        end = 0
        for match in ACTION.finditer(line):
            rendered = self.action(match.group(1), dot)
            if rendered is None:
                return None
            parts += [line[end:match.start()], rendered]
            end = match.end()
        return "".join(parts) + line[end:]


def chart_env() -> dict[str, str | None]:
    """The deployment's variables: the value each renders to with the default values, None
    when it comes from elsewhere (the cluster, a helper) or is not set by default."""
    template = _Template()
    lines = DEPLOYMENT.read_text().splitlines()
    blocks: list[tuple[str, Any]] = []  # each enclosing block: its keyword, `with`'s value
    env: dict[str, str | None] = {}
    for i, line in enumerate(lines):
        action = ACTION.search(line)
        keyword, _, argument = action.group(1).partition(" ") if action else ("", "", "")
        if keyword in ("with", "if", "range"):
            blocks.append((keyword, template.lookup(argument, None) if keyword == "with"
                           else True))
        elif keyword == "end":
            blocks.pop()
        name = re.fullmatch(r"\s*- name: (KUBELEARN_\w+)", line)
        if not name:
            continue
        value = re.fullmatch(r"\s*value: (.*)", lines[i + 1])
        withs = [dot for keyword, dot in blocks if keyword == "with"]
        rendered = None
        if value and all(withs):  # an empty `with` leaves the variable out
            text = template.render(value.group(1), withs[-1] if withs else None)
            rendered = None if text is None else yaml.safe_load(text)
        env[name.group(1)] = rendered
    return env


def test_the_template_reader_finds_what_the_chart_sets() -> None:
    env = chart_env()
    assert env["KUBELEARN_RUNNER_IMAGE"] == "kubelearn/runner:0.1.0"
    assert env["KUBELEARN_METRICS_PORT"] == "9090"
    assert env["KUBELEARN_RUNNER_IMAGE_PULL_POLICY"] is None  # "" by default: not set
    assert env[ENV_OPERATOR_NAMESPACE] is None  # from the pod's namespace


def test_every_variable_the_chart_sets_or_mentions_is_a_setting() -> None:
    known = {variable for setting in SETTINGS for variable in setting.variables}
    mentioned = set(chart_env())
    for path in (CHART / "values.yaml", CHART / "README.md", *CHART.glob("templates/*")):
        mentioned |= set(VARIABLE.findall(path.read_text()))
    assert mentioned, "the chart sets no variable: the reader is broken"
    assert mentioned <= known, mentioned - known


@pytest.mark.parametrize("variable", sorted(
    name for name, value in chart_env().items() if value is not None))
def test_what_the_chart_sets_by_default_is_the_settings_default(variable: str) -> None:
    setting = _setting(variable)
    value = chart_env()[variable]
    assert isinstance(value, str)
    assert setting.read({**CLUSTER_GIVEN, variable: value}) == setting.read(CLUSTER_GIVEN)


def test_the_charts_liveness_endpoint_is_the_settings_default() -> None:
    template = _Template()
    args = [template.render(line.strip(), None) for line in DEPLOYMENT.read_text().splitlines()
            if "--liveness=" in line]
    assert args == [f"- --liveness={_setting('KUBELEARN_LIVENESS_ENDPOINT').default}"]
