"""The node agent of an end-to-end run (the operator is tests/operator_stack.py's).

It runs in its own process group, logs to a file, and is stopped by ``stop()`` (SIGTERM,
then SIGKILL), taking every pod process with it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.operator_stack import Process


class NodeAgent(Process):
    def __init__(self, env: dict[str, str], namespaces: list[str], workdir: Path,
                 node_name: str, ip_octet: int) -> None:
        self.workdir = workdir
        self.node_name = node_name
        argv = [sys.executable, "-m", "tests.e2e.nodeagent", "--workdir", str(workdir),
                "--node-name", node_name, "--ip-octet", str(ip_octet)]
        for ns in namespaces:
            argv += ["--namespace", ns]
        super().__init__(argv, {**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                         workdir / "nodeagent.log")

    def pod_dir(self, namespace: str, pod: str) -> Path:
        return self.workdir / "pods" / f"{namespace}_{pod}"

    def pod_log(self, namespace: str, pod: str) -> str:
        """Every container log of the pod, all restarts."""
        return "".join(path.read_text(errors="replace")
                       for path in sorted(self.pod_dir(namespace, pod).glob("*.log")))


def pod_log_paths(workdir: Path, namespace: str | None = None) -> list[Path]:
    pattern = f"{namespace}_*/*.log" if namespace else "*/*.log"
    return sorted((workdir / "pods").glob(pattern))
