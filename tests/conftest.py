"""Shared pytest configuration: the real control plane fixtures (tests/cluster/fixtures.py),
the operator stack (tests/operator_stack.py) and an S3-compatible server (tests/s3server.py)."""

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
