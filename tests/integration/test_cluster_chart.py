"""The chart ships the Experiment CRD as an exact copy of crds/, the single source of truth."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CRD_NAME = "experiments.kubelearn.dev.yaml"


def test_chart_crd_is_byte_identical_copy_of_crds_file():
    source = REPO / "crds" / CRD_NAME
    copy = REPO / "charts" / "kubelearn" / "crds" / CRD_NAME
    assert copy.read_bytes() == source.read_bytes(), (
        f"{copy.relative_to(REPO)} differs from {source.relative_to(REPO)}; "
        f"refresh it with: cp {source.relative_to(REPO)} {copy.parent.relative_to(REPO)}/"
    )


def test_chart_has_no_other_crds():
    crds = sorted(p.name for p in (REPO / "charts" / "kubelearn" / "crds").iterdir())
    assert crds == [CRD_NAME]
