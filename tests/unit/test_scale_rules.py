"""The rules that let ``kubectl scale`` set the worker count whichever form the spec uses:
the count given once in a manifest, ``spec.replicas.worker`` winning once a scale added it,
and no scaling of a finished Experiment. Their CEL twins are checked on the API server
(tests/integration/test_operator_scale.py)."""

from __future__ import annotations

from typing import Any

import pytest

from kubelearn_operator.experiment_plan import parse_spec as operator_parse
from kubelearn_spec.model import parse_manifest
from kubelearn_spec.schema import role_count
from kubelearn_spec.validate import SpecError, check_experiment
from tests.experiment_cases import MINIMAL

FULL = {"experimentFn": MINIMAL["experimentFn"],
        "replicaSpecs": {"ps": {"replicas": 1}, "worker": {"replicas": 2},
                         "master": {"replicas": 1}}}


def body(spec: dict[str, Any], phase: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
                              "metadata": {"name": "linear"}, "spec": spec}
    if phase:
        result["status"] = {"phase": phase}
    return result


def scaled(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    """What the scale subresource writes: spec.replicas.worker."""
    return {**spec, "replicas": {**(spec.get("replicas") or {}), "worker": workers}}


def test_the_scale_path_wins_in_either_form() -> None:
    assert role_count(scaled(MINIMAL, 4), "worker") == 4
    assert role_count(scaled(FULL, 4), "worker") == 4
    assert role_count(FULL, "worker") == 2


def test_a_manifest_gives_the_worker_count_once() -> None:
    with pytest.raises(SpecError) as raised:
        parse_manifest(body(scaled(FULL, 4)))
    assert raised.value.path == "spec.replicas.worker"
    assert "give the count once" in str(raised.value)


def test_a_scaled_full_form_spec_is_accepted_on_update_and_by_the_operator() -> None:
    check_experiment(body(scaled(FULL, 4)), old=body(FULL))
    check_experiment(body(scaled(FULL, 5)), old=body(scaled(FULL, 4)))
    spec = operator_parse(scaled(FULL, 4), name="linear", namespace="ns", default_image="i")
    assert spec.count("worker") == 4 and spec.count("ps") == 1


def test_after_a_scale_the_full_form_count_no_longer_changes() -> None:
    changed = scaled(FULL, 4)
    changed["replicaSpecs"] = {**FULL["replicaSpecs"], "worker": {"replicas": 7}}
    with pytest.raises(SpecError) as raised:
        check_experiment(body(changed), old=body(scaled(FULL, 4)))
    assert raised.value.path == "spec.replicas.worker"
    assert "kubectl scale sets, wins" in str(raised.value)


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_a_finished_experiment_is_not_scaled(phase: str) -> None:
    with pytest.raises(SpecError) as raised:
        check_experiment(body(scaled(MINIMAL, 4)), old=body(MINIMAL, phase))
    assert raised.value.path == "spec.replicas.worker"
    assert "has finished" in str(raised.value)
    # Other changes, or a running one, are not refused for it.
    check_experiment(body(scaled(MINIMAL, 4)), old=body(MINIMAL, "Running"))
    check_experiment(body({**MINIMAL, "hparams": {"x": 1}}), old=body(MINIMAL, phase))
