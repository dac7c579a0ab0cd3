"""The CRD generator run as a module (``python -m kubelearn_spec.crd``), as
hack/generate-crd.sh runs it: the YAML it prints is the one the model renders."""

from __future__ import annotations

import subprocess
import sys

import yaml

from kubelearn_spec import crd


def test_the_generator_runs_as_a_module_and_its_yaml_reads_back() -> None:
    out = subprocess.run([sys.executable, "-m", "kubelearn_spec.crd"], capture_output=True,
                         text=True, check=True).stdout
    assert out == crd.render()
    assert yaml.safe_load(out) == crd.definition()


def test_the_generator_writes_either_crd() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kubelearn_spec.crd", *args],
                              capture_output=True, text=True, check=False)

    out = run("sweeps").stdout
    assert out == crd.render_sweep()
    assert yaml.safe_load(out) == crd.sweep_definition()
    assert run("experiments").stdout == run().stdout == crd.render()
    assert run("pods").returncode == 2
