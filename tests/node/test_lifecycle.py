"""Start and stop: a node starts from the cache, and after `down` nothing of it is left,
even when it is stopped with a pod running."""

from __future__ import annotations

import json
import re
import subprocess
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
        "kubepods cgroups": {str(p) for p in nodes._kubepods_cgroups()},
        "processes": set(nodes._processes_mentioning(str(workdir))),
        "workdir": workdir.exists(),
        "sysctls": nodes._read_sysctls(),
        "container log links": {str(p) for p in nodes.CONTAINER_LOG_LINKS.glob("*")},
        "cni results": {str(p) for p in nodes.CNI_RESULTS.glob("*")},
    }


def test_down_leaves_nothing_behind_even_with_a_pod_running(fresh_node_dir: Path) -> None:
    before = machine_state(fresh_node_dir)
    start = time.monotonic()
    node = nodes.up()
    try:
        startup = time.monotonic() - start
        node.kubectl("run", "sleeper", "--image", node.images["runner"], "--restart=Never",
                     "--command", "--", "python", "-c", "import time; time.sleep(600)")
        wait_for(lambda: json.loads(node.kubectl("get", "pod", "sleeper", "-o", "json").stdout)
                 ["status"].get("phase") == "Running" or None,
                 timeout=120, description="pod sleeper Running")
        during = machine_state(fresh_node_dir)
        # The check below can fail: while up, the node has changed each of these.
        for key in ("mounts", "links", "iptables", "kubepods cgroups", "processes"):
            assert during[key] != before[key], key
    finally:
        nodes.down()
    after = machine_state(fresh_node_dir)
    assert {k: v for k, v in after.items() if v != before[k]} == {}
    print(f"node start: {startup:.1f}s")
