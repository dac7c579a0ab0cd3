"""Property-based tests of the model's parser, which reads outside input (manifests): any
value is either parsed or refused with a SpecError naming a field, never anything else."""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubelearn_spec import names
from kubelearn_spec.model import parse_manifest, parse_spec
from kubelearn_spec.validate import SpecError
from tests.experiment_cases import FULL, MINIMAL

SETTINGS = settings(derandomize=True, database=None, max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FIELD = re.compile(r"(apiVersion|kind|manifest|metadata|spec)(\.[^.]+)*")
#: Fields a rule across several fields names, whatever was changed.
CROSS_FIELD = {"metadata.name", "spec.replicas",
               *(f"spec.replicas.{role}" for role in names.ROLES)}

scalars = st.none() | st.booleans() | st.integers(-10, 200_000) | st.floats(allow_nan=True) \
    | st.text(max_size=12)
json_values = st.recursive(
    scalars, lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["replicas", "worker", "ps", "master", "chief",
                                       "restartPolicy", "template", "x"]) | st.text(max_size=6),
                      children, max_size=4),
    max_leaves=12)


def _leaf_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every path into a spec's nested objects (templates and hparams left whole)."""
    paths = [path] if path else []
    if isinstance(value, dict) and path[-1:] not in (("template",), ("hparams",)):
        for key, item in value.items():
            paths += _leaf_paths(item, (*path, key))
    return paths


@SETTINGS
@given(spec=json_values, name=st.text(max_size=70) | st.from_regex(names.DNS_1035, fullmatch=True))
def test_any_spec_is_parsed_or_refused_naming_a_field(spec: Any, name: str) -> None:
    try:
        parsed = parse_spec(spec, name=name, namespace="ns")
    except SpecError as error:
        assert FIELD.fullmatch(error.path), error.path
        assert str(error).startswith(f"{error.path}: ")
        return
    # Parsed: what it read is the spec given, for the experiment named.
    assert (parsed.name, parsed.namespace) == (name, "ns")
    assert parsed.experiment_fn == spec["experimentFn"]
    assert set(parsed.counts()) <= set(names.ROLES)
    assert all(isinstance(n, int) and n >= 0 for n in parsed.counts().values())


@SETTINGS
@given(manifest=json_values | st.dictionaries(
    st.sampled_from(["apiVersion", "kind", "metadata", "spec"]), json_values))
def test_any_manifest_is_parsed_or_refused_naming_a_field(manifest: Any) -> None:
    try:
        parsed = parse_manifest(manifest)
    except SpecError as error:
        assert FIELD.fullmatch(error.path), error.path
        return
    # Parsed: the experiment is the one the manifest names, with the function it names.
    assert parsed.name == manifest["metadata"]["name"]
    assert parsed.experiment_fn == manifest["spec"]["experimentFn"]


@SETTINGS
@given(data=st.data(), base=st.sampled_from([MINIMAL, FULL]), value=json_values)
def test_a_changed_field_is_the_one_named(data: st.DataObject, base: dict[str, Any],
                                          value: Any) -> None:
    spec = copy.deepcopy(base)
    path = data.draw(st.sampled_from(_leaf_paths(spec)))
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    try:
        parse_spec(spec, name="exp", namespace="ns")
    except SpecError as error:
        changed = ".".join(("spec", *path))
        assert error.path.startswith(changed) or error.path in CROSS_FIELD, (changed, error)


@SETTINGS
@given(name=st.from_regex(names.DNS_1035, fullmatch=True).filter(lambda n: len(n) <= 63),
       role=st.sampled_from(["worker", "ps", "evaluator"]), count=st.integers(1, 100_000))
def test_a_name_is_refused_exactly_when_a_replica_name_would_not_fit(
        name: str, role: str, count: int) -> None:
    spec = {"experimentFn": "m:f", "replicas": {"master": 1, role: count}}
    fits = all(len(names.replica_name(name, r, n - 1)) <= names.MAX_DNS_LABEL
               for r, n in spec["replicas"].items())
    try:
        parse_spec(spec, name=name, namespace="ns")
        assert fits
    except SpecError as error:
        assert not fits and error.path == "metadata.name"
