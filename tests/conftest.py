"""Shared pytest configuration: the real control plane fixtures (tests/cluster/fixtures.py),
the operator stack (tests/operator_stack.py), an S3-compatible server (tests/s3server.py)
and the fixtures below. Shared helpers that are not fixtures are in tests/support.py."""

from pathlib import Path

import pytest

pytest_plugins = ["tests.cluster.fixtures", "tests.operator_stack", "tests.s3server"]

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # property tests skip themselves without hypothesis
    pass
else:
    # Deterministic in CI: the same examples every run, and no example database written
    # into the repository.
    settings.register_profile("kubelearn", derandomize=True, database=None, deadline=None,
                              max_examples=100,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile("kubelearn")


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """em's runs under tmp_path/runs, its run store at tmp_path/store, the user alice, and
    tmp_path the working directory (where a plot goes by default)."""
    parent = tmp_path / "runs"
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(parent))
    monkeypatch.setenv("EM_RUN_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("EM_USER", "alice")
    monkeypatch.chdir(tmp_path)
    return parent

