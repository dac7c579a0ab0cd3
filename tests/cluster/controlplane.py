"""Start and stop a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager).

Everything binds 127.0.0.1 on free ports, lives in one work directory and runs in one process
group, so stopping kills exactly what was started. Used by the pytest fixtures and by the
`python -m tests.cluster` CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

# Controllers the tests rely on: owner references (garbage collector), namespace deletion,
# default ServiceAccounts and the kube-root-ca.crt ConfigMap (needed by the ServiceAccount
# admission plugin for pods), and the workload controllers so a Deployment or Job behaves
# as it does in a cluster (pods stay Pending: there is no scheduler or kubelet), and the
# HorizontalPodAutoscaler's.
DEFAULT_CONTROLLERS = (
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "root-ca-cert-publisher",
    "deployment",
    "replicaset",
    "job",
    # An HPA can target an Experiment (its scale subresource); with no metrics API it finds
    # the target and stops there.
    "horizontalpodautoscaling",
)

ADMIN_USER = "kubelearn-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.0.0.0/24"
STATE_FILE = "state.json"
AUDIT_LOG = "audit.log"

# With audit_log=True: one JSON line per finished request made by a ServiceAccount (the
# operator under test acts as one), at Metadata level (who, verb, resource, response code;
# no bodies). Other users' requests (the admin, the controller-manager) are not logged.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""

_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    """A component failed to start; the message carries the tail of its log."""


@dataclass
class ControlPlane:
    """A running control plane and what a client needs to reach it."""

    kubecp: Path
    helm: Path
    workdir: Path
    server: str
    admin_token: str
    kubeconfig: Path
    ca_file: Path
    pgid: int
    pids: list[int] = field(default_factory=list)
    audit_log: Path | None = None
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def kubectl(self) -> list[str]:
        """argv prefix running the built kubectl against this control plane."""
        return [str(self.kubecp), "kubectl", "--kubeconfig", str(self.kubeconfig)]

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to a child's environment (KUBECONFIG, helm's private homes)."""
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "KUBECP": str(self.kubecp),
            "HELM_CONFIG_HOME": str(self.workdir / "helm" / "config"),
            "HELM_CACHE_HOME": str(self.workdir / "helm" / "cache"),
            "HELM_DATA_HOME": str(self.workdir / "helm" / "data"),
        }

    def state(self) -> dict:
        """What the CLI keeps on disk to find a detached control plane again."""
        return {
            "kubecp": str(self.kubecp),
            "helm": str(self.helm),
            "workdir": str(self.workdir),
            "server": self.server,
            "admin_token": self.admin_token,
            "kubeconfig": str(self.kubeconfig),
            "ca_file": str(self.ca_file),
            "pgid": self.pgid,
            "pids": self.pids,
            "audit_log": str(self.audit_log) if self.audit_log else None,
        }

    @classmethod
    def from_state(cls, state: dict) -> ControlPlane:
        return cls(
            kubecp=Path(state["kubecp"]),
            helm=Path(state["helm"]),
            workdir=Path(state["workdir"]),
            server=state["server"],
            admin_token=state["admin_token"],
            kubeconfig=Path(state["kubeconfig"]),
            ca_file=Path(state["ca_file"]),
            pgid=int(state["pgid"]),
            pids=[int(p) for p in state.get("pids", [])],
            audit_log=Path(state["audit_log"]) if state.get("audit_log") else None,
        )

    def audit_events(self) -> list[dict]:
        """The audit log's events so far (needs audit_log=True at start)."""
        if self.audit_log is None:
            raise ControlPlaneError("this control plane was started without audit_log=True")
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            if line.strip():
                with contextlib.suppress(ValueError):  # a line being written
                    events.append(json.loads(line))
        return events

    def is_ready(self) -> bool:
        """True when the API server answers /readyz with ok."""
        return _readyz(self.server, self.admin_token, _ssl_context(self.ca_file)) == "ok"

    def _live_components(self) -> list[int]:
        """The recorded pids still running this kubecp: after a reboot or a long time, the
        numbers may belong to unrelated processes, which must not be signalled."""
        live = []
        for pid in self.pids:
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
                pgid = os.getpgid(pid)
            except OSError:
                continue
            if argv0.decode(errors="replace") == str(self.kubecp) and pgid == self.pgid:
                live.append(pid)
        return live

    def stop(self, timeout: float = 20.0, remove_workdir: bool = True) -> None:
        """Terminate the whole process group (SIGTERM, then SIGKILL) and remove the work dir."""
        if self._stopped:
            return
        self._stopped = True
        if self._procs or self._live_components():
            kill_process_group(self.pgid, timeout, self._procs, self._live_components())
        if remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def kill_process_group(
    pgid: int,
    timeout: float,
    procs: Sequence[subprocess.Popen] = (),
    pids: Sequence[int] = (),
) -> None:
    """Stop the components newest first, then SIGTERM/SIGKILL whatever is left in the group.

    Newest first matters: an apiserver whose etcd is already gone spends ~20 s retrying
    before it exits, against ~1 s when etcd outlives it.
    """
    deadline = time.monotonic() + timeout
    by_pid = {p.pid: p for p in procs}
    for pid in reversed(list(pids) or list(by_pid)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        step_deadline = min(deadline, time.monotonic() + timeout / 2)
        while time.monotonic() < step_deadline and _pid_alive(pid, by_pid.get(pid)):
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    while time.monotonic() < deadline:
        for p in procs:
            p.poll()  # reap our own children so the group can empty
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _pid_alive(pid: int, proc: subprocess.Popen | None) -> bool:
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its new parent) has stopped serving.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process is in group `pgid`.

    Zombies count as gone: once a detached component's starter has exited, reaping it is
    up to whichever process adopted it.
    """
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_service_account_key(workdir: Path) -> tuple[Path, Path]:
    """An RSA key pair to sign (private) and verify (public) ServiceAccount tokens."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = workdir / "sa.key"
    public = workdir / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    if ca_file is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(ca_file))


def _get(url: str, token: str | None, ctx: ssl.SSLContext | None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _readyz(server: str, token: str, ctx: ssl.SSLContext) -> str:
    try:
        status, body = _get(f"{server}/readyz", token, ctx)
    except (OSError, ssl.SSLError) as exc:
        return f"unreachable: {exc}"
    return body.strip() if status == 200 else f"HTTP {status}: {body.strip()[-500:]}"


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Launcher:
    """Starts processes in one process group, each logging to a file in the work dir."""

    def __init__(self, workdir: Path, detach: bool) -> None:
        self.workdir = workdir
        self.detach = detach
        self.pgid: int | None = None
        self.procs: list[subprocess.Popen] = []
        self._libc = None if detach else ctypes.CDLL(None, use_errno=True)

    def _preexec(self) -> Callable[[], None]:
        pgid = self.pgid
        libc = self._libc

        def setup() -> None:
            # One process group (in this session: a group can only be joined from the same
            # session) holds every component, so one killpg stops them all.
            os.setpgid(0, 0 if pgid is None else pgid)
            if libc is not None:
                # Die with the test process even if it is killed without running atexit.
                libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

        return setup

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=self._preexec(),  # setpgid and prctl must run in the child
            )
        if self.pgid is None:
            self.pgid = proc.pid
        self.procs.append(proc)
        return proc, log_path


def _wait_until(
    name: str,
    proc: subprocess.Popen,
    log_path: Path,
    check: Callable[[], str | None],
    timeout: float,
) -> None:
    """Poll `check` (None: ready, else what it saw) until ready, the process dies or time is up."""
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ControlPlaneError(
                f"{name} exited with {proc.returncode} while starting; log {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        result = check()
        if result is None:
            return
        seen = result
        time.sleep(0.1)
    raise ControlPlaneError(
        f"{name} not ready after {timeout:.0f}s (last saw: {seen}); log {log_path}:\n"
        f"{_log_tail(log_path)}"
    )


def start_control_plane(
    kubecp: Path,
    helm: Path,
    workdir: Path | None = None,
    *,
    controllers: Sequence[str] = DEFAULT_CONTROLLERS,
    detach: bool = False,
    progress: TextIO | None = None,
    timeout: float = 120.0,
    audit_log: bool = False,
    address: str = "127.0.0.1",
    apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    """Start etcd, kube-apiserver (waiting for /readyz) and kube-controller-manager.

    detach=False ties the processes to this one (they get SIGKILL if it dies); detach=True
    leaves them running for the CLI. audit_log=True has the API server log ServiceAccounts'
    requests (AUDIT_POLICY) to `ControlPlane.audit_log`. `address` is where the API server
    listens and what it advertises (a real node's pods reach it there, through the
    `kubernetes` Service); `apiserver_args` are added to its command line. On any failure
    everything already started is stopped.
    """
    out = progress if progress is not None else sys.stderr
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out.write(f"[kubecp] {msg} ({time.monotonic() - t0:.1f}s)\n")
        out.flush()

    workdir = Path(workdir or tempfile.mkdtemp(prefix="kubecp-"))
    workdir.mkdir(parents=True, exist_ok=True)
    launcher = _Launcher(workdir, detach)
    try:
        cp = _start(kubecp, helm, workdir, launcher, controllers, say, timeout, audit_log,
                    address, apiserver_args)
    except BaseException:
        if launcher.pgid is not None:
            kill_process_group(launcher.pgid, 10.0, launcher.procs)
        raise
    say(f"control plane ready at {cp.server}, kubeconfig {cp.kubeconfig}")
    return cp


def _start(
    kubecp: Path,
    helm: Path,
    workdir: Path,
    launcher: _Launcher,
    controllers: Sequence[str],
    say: Callable[[str], None],
    timeout: float,
    audit_log: bool = False,
    address: str = "127.0.0.1",
    apiserver_args: Sequence[str] = (),
) -> ControlPlane:
    etcd_port, peer_port, api_port, kcm_port = free_ports(4)
    bin_ = str(kubecp)

    # etcd
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    etcd, etcd_log = launcher.start(
        "etcd",
        [
            bin_,
            "etcd",
            "--data-dir",
            str(workdir / "etcd"),
            "--listen-client-url",
            etcd_url,
            "--listen-peer-url",
            f"http://127.0.0.1:{peer_port}",
        ],
    )

    def etcd_health() -> str | None:
        try:
            status, body = _get(f"{etcd_url}/health", None, None)
        except OSError as exc:
            return f"unreachable: {exc}"
        return None if status == 200 and '"true"' in body else f"HTTP {status}: {body}"

    _wait_until("etcd", etcd, etcd_log, etcd_health, timeout)
    say(f"etcd ready on {etcd_url}")

    # kube-apiserver
    admin_token = secrets.token_hex(24)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    tokens.chmod(0o600)
    sa_key, sa_pub = _write_service_account_key(workdir)
    cert_dir = workdir / "certs"
    server = f"https://{address}:{api_port}"
    audit_args: list[str] = []
    audit_path = None
    if audit_log:
        policy = workdir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        audit_path = workdir / AUDIT_LOG
        audit_args = [f"--audit-policy-file={policy}", f"--audit-log-path={audit_path}",
                      "--audit-log-format=json", "--audit-log-mode=blocking",
                      "--audit-log-maxbackup=0"]
    api, api_log = launcher.start(
        "kube-apiserver",
        [
            bin_,
            "apiserver",
            f"--etcd-servers={etcd_url}",
            f"--bind-address={address}",
            f"--advertise-address={address}",
            f"--secure-port={api_port}",
            f"--cert-dir={cert_dir}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--profiling=false",
            *audit_args,
            *apiserver_args,
        ],
    )
    insecure = _ssl_context(None)  # the serving cert does not exist before the server starts

    def api_ready() -> str | None:
        seen = _readyz(server, admin_token, insecure)
        return None if seen == "ok" else seen

    _wait_until("kube-apiserver", api, api_log, api_ready, timeout)
    # The self-signed serving certificate file holds the certificate and its CA.
    ca_file = cert_dir / "apiserver.crt"
    seen = _readyz(server, admin_token, _ssl_context(ca_file))
    if seen != "ok":
        raise ControlPlaneError(f"kube-apiserver /readyz with CA {ca_file} verification: {seen}")
    say(f"kube-apiserver ready on {server}")

    kubeconfig = workdir / "kubeconfig"
    _write_kubeconfig(kubeconfig, server, ca_file, admin_token)

    # kube-controller-manager
    kcm, kcm_log = launcher.start(
        "kube-controller-manager",
        [
            bin_,
            "controller-manager",
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--cert-dir={workdir / 'kcm-certs'}",
            f"--controllers={','.join(controllers)}",
            f"--service-account-private-key-file={sa_key}",
            f"--root-ca-file={ca_file}",
            "--profiling=false",
        ],
    )

    def kcm_healthy() -> str | None:
        try:
            status, body = _get(f"https://127.0.0.1:{kcm_port}/healthz", None, insecure)
        except (OSError, ssl.SSLError) as exc:
            return f"unreachable: {exc}"
        return None if status == 200 else f"HTTP {status}: {body.strip()[-300:]}"

    _wait_until("kube-controller-manager", kcm, kcm_log, kcm_healthy, timeout)
    say(f"kube-controller-manager healthy (controllers: {','.join(controllers)})")

    assert launcher.pgid is not None
    cp = ControlPlane(
        kubecp=kubecp,
        helm=helm,
        workdir=workdir,
        server=server,
        admin_token=admin_token,
        kubeconfig=kubeconfig,
        ca_file=ca_file,
        pgid=launcher.pgid,
        pids=[p.pid for p in launcher.procs],
        audit_log=audit_path,
        _procs=launcher.procs,
    )
    (workdir / STATE_FILE).write_text(json.dumps(cp.state(), indent=2))
    return cp


def _write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubecp", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [
            {
                "name": "kubecp",
                "context": {"cluster": "kubecp", "user": ADMIN_USER, "namespace": "default"},
            }
        ],
        "current-context": "kubecp",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
