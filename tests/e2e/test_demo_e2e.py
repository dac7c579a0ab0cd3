"""The developer's demo: ``python -m tests.e2e up`` leaves a working kubelearn running."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.helpers import wait_for
from tests.operator_stack import EXAMPLE
from tests.processes import pids_with_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout)


def test_up_then_kubectl_apply_then_down(control_plane, tmp_path: Path):
    # Its own control plane directory: a developer's running one is never touched.
    env = {**os.environ, "KUBELEARN_DEV_CLUSTER_DIR": str(tmp_path / "dev-cluster")}
    ns = f"demo-{secrets.token_hex(3)}"
    up = _cli(env, "tests.e2e", "up", "--namespace", ns)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        exports = dict(re.findall(r"^export (\w+)=(\S+)$", up.stdout, re.M))
        kubectl = shlex.split(shlex.split(re.search(r"^alias kubectl=(.*)$", up.stdout,
                                                    re.M).group(1))[0])
        env["KUBECONFIG"] = shlex.split(exports["KUBECONFIG"])[0]
        # A second `up` finds everything running and only prints the environment.
        again = _cli(env, "tests.e2e", "up", "--namespace", ns)
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        assert _cli(env, "tests.e2e", "status").returncode == 0

        def kc(*args: str) -> str:
            result = subprocess.run([*kubectl, "-n", ns, *args], env=env, text=True,
                                    capture_output=True, timeout=60)
            assert result.returncode == 0, result.stderr
            return result.stdout

        kc("apply", "-f", str(EXAMPLE))
        wait_for(lambda: "Succeeded" in kc("get", "exp", "linear"), 240,
                 "the demo's experiment to succeed")
        logs = _cli(env, "tests.e2e", "logs", "-n", ns, "linear-master-0")
        assert logs.returncode == 0 and "Saving evaluation summary" in logs.stdout
    finally:
        down = _cli(env, "tests.e2e", "down")
        _cli(env, "tests.cluster", "down")
    assert down.returncode == 0, down.stderr
    assert _cli(env, "tests.e2e", "status").returncode == 1
    wait_for(lambda: not pids_with_env(f"KUBELEARN_MODEL_DIR=/tmp/kubelearn/{ns}/"), 20,
             "the demo's pod processes to exit")
    shutil.rmtree(f"/tmp/kubelearn/{ns}", ignore_errors=True)
