"""The chart ships the Experiment and Sweep CRDs as exact copies of crds/, the single source of
truth."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_NAMES = ["experiments.kubelearn.dev.yaml", "sweeps.kubelearn.dev.yaml"]


@pytest.mark.parametrize("name", CRD_NAMES)
def test_chart_crd_is_byte_identical_copy_of_crds_file(name: str):
    source = REPO / "crds" / name
    copy = REPO / "charts" / "kubelearn" / "crds" / name
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}; "
        f"refresh it with: hack/generate-crd.sh"
    )


def test_chart_has_no_other_crds():
    crds = sorted(p.name for p in (REPO / "charts" / "kubelearn" / "crds").iterdir())
    assert crds == CRD_NAMES
