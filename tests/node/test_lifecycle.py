"""Start and stop: a node starts from the cache, and after `down` nothing of it is left,
even when it is stopped with a pod running."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.helpers import wait_for
from tests.node import node as nodes

pytestmark = [pytest.mark.node, pytest.mark.slow]


def _lines(*cmd: str) -> set[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return set(proc.stdout.splitlines())


def _rules(binary: str) -> set[str]:
    """iptables rules and chains, without packet counters."""
    return {re.sub(r"\[\d+:\d+\]", "", line) for line in _lines(f"{binary}-save")
            if not line.startswith("#")}


def machine_state(workdir: Path) -> dict[str, object]:
    """What a node may change on the machine; equal before up and after down."""
    return {
        "mounts": {line.split()[4] for line in
                   Path("/proc/self/mountinfo").read_text().splitlines()},
        "netns": _lines("ip", "netns", "list"),
        "links": {line.split(":")[1].strip().split("@")[0]
                  for line in _lines("ip", "-o", "link", "show")},
        "iptables": _rules("iptables"),
        "ip6tables": _rules("ip6tables"),
        "nftables": _lines("nft", "list", "tables"),
        "kubepods cgroups": {str(p) for p in nodes._kubepods_cgroups()},
        "processes": set(nodes._processes_mentioning(str(workdir))),
        "workdir": workdir.exists(),
        "sysctls": nodes._read_sysctls(),
        "container log links": {str(p) for p in nodes.CONTAINER_LOG_LINKS.glob("*")},
        "cni results": {str(p) for p in nodes.CNI_RESULTS.glob("*")},
    }


def run_sleeper(node: nodes.Node) -> None:
    """A pod that keeps a container, its sandbox, mounts and network namespace in use."""
    node.kubectl("run", "sleeper", "--image", node.images["runner"], "--restart=Never",
                 "--command", "--", "python", "-c", "import time; time.sleep(600)")
    wait_for(lambda: json.loads(node.kubectl("get", "pod", "sleeper", "-o", "json").stdout)
             ["status"].get("phase") == "Running" or None,
             timeout=120, description="pod sleeper Running")


def test_down_leaves_nothing_behind_even_with_a_pod_running(fresh_node_dir: Path) -> None:
    before = machine_state(fresh_node_dir)
    start = time.monotonic()
    node = nodes.up()
    try:
        startup = time.monotonic() - start
        run_sleeper(node)
        during = machine_state(fresh_node_dir)
        # The check below can fail: while up, the node has changed each of these.
        for key in ("mounts", "links", "iptables", "kubepods cgroups", "processes"):
            assert during[key] != before[key], key
    finally:
        nodes.down()
    after = machine_state(fresh_node_dir)
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    print(f"node start: {startup:.1f}s")


KILLED_SESSION = """
from tests.node import node as nodes
from tests.node.test_lifecycle import run_sleeper
run_sleeper(nodes.up())
print("up", flush=True)
import time
time.sleep(600)
"""


def test_everything_goes_when_the_test_process_is_killed(fresh_node_dir: Path) -> None:
    before = machine_state(fresh_node_dir)
    repo = Path(__file__).resolve().parents[2]
    session = subprocess.Popen([sys.executable, "-c", KILLED_SESSION], cwd=repo,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert session.stdout is not None
        assert session.stdout.readline().strip() == "up"
        assert machine_state(fresh_node_dir)["kubepods cgroups"] != before["kubepods cgroups"]
    finally:
        session.kill()  # no finalizer, no atexit: only the watchdog is left to clean up
        session.wait()

    def gone() -> dict[str, object] | None:
        after = machine_state(fresh_node_dir)
        return None if after == before else {k: v for k, v in after.items() if v != before[k]}

    try:
        wait_for(lambda: gone() is None, timeout=120, description="the node gone")
    except AssertionError:
        raise AssertionError(f"left behind: {gone()}") from None
