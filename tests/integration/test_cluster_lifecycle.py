"""The control plane leaves nothing behind: a normal stop, the CLI's down, and a test process
killed outright all end every component process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cluster.controlplane import ControlPlane, start_control_plane
from tests.cluster.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _components(pids: list[int]) -> list[str]:
    return [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[1].decode() for p in pids]


def test_stop_ends_every_process_and_removes_workdir(control_plane: ControlPlane, tmp_path: Path):
    cp = start_control_plane(control_plane.kubecp, control_plane.helm, tmp_path / "cp")
    try:
        assert cp.is_ready()
        assert _components(cp.pids) == ["etcd", "apiserver", "controller-manager"]
        assert all(os.getpgid(p) == cp.pgid for p in cp.pids)
    finally:
        cp.stop()
    assert not any(_alive(p) for p in cp.pids)
    assert not cp.workdir.exists()


def test_processes_die_with_a_killed_test_process(control_plane: ControlPlane, tmp_path: Path):
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from tests.cluster.controlplane import start_control_plane
        kubecp, helm, workdir = map(Path, sys.argv[1:])
        cp = start_control_plane(kubecp, helm, workdir, progress=sys.stderr)
        print(json.dumps(cp.pids), flush=True)
        time.sleep(600)
        """
    )
    argv = [str(control_plane.kubecp), str(control_plane.helm), str(tmp_path / "cp")]
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 3 and all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGKILL)  # no atexit, no finalizer: only the kernel is left
        proc.wait()
    wait_for(
        lambda: not [p for p in pids if _alive(p)],
        15,
        "the components to die with the killed process that started them",
    )


def test_cli_up_env_down(control_plane: ControlPlane, tmp_path: Path):
    env = {**os.environ, "KUBELEARN_DEV_CLUSTER_DIR": str(tmp_path / "dev")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tests.cluster", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    up = cli("up")
    assert up.returncode == 0, up.stderr
    state = json.loads((tmp_path / "dev" / "state.json").read_text())
    try:
        # The CLI has exited; the control plane keeps running for the developer.
        assert all(_alive(p) for p in state["pids"])
        assert f"export KUBECONFIG={state['kubeconfig']}" in up.stdout
        assert cli("status").returncode == 0
        assert cli("env").stdout == up.stdout
        kubeconfig = state["kubeconfig"]
        got = subprocess.run(
            [
                state["kubecp"],
                "kubectl",
                "--kubeconfig",
                kubeconfig,
                "get",
                "namespace",
                "default",
                "-o",
                "name",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert got.stdout.strip() == "namespace/default", got.stderr
        again = cli("up")
        assert "already running" in again.stderr
        assert again.stdout == up.stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    wait_for(
        lambda: not [p for p in state["pids"] if _alive(p)],
        15,
        "the detached components to stop after down",
    )
    assert not (tmp_path / "dev").exists()
    assert cli("status").returncode == 1
