"""The processes of an end-to-end run: the operator (from the package) and the node agent.

Each runs in its own process group, logs to a file, and is stopped by ``stop()`` (SIGTERM,
then SIGKILL); the node agent takes every pod process with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "experiments.kubelearn.dev.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child in its own process group, its output appended to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=ROOT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.argv[:4]} exited with {self.proc.returncode}; log:\n"
                                 + self.log.read_text(errors="replace")[-4000:])

    def kill(self) -> None:
        """SIGKILL to the whole group: no clean-up of any kind."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class Operator(Process):
    """The operator from the package for some namespaces (all when none are given), with
    metrics and liveness: ``kopf run --standalone -m kubelearn_operator.handlers``."""

    def __init__(self, env: dict[str, str], namespaces: list[str], log: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        argv = [sys.executable, "-m", "kopf", "run", "--standalone",
                "-m", "kubelearn_operator.handlers",
                "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz"]
        for ns in namespaces:
            argv += ["--namespace", ns]
        if not namespaces:
            argv.append("--all-namespaces")
        full_env = {**os.environ, **env, "KUBELEARN_METRICS_PORT": str(self.metrics_port),
                    "KUBELEARN_RESYNC_SECONDS": "2", "PYTHONUNBUFFERED": "1",
                    **(extra_env or {})}
        super().__init__(argv, full_env, log)

    def start(self, timeout: float = 60) -> Operator:
        super().start()
        deadline = time.monotonic() + timeout
        while self.healthz() is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError("operator not live; log:\n" + self.log.read_text()[-4000:])
            time.sleep(0.2)
        return self

    def healthz(self) -> str | None:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as resp:
                return resp.read().decode() if resp.status == 200 else None
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as resp:
            return resp.read().decode()

    def memory_kib(self) -> dict[str, int]:
        """Resident and peak resident memory of the operator process (VmRSS, VmHWM)."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
        return values


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
