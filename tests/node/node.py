"""A real single-node cluster on this machine: its own control plane, containerd, runc, CNI,
the kubelet, kube-scheduler, kube-proxy, CoreDNS, kube-network-policies and
local-path-provisioner, all started as child processes.

Pods run in containers from the images built here (tests/node/images.py), on a bridge that
exists only on this machine. Nothing is routed or masqueraded out: pods get no default route
(only the pod subnet and the Service range, through the bridge's address), forwarding is left
off, and a DROP rule keeps the pod subnet off every other interface in case something turns it
on. DNS answers `cluster.local` and nothing else. The API server listens on the bridge's
address, so pods reach it through the `kubernetes` Service with their ServiceAccount token.
As on kind, the default StorageClass `local-path` gives a claim a directory on the node (under
the work directory) once a pod uses it, and deletes it with the claim.

There is one node per machine (the bridge and the addresses are fixed); its work directory
and state file live under the cache. `down` undoes everything `up` did, also after a crash:
containers, shims, mounts, network namespaces and veths, iptables and nftables rules, kubepods
cgroups,
the sysctls the kubelet changes, and the work directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from tests.cluster.build import ensure_built
from tests.cluster.controlplane import (
    _PR_SET_PDEATHSIG,
    DEFAULT_CONTROLLERS,
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    _Launcher,
    _log_tail,
    _wait_until,
    free_ports,
    kill_process_group,
    start_control_plane,
)
from tests.node import images

NODE_NAME = "kubelearn-node"
BRIDGE = "klbr0"
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
CLUSTER_DOMAIN = "cluster.local"
RULE_COMMENT = "kubelearn-node"
CNI_NETWORK = "kubelearn"
CNI_BIN_DIR = Path("/usr/lib/cni")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
CNI_RESULTS = Path("/var/lib/cni/results")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The kubelet sets these kernel parameters (kubelet/cm: setupKernelTunables); down restores them.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
                   "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
# Endpoint slices for Services (kube-proxy, CoreDNS), the node lifecycle, which lifts the
# not-ready taint the kubelet registers with, and binding claims to volumes with the
# protection finalizers' clean-up (without it a deleted claim or volume would stay forever);
# the rest as in the plain control plane.
CONTROLLERS = (*DEFAULT_CONTROLLERS, "endpointslice", "endpoint", "nodelifecycle",
               "persistentvolume-binder", "pvc-protection", "pv-protection")
HOST_TOOLS = ("containerd", "containerd-shim-runc-v2", "ctr", "runc", "iptables",
              "ip6tables", "nft", "gcc", "ip", "unshare")

STATE_FILE = "node.json"
SERVICE_ACCOUNT_DIR = "/run/secrets/kubernetes.io/serviceaccount"
#: The nftables table kube-network-policies keeps its rules in.
NETPOL_TABLE = ("inet", "kube-network-policies")
#: local-path-provisioner's names, as its deploy/local-path-storage.yaml has them.
STORAGE_CLASS = "local-path"
LOCAL_PATH_PROVISIONER = "rancher.io/local-path"
LOCAL_PATH_NAMESPACE = "local-path-storage"
LOCAL_PATH_CONFIG = "local-path-config"
LOCAL_PATH_ACCOUNT = "local-path-provisioner-service-account"
#: Where the volumes' directories go, under the work dir (so down removes them).
LOCAL_PATH_DIR = "local-path"


def cache_dir() -> Path:
    return Path(os.environ.get("KUBELEARN_CACHE", Path.home() / ".cache" / "kubelearn"))


def node_dir() -> Path:
    """The node's work directory (its own filesystem: overlayfs needs a real upper dir)."""
    return Path(os.environ.get("KUBELEARN_NODE_DIR", cache_dir() / "node"))


class NodeError(RuntimeError):
    """The node could not start; the message names the step and carries the log's tail."""


def missing() -> list[str]:
    """Why this machine cannot run the node (empty when it can)."""
    reasons = [f"{tool} not on PATH" for tool in HOST_TOOLS if shutil.which(tool) is None]
    reasons += [f"CNI plugin {p} not in {CNI_BIN_DIR}" for p in ("bridge", "host-local", "loopback")
                if not (CNI_BIN_DIR / p).is_file()]
    reasons += [f"image build tool {t} not on PATH" for t in images.missing_tools()]
    if os.geteuid() != 0:
        reasons.append("not root")
    return reasons


def _sh(*cmd: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} exited with {proc.returncode}: "
                        f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


@dataclass
class Node:
    """A running node and its control plane."""

    cp: ControlPlane
    workdir: Path
    containerd_socket: Path
    pids: list[int]
    pgid: int
    images: dict[str, str]

    @property
    def env(self) -> dict[str, str]:
        return {**self.cp.env, "HELM": str(self.cp.helm)}

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.cp.kubectl, *args], capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited with {proc.returncode}:\n"
                                 f"{proc.stdout}{proc.stderr}")
        return proc

    @property
    def volumes_dir(self) -> Path:
        """The host directory that holds a directory per dynamically provisioned volume."""
        return self.workdir / LOCAL_PATH_DIR

    def ctr(self, *args: str) -> str:
        return _sh("ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args)

    def state(self) -> dict:
        return {"control_plane": self.cp.state(), "workdir": str(self.workdir),
                "containerd_socket": str(self.containerd_socket), "pids": self.pids,
                "pgid": self.pgid, "images": self.images}

    @classmethod
    def from_state(cls, state: dict) -> Node:
        return cls(cp=ControlPlane.from_state(state["control_plane"]),
                   workdir=Path(state["workdir"]),
                   containerd_socket=Path(state["containerd_socket"]),
                   pids=state["pids"], pgid=state["pgid"], images=state["images"])


# -- configuration files -------------------------------------------------------------------

def containerd_config(wd: Path, sandbox_image: str) -> str:
    """containerd's own root, state and socket under the work dir, CRI with our CNI and pause.

    restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, so the -998 the kubelet asks for
    the sandbox would fail every pod. netns_mounts_under_state_dir keeps the pods' network
    namespaces inside the work dir, where down finds them.
    """
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{wd}/containerd/root"
state = "{wd}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{wd}/containerd/containerd.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{wd}/containerd/opt"

[{cri}]
  sandbox_image = "docker.io/{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        Root = "{wd}/runc"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{wd}/cni/net.d"
    max_conf_num = 1
"""


def cni_config(wd: Path) -> dict:
    """A bridge with the node's address as gateway. Routes: only the Service range, via the
    bridge; no default route, no masquerading, so a pod reaches this machine and other pods
    and nothing else."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": True,
            "isDefaultGateway": False,
            "ipMasq": False,
            "hairpinMode": False,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                "routes": [{"dst": SERVICE_CIDR}],
                "dataDir": str(wd / "cni" / "ipam"),
            },
        }],
    }


def kubelet_config(wd: Path, socket: Path, port: int, healthz_port: int, ca: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "containerRuntimeEndpoint": f"unix://{socket}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "failCgroupV1": False,
        "localStorageCapacityIsolation": False,
        "enforceNodeAllocatable": [],
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        # Not the machine's resolv.conf: pods must not learn of outside name servers.
        "resolvConf": str(wd / "resolv.conf"),
        "podLogsDir": str(wd / "pod-logs"),
        "volumePluginDir": str(wd / "kubelet-plugins"),
        # The images cannot be pulled again: never collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%"},
        # The API server presents a client certificate (kubectl logs, exec); anything else
        # that reaches the port on the bridge is refused.
        "authentication": {"anonymous": {"enabled": False},
                           "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "maxPods": 110,
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # Node ports only on the bridge; no route_localnet for 127.0.0.1 node ports.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        # 0: leave the machine's conntrack limits and timeouts as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s"},
    }


def corefile(kubeconfig: Path, port: int = 53) -> str:
    """The cluster's names only; no `forward`: any other name is refused."""
    return f"""{CLUSTER_DOMAIN}:{port} in-addr.arpa:{port} {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {kubeconfig} kubecp
        pods insecure
    }}
    cache 5
}}
"""


def local_path_manifests(volumes: Path, helper_image: str) -> list[dict]:
    """local-path-provisioner's objects as its deploy/local-path-storage.yaml makes them, less the
    Deployment (it runs on the host here) and RBAC (it acts as the admin).

    Its helper pod, which makes and removes each volume's directory, runs the runner image as
    root (the parent directory belongs to root): the only image here with a shell, and no other
    can be pulled. The setup script's mode 0777 lets a pod of any uid (65532) write there.
    """
    helper_pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            "tolerations": [{"key": "node.kubernetes.io/disk-pressure", "operator": "Exists",
                             "effect": "NoSchedule"}],
            "automountServiceAccountToken": False,  # it never calls the API server
            "securityContext": {"runAsUser": 0, "runAsGroup": 0},
            "containers": [{"name": "helper-pod", "image": helper_image,
                            "imagePullPolicy": "Never"}],
        },
    }
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES",
                               "paths": [str(volumes)]}]}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": LOCAL_PATH_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": LOCAL_PATH_ACCOUNT, "namespace": LOCAL_PATH_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": {"name": LOCAL_PATH_CONFIG, "namespace": LOCAL_PATH_NAMESPACE},
         "data": {"config.json": json.dumps(config, indent=2),
                  "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
                  "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
                  "helperPod.yaml": yaml.safe_dump(helper_pod, sort_keys=False)}},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "annotations": {
             "storageclass.kubernetes.io/is-default-class": "true"}},
         "provisioner": LOCAL_PATH_PROVISIONER, "volumeBindingMode": "WaitForFirstConsumer",
         "reclaimPolicy": "Delete"},
    ]


def _write_kubelet_client_pki(pki: Path) -> tuple[Path, Path, Path]:
    """A CA the kubelet trusts and the API server's client certificate signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("kubelet-client-ca"))
               .issuer_name(name("kubelet-client-ca")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=7))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(name("kube-apiserver-kubelet-client", "system:masters"))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = pki / "ca.crt", pki / "client.crt", pki / "client.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_key(key_path, key)
    return ca_path, cert_path, key_path


# -- host networking -----------------------------------------------------------------------

def _external_interfaces() -> list[str]:
    """Interfaces with a default route: where nothing of the pod network may go."""
    out = _sh("ip", "-o", "route", "show", "default", check=False)
    return sorted({line.split(" dev ", 1)[1].split()[0] for line in out.splitlines()
                   if " dev " in line})


def _setup_network() -> None:
    if _sh("ip", "-o", "link", "show", BRIDGE, check=False).strip():
        raise NodeError(f"bridge {BRIDGE} already exists: run `python -m tests.node down`")
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    # Forwarding stays off; should anything enable it, pod traffic still cannot leave.
    _sh("iptables", "-I", "FORWARD", "1", "-s", POD_CIDR, "!", "-o", BRIDGE,
        "-m", "comment", "--comment", RULE_COMMENT, "-j", "DROP")


def _iptables_cleanup(binary: str) -> None:
    """Remove every KUBE-* chain and rule (kubelet's, kube-proxy's) and our own rules."""
    save = _sh(f"{binary}-save", check=False)
    table = ""
    deletes: list[tuple[str, list[str]]] = []
    chains: dict[str, list[str]] = {}
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":KUBE-"):
            chains.setdefault(table, []).append(line[1:].split()[0])
        elif line.startswith("-A ") and (" -j KUBE-" in line or " -g KUBE-" in line
                                         or RULE_COMMENT in line):
            chain = line.split()[1]
            if not chain.startswith("KUBE-"):
                deletes.append((table, line))
    for table, line in deletes:
        args = ["-D", *_split_rule(line[3:])]
        _sh(binary, "-t", table, *args, check=False)
    for table, names in chains.items():
        for name in names:
            _sh(binary, "-t", table, "-F", name, check=False)
        for name in names:
            _sh(binary, "-t", table, "-X", name, check=False)


def _nft_tables() -> list[str]:
    """The machine's nftables tables (`table ip nat`, ...); iptables-nft makes them."""
    if shutil.which("nft") is None:
        return []
    return [line.strip() for line in _sh("nft", "list", "tables", check=False).splitlines()
            if line.strip()]


def _remove_empty_tables(tables: set[str]) -> None:
    """Delete the iptables tables that the node's components created and that hold no rule
    once their rules are gone (a machine that had none before is left with none)."""
    for table in tables:
        _, family, name = table.split()
        binary = {"ip": "iptables", "ip6": "ip6tables"}.get(family)
        if binary is None:
            continue
        save = _sh(f"{binary}-save", "-t", name, check=False)
        if not any(line.startswith("-A ") for line in save.splitlines()):
            _sh("nft", "delete", "table", family, name, check=False)


def _split_rule(rule: str) -> list[str]:
    return shlex.split(rule)


# -- start ---------------------------------------------------------------------------------

def _read_sysctls() -> dict[str, str]:
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = (Path("/proc/sys") / key).read_text().strip()
    return values


@contextlib.contextmanager
def _node_lock() -> Iterator[None]:
    path = cache_dir() / "node.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def up(progress: TextIO | None = None, detach: bool = False, timeout: float = 180.0) -> Node:
    """Clean up whatever a previous node left, then start a fresh one and wait for Ready."""
    out = progress if progress is not None else sys.stderr
    t0 = time.monotonic()

    def say(msg: str) -> None:
        out.write(f"[node] {msg} ({time.monotonic() - t0:.1f}s)\n")
        out.flush()

    if reasons := missing():
        raise NodeError("this machine cannot run the node: " + "; ".join(reasons))
    with _node_lock():
        down(progress=out, quiet=True)
        binaries = ensure_built(progress=out, node=True,
                                netpol=network_policy_unsupported() is None)
        built = images.ensure_images(log=out)
        pause = images.ensure_pause(log=out)
        say("binaries and images ready")
        wd = node_dir()
        wd.mkdir(parents=True)
        # Written first, so that down can undo a start that fails half way.
        first = {"sysctls": _read_sysctls(), "nft_tables": _nft_tables()}
        if not detach:
            first["watchdog"] = _start_watchdog(wd)
        (wd / STATE_FILE).write_text(json.dumps(first))
        try:
            node = _start(wd, binaries.kubecp, binaries.helm, binaries.coredns,
                          binaries.netpol, binaries.local_path, built, pause, say, detach,
                          timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                down(progress=out, quiet=True)
            raise
        state = json.loads((wd / STATE_FILE).read_text())
        (wd / STATE_FILE).write_text(json.dumps({**state, **node.state()}, indent=2))
        say(f"node {NODE_NAME} Ready; KUBECONFIG={node.cp.kubeconfig}")
        return node


def network_policy_unsupported() -> str | None:
    """Why kube-network-policies cannot run here (None: it can). It hands new connections to
    itself with nftables' `queue` statement, which needs a kernel with CONFIG_NFT_QUEUE."""
    if shutil.which("nft") is None:
        return "nft is not on PATH (Debian package nftables)"
    table = ("inet", "kubelearn-probe")
    try:
        _sh("nft", "add", "table", *table)
        _sh("nft", "add", "chain", *table, "probe")  # no hook: it sees no packet
        _sh("nft", "add", "rule", *table, "probe", "queue", "num", "100", "bypass")
    except NodeError as exc:
        first = str(exc).splitlines()[0]
        return f"this kernel refuses nftables' queue statement (CONFIG_NFT_QUEUE): {first}"
    finally:
        _sh("nft", "delete", "table", *table, check=False)
    return None


def _in_cluster(wd: Path, cp: ControlPlane, name: str, argv: list[str]) -> list[str]:
    """argv, run with client-go's in-cluster configuration: the API server's address in the
    environment, and the admin's token and CA at the fixed ServiceAccount path, which it gets
    in a mount namespace of its own, on a private /run, so nothing is written to the machine's.
    """
    sa_dir = wd / f"{name}-sa"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(cp.admin_token)
    shutil.copy(cp.ca_file, sa_dir / "ca.crt")
    api_port = cp.server.rsplit(":", 1)[1]
    return ["env", f"KUBERNETES_SERVICE_HOST={NODE_IP}", f"KUBERNETES_SERVICE_PORT={api_port}",
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs tmpfs /run && mkdir -p "$1" && cp "$0/token" "$0/ca.crt" "$1" && '
            'shift && exec "$@"', str(sa_dir), SERVICE_ACCOUNT_DIR, *argv]


def _start_network_policies(wd: Path, cp: ControlPlane, netpol: Path, launcher: _Launcher
                            ) -> tuple[subprocess.Popen, Path]:
    # kube-network-policies: NetworkPolicy enforcement (NFQUEUE and nftables). It only knows
    # the in-cluster configuration.
    (netpol_metrics,) = free_ports(1)
    return launcher.start("kube-network-policies", _in_cluster(wd, cp, "kube-network-policies", [
        str(netpol), f"--hostname-override={NODE_NAME}", "--disable-nri",
        f"--metrics-bind-address=127.0.0.1:{netpol_metrics}", "--v=1"]))


def _start_local_path(wd: Path, cp: ControlPlane, local_path: Path, helper_image: str,
                      launcher: _Launcher) -> tuple[subprocess.Popen, Path]:
    """local-path-provisioner, which makes a PersistentVolume for each claim of the default
    StorageClass: a directory under the work dir, made and removed by a helper pod.

    It reads its configuration and the helper pod's template from its ConfigMap, created here
    first. The API server is reached with the node's kubeconfig; the in-cluster configuration
    is there too because it copies each helper pod's log into its own only through that.
    """
    volumes = wd / LOCAL_PATH_DIR
    volumes.mkdir(mode=0o755)
    manifests = local_path_manifests(volumes, helper_image)
    _sh(*cp.kubectl, "apply", "-f", "-", input=yaml.safe_dump_all(manifests))
    return launcher.start("local-path-provisioner", _in_cluster(wd, cp, "local-path-provisioner", [
        str(local_path), "--debug", "start", f"--kubeconfig={cp.kubeconfig}",
        f"--namespace={LOCAL_PATH_NAMESPACE}", f"--configmap-name={LOCAL_PATH_CONFIG}",
        f"--provisioner-name={LOCAL_PATH_PROVISIONER}", f"--helper-image={helper_image}",
        f"--service-account-name={LOCAL_PATH_ACCOUNT}"]))


def _start(wd: Path, kubecp: Path, helm: Path, coredns: Path | None, netpol: Path | None,
           local_path: Path | None, built: dict[str, images.Image], pause: images.Image,
           say: Callable[[str], None], detach: bool, timeout: float) -> Node:
    assert coredns is not None and local_path is not None
    _setup_network()
    say(f"bridge {BRIDGE} {NODE_IP} for pods in {POD_CIDR}")
    ca, client_cert, client_key = _write_kubelet_client_pki(wd / "pki")
    cp = start_control_plane(
        kubecp, helm, wd / "control-plane", controllers=CONTROLLERS, detach=detach,
        progress=sys.stderr, address=NODE_IP,
        apiserver_args=[f"--kubelet-client-certificate={client_cert}",
                        f"--kubelet-client-key={client_key}",
                        # The node's name is not in any DNS the machine asks.
                        "--kubelet-preferred-address-types=InternalIP"])
    # The node's components join the control plane's process group: one kill stops all.
    state = json.loads((wd / STATE_FILE).read_text())
    (wd / STATE_FILE).write_text(json.dumps({**state, "control_plane": cp.state()}))
    say(f"control plane at {cp.server}")
    launcher = _Launcher(wd, detach)
    launcher.pgid = cp.pgid

    # containerd, and the images imported into it
    socket = wd / "containerd" / "containerd.sock"
    (wd / "cni" / "net.d").mkdir(parents=True)
    (wd / "cni" / "net.d" / "10-kubelearn.conflist").write_text(json.dumps(cni_config(wd)))
    (wd / "containerd-config.toml").write_text(containerd_config(wd, pause.name))
    containerd, containerd_log = launcher.start(
        "containerd", ["containerd", "--config", str(wd / "containerd-config.toml")])
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io"]

    def containerd_ready() -> str | None:
        proc = subprocess.run([*ctr, "version"], capture_output=True, text=True)
        return None if proc.returncode == 0 else proc.stderr.strip()[-200:]

    _wait_until("containerd", containerd, containerd_log, containerd_ready, 60)
    for image in (pause, *built.values()):
        _sh(*ctr, "images", "import", str(image.archive))
    names = {t: f"docker.io/{i.name}" for t, i in built.items()} | {"pause": pause.name}
    say(f"containerd ready, imported {', '.join(i.name for i in (pause, *built.values()))}")

    # kubelet
    kport, khealth, sched_port, proxy_health, proxy_metrics = free_ports(5)
    (wd / "resolv.conf").write_text("")
    kcfg = wd / "kubelet-config.yaml"
    kcfg.write_text(yaml.safe_dump(kubelet_config(wd, socket, kport, khealth, ca)))
    kubelet, kubelet_log = launcher.start("kubelet", [
        str(kubecp), "kubelet", f"--config={kcfg}", f"--kubeconfig={cp.kubeconfig}",
        f"--root-dir={wd / 'kubelet'}", f"--cert-dir={wd / 'kubelet-pki'}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1"])

    # kube-scheduler
    scheduler, scheduler_log = launcher.start("kube-scheduler", [
        str(kubecp), "scheduler", f"--kubeconfig={cp.kubeconfig}",
        f"--authentication-kubeconfig={cp.kubeconfig}",
        f"--authorization-kubeconfig={cp.kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--secure-port={sched_port}", "--profiling=false"])

    # kube-proxy
    pcfg = wd / "kube-proxy-config.yaml"
    pcfg.write_text(yaml.safe_dump(kube_proxy_config(cp.kubeconfig, proxy_health,
                                                     proxy_metrics)))
    proxy, proxy_log = launcher.start("kube-proxy",
                                      [str(kubecp), "proxy", f"--config={pcfg}"])

    # CoreDNS
    (wd / "Corefile").write_text(corefile(cp.kubeconfig))
    dns, dns_log = launcher.start("coredns", [str(coredns), "-conf", str(wd / "Corefile")])

    daemons = [("kube-scheduler", scheduler, scheduler_log), ("kube-proxy", proxy, proxy_log),
               ("coredns", dns, dns_log), ("containerd", containerd, containerd_log)]
    if netpol is not None:
        daemons.append(("kube-network-policies", *_start_network_policies(wd, cp, netpol,
                                                                          launcher)))
    provisioner, provisioner_log = _start_local_path(wd, cp, local_path, names["runner"],
                                                     launcher)
    daemons.append(("local-path-provisioner", provisioner, provisioner_log))

    node = Node(cp=cp, workdir=wd, containerd_socket=socket,
                pids=[*cp.pids, *(p.pid for p in launcher.procs)], pgid=cp.pgid,
                images=names)
    (wd / STATE_FILE).write_text(json.dumps({**state, **node.state()}))

    def node_ready() -> str | None:
        for name, proc, log in daemons:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}; log {log}:\n"
                                        f"{_log_tail(log)}")
        got = node.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if got.returncode != 0:
            return "not registered yet"
        conditions = {c["type"]: c for c in json.loads(got.stdout)["status"].get(
            "conditions", [])}
        ready = conditions.get("Ready", {})
        return None if ready.get("status") == "True" else ready.get("message", "no Ready yet")

    _wait_until("kubelet", kubelet, kubelet_log, node_ready, timeout)

    def provisioner_started() -> str | None:
        started = "Starting provisioner controller" in provisioner_log.read_text(errors="replace")
        return None if started else "not started yet"

    _wait_until("local-path-provisioner", provisioner, provisioner_log, provisioner_started, 60)
    say(f"StorageClass {STORAGE_CLASS} (default): volumes in {node.volumes_dir}")
    return node


# -- stop ----------------------------------------------------------------------------------

def load() -> Node | None:
    path = node_dir() / STATE_FILE
    with contextlib.suppress(OSError, ValueError, KeyError):
        return Node.from_state(json.loads(path.read_text()))
    return None


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes()
        except OSError:
            continue
        if text.encode() in argv and int(cmdline.parent.name) != os.getpid():
            pids.append(int(cmdline.parent.name))
    return pids


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix.rstrip("/") or point.startswith(prefix):
                found.append(point)
    return found


def _kubepods_cgroups() -> list[Path]:
    return sorted(CGROUP_ROOT.glob("*/kubepods"))


def _start_watchdog(wd: Path) -> int:
    """A process, outside the node's process group, that runs `down` when this one dies.

    The components die with the test process (PDEATHSIG), but the containers do not: their
    shims left the group. SIGTERM reaches the watchdog when its parent dies, however it dies.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    with open(wd / "watchdog.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.node", "watchdog", str(os.getpid())],
            cwd=Path(__file__).resolve().parents[2], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=arm)
    return proc.pid


def watchdog(parent: int) -> int:
    """Wait for `parent` to die, then take the node down."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    while True:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            break
        if signal.sigtimedwait({signal.SIGTERM}, 1.0) is not None:
            break
    down()
    return 0


def down(progress: TextIO | None = None, quiet: bool = False) -> None:
    """Stop the node and remove everything it made, in an order that lets each step work:
    processes, then mounts (network namespaces go with them), then the bridge, rules and
    cgroups, then the files."""
    out = progress if progress is not None else sys.stderr
    wd = node_dir()
    state: dict = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((wd / STATE_FILE).read_text())
    if not wd.exists() and not quiet:
        out.write("[node] no node recorded; cleaning up leftovers only\n")
    if (guard := state.get("watchdog")) and guard != os.getpid():
        with contextlib.suppress(ProcessLookupError):
            os.kill(guard, signal.SIGKILL)  # this down is the one it would have run
    # Components: the control plane's process group holds them all.
    if "control_plane" in state:
        cp = ControlPlane.from_state(state["control_plane"])
        pids = [int(p) for p in state.get("pids", cp.pids)]
        live = [p for p in pids if Path(f"/proc/{p}").exists()]
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill_process_group(cp.pgid, 20.0, (), live)
    # Containers: their shims left the group (they daemonize); kill the shims and the
    # containers' processes, then let runc forget them.
    runc_root = wd / "runc"
    for _ in range(3):
        for pid in _processes_mentioning(str(wd)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if runc_root.is_dir():
            for ns_root in runc_root.iterdir():
                listing = _sh("runc", "--root", str(ns_root), "list", "-q", check=False)
                for cid in listing.split():
                    _sh("runc", "--root", str(ns_root), "kill", cid, "KILL", check=False)
                    _sh("runc", "--root", str(ns_root), "delete", "--force", cid, check=False)
        if not _processes_mentioning(str(wd)):
            break
        time.sleep(0.5)
    # Mounts, deepest first: container root filesystems, shm, network namespaces, volumes.
    for point in sorted(_mounts_under(wd), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    # The bridge; the pods' veths went with their namespaces.
    for link in _sh("ip", "-o", "link", "show", "master", BRIDGE, check=False).splitlines():
        name = link.split(":")[1].strip().split("@")[0]
        _sh("ip", "link", "del", name, check=False)
    _sh("ip", "link", "del", BRIDGE, check=False)
    for binary in ("iptables", "ip6tables"):
        if shutil.which(binary):
            _iptables_cleanup(binary)
    if shutil.which("nft"):
        _sh("nft", "delete", "table", *NETPOL_TABLE, check=False)
        if "nft_tables" in state:
            _remove_empty_tables(set(_nft_tables()) - set(state["nft_tables"]))
    # kubepods cgroups, leaves first.
    for top in _kubepods_cgroups():
        for path in sorted((p for p in top.rglob("*") if p.is_dir()),
                           key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()
    # Files the kubelet and CNI keep outside the work dir.
    if CONTAINER_LOG_LINKS.is_dir():
        for link in CONTAINER_LOG_LINKS.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and os.readlink(link).startswith(str(wd)):
                    link.unlink()
    # containerd's CNI library caches each sandbox's results there, loopback included.
    sandboxes = {p.name for part in ("root", "state")
                 for p in (wd / "containerd" / part / "io.containerd.grpc.v1.cri" /
                           "sandboxes").glob("*")}
    if CNI_RESULTS.is_dir():
        for result in CNI_RESULTS.iterdir():
            if result.name.startswith(f"{CNI_NETWORK}-") or any(
                    result.name == f"cni-loopback-{sid}-lo" for sid in sandboxes):
                with contextlib.suppress(OSError):
                    result.unlink()
    for key, value in state.get("sysctls", {}).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value)
    shutil.rmtree(wd, ignore_errors=True)
    if not quiet:
        out.write("[node] down\n")
