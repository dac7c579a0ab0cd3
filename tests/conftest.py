"""Shared pytest configuration: the real control plane fixtures (tests/cluster/fixtures.py)
and the operator stack (tests/operator_stack.py)."""

pytest_plugins = ["tests.cluster.fixtures", "tests.operator_stack"]
