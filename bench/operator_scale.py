"""Time from creating an Experiment to all its pods and services existing, beside Kubeflow's
training-operator creating the equivalent TFJob, on the same API server in the same run, with
both operators' API clients held to the same client-side rate limits.

    python bench/operator_scale.py [--sizes 10,100,1000] [--repeats 5]
        [--modes equal-500,equal-20] [--small-job RUNS] [--many COUNTS] [--no-floor]
        [--no-peer] [--json FILE]

The control plane comes from tests/cluster (built once into ~/.cache/kubelearn). The peer is
`go install github.com/kubeflow/training-operator/cmd/training-operator.v1@v1.9.2` into
~/.cache/kubelearn/training-operator-v1.9.2 (run with --enable-scheme=tfjob), and its TFJob CRD
is read from that module's source in the Go module cache, never copied into this repository.

Modes, one after the other against the same API server (both operators restarted per mode):
  equal-500   both at QPS 500 / burst 1000 (kubelearn's defaults, passed explicitly to both)
  equal-20    both at QPS 20 / burst 30 (training-operator's and controller-runtime's defaults)
  defaults    each at its own defaults: no extra run when kubelearn's defaults are 500/1000
              and the peer's 20/30, it is read off the two modes above
--modes runs exactly the modes it names; without it, all of them.
kubelearn takes its limits from KUBELEARN_API_QPS / KUBELEARN_API_BURST, the peer from
--kube-api-qps / --kube-api-burst.

Both operators run the whole time of a mode, each watching its own namespaces; sizes and
repeats alternate which operator goes first. Every replica is a worker (N workers, one pod and
one service each). Pods are never started (there is no kubelet), so what is measured is the
operators' creation path and the API server, the same for both.

Before measuring, each operator runs one small job (4 workers) that is not counted: the first
object of a kind that the API server takes costs it more than any later one.

--small-job RUNS adds, in each mode whose limits are equal, the latency of a small job: the time
from creating a 4-worker experiment to all its pods existing (services are not waited for),
RUNS times per operator (alternating which goes first), reported as p50 and p95. Give
--sizes "" to measure only that.

The floor (unless --no-floor), in the first mode: for each size and repeat, the objects
kubelearn makes for that Experiment (its own plan, from its pure builders) created by a bare
client (bench/bare_create.py: one aiohttp session, no rate limit, the operator's concurrency,
nothing else), in a namespace no operator serves, timed the same way; reported as each
operator's median over the floor's. Beside every operator run: the operator's CPU seconds from
the create to all objects seen, and its peak RSS once a size is done.

--many COUNTS (e.g. 1,10,100,500), in the first mode of equal limits: COUNTS experiments of 4
workers created at once (16 creates in flight from this process), per operator: the seconds
until every pod exists, its requests to the API server (its own counter of them), the reconcile
p95 over that time (the bucket bound of each operator's
reconcile-time histogram: kubelearn_reconcile_duration_seconds, controller-runtime's
controller_runtime_reconcile_time_seconds for tfjob-controller), its CPU seconds and memory.

What the peer needs outside a cluster (its webhook certificate machinery; see start_peer):
namespace kubeflow holding an empty Secret training-operator-webhook-cert, which its cert
rotator fills; a ValidatingWebhookConfiguration validator.training-operator.kubeflow.org whose
caBundle the rotator injects (failurePolicy Fail, so every TFJob create is validated, as in a
cluster); the certificate files on disk, where a pod would have the Secret mounted; and a way for
the API server to reach https://training-operator.kubeflow.svc:<port>, the certificate's DNS
name. For the last the API server gets an egress selector whose "controlplane" traffic (where
it sends webhooks given by URL) goes through a small HTTP CONNECT proxy in this process, which
sends that one host name to 127.0.0.1 and any other to where it names. The rotator only looks
for its files in /tmp/k8s-webhook-server/serving-certs (a constant in the binary), so they are
written there and removed at the end; the webhook server reads its own copy under a temporary
TMPDIR.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "operator", ROOT / "common", ROOT / "runner", ROOT):
    sys.path.insert(0, str(_path))

from kubernetes import client, config  # noqa: E402

from kubelearn_operator.settings import Settings  # noqa: E402
from tests.cluster.build import ensure_built  # noqa: E402
from tests.cluster.controlplane import start_control_plane  # noqa: E402

PEER_MODULE = "github.com/kubeflow/training-operator"
PEER_VERSION = "v1.9.2"
PEER_PACKAGE = f"{PEER_MODULE}/cmd/training-operator.v1@{PEER_VERSION}"
#: training-operator's --kube-api-qps / --kube-api-burst defaults (controller-runtime's too).
PEER_DEFAULTS = (20.0, 30)
PEER_NAMESPACE = "kubeflow"
PEER_SECRET = "training-operator-webhook-cert"
PEER_WEBHOOK_CONFIG = "validator.training-operator.kubeflow.org"
PEER_HOST = f"training-operator.{PEER_NAMESPACE}.svc"
#: Hard-coded in the binary (pkg/cert): where its rotator waits for tls.crt.
PEER_ROTATOR_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")
CACHE = Path(os.environ.get("KUBELEARN_CACHE") or Path.home() / ".cache" / "kubelearn")
PEER_DIR = CACHE / f"training-operator-{PEER_VERSION}"
IMAGE = "kubelearn/runner:0.1.0"
#: Workers of the small job (--small-job).
SMALL_JOB = 4
OURS_DEFAULTS = (Settings.api_qps, Settings.api_burst)


@dataclass(frozen=True)
class Mode:
    name: str
    ours: tuple[float, int]
    peer: tuple[float, int]


MODES = [Mode("equal-500", (500.0, 1000), (500.0, 1000)),
         Mode("equal-20", PEER_DEFAULTS, PEER_DEFAULTS)]


def say(msg: str) -> None:
    print(f"[operator-scale] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def limits(pair: tuple[float, int]) -> str:
    return f"{pair[0]:g}/{pair[1]}"


# -- the peer --------------------------------------------------------------------------------
def build_peer() -> tuple[Path | None, str]:
    """The training-operator binary (built on first use), or None and the reason."""
    binary = PEER_DIR / "bin" / "training-operator.v1"
    if binary.exists():
        return binary, ""
    PEER_DIR.mkdir(parents=True, exist_ok=True)
    say(f"go install {PEER_PACKAGE} (first run: several minutes)")
    env = {**os.environ, "GOBIN": str(PEER_DIR / "bin")}
    proc = subprocess.run(["go", "install", PEER_PACKAGE], env=env, capture_output=True,
                          text=True)
    (PEER_DIR / "build.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not binary.exists():
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                 if not ln.startswith("go: downloading")]
        return None, "\n".join(lines[-25:]) or f"go install exited {proc.returncode}"
    return binary, ""


def peer_crd() -> Path:
    modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                              check=True).stdout.strip()
    path = (Path(modcache) / f"{PEER_MODULE}@{PEER_VERSION}" / "manifests" / "base" / "crds"
            / "kubeflow.org_tfjobs.yaml")
    if not path.exists():
        subprocess.run(["go", "mod", "download", f"{PEER_MODULE}@{PEER_VERSION}"], check=True)
    return path


class ConnectProxy(threading.Thread):
    """HTTP CONNECT over a Unix socket, for the API server's egress selector: the peer's
    webhook host name goes to 127.0.0.1 (same port), anything else where it names."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(64)

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        upstream = None
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            method, target, *_ = head.split(b"\r\n")[0].decode().split()
            host, _, port = target.rpartition(":")
            if method != "CONNECT":
                conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            host = "127.0.0.1" if host == PEER_HOST else host.strip("[]")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=10)
            except OSError:
                conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            upstream.settimeout(None)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            pump = threading.Thread(target=self.pump, args=(upstream, conn), daemon=True)
            pump.start()
            self.pump(conn, upstream)
            pump.join()
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(1 << 16):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def egress_config(work: Path, proxy_socket: Path) -> Path:
    path = work / "egress-selector.json"
    path.write_text(json.dumps({
        "apiVersion": "apiserver.k8s.io/v1beta1", "kind": "EgressSelectorConfiguration",
        "egressSelections": [{"name": "controlplane", "connection": {
            "proxyProtocol": "HTTPConnect",
            "transport": {"uds": {"udsName": str(proxy_socket)}}}}]}))
    return path


def prepare_peer(api: client.ApiClient, kubectl: list[str], webhook_port: int) -> None:
    """The CRD, and the objects the peer's cert rotator fills in."""
    subprocess.run([*kubectl, "apply", "--server-side", "-f", str(peer_crd())], check=True,
                   stdout=subprocess.DEVNULL)
    core = client.CoreV1Api(api)
    make_namespace(core, PEER_NAMESPACE)
    core.create_namespaced_secret(PEER_NAMESPACE, client.V1Secret(
        metadata=client.V1ObjectMeta(name=PEER_SECRET)))
    # As upstream's manifests/base/webhook/manifests.yaml has it for TFJobs, with a URL in place
    # of the Service (there are no Services' endpoints to route to outside a cluster).
    client.AdmissionregistrationV1Api(api).create_validating_webhook_configuration({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": PEER_WEBHOOK_CONFIG},
        "webhooks": [{
            "name": "validator.tfjob.training-operator.kubeflow.org",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"url": f"https://{PEER_HOST}:{webhook_port}"
                                    "/validate-kubeflow-org-v1-tfjob"},
            "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["tfjobs"]}]}]})


def write_peer_certs(core: client.CoreV1Api, dirs: list[Path], timeout: float = 60) -> None:
    """Once the rotator has filled the Secret, put its files where a mount would."""
    deadline = time.monotonic() + timeout
    while True:
        data = core.read_namespaced_secret(PEER_SECRET, PEER_NAMESPACE).data or {}
        if all(data.get(k) for k in ("tls.crt", "tls.key", "ca.crt")):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"secret {PEER_SECRET} not filled after {timeout:.0f}s")
        time.sleep(0.2)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (d / key).write_bytes(base64.b64decode(data[key]))


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"training-operator exited ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"training-operator not listening on :{port} after {timeout:.0f}s")


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


# -- manifests -------------------------------------------------------------------------------
def experiment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                     "image": IMAGE, "replicas": {"worker": replicas},
                     # No model directory claim: a TFJob has none either.
                     "storage": {"ephemeral": True}}}


def tfjob(name: str, replicas: int) -> dict[str, Any]:
    container = {"name": "tensorflow", "image": IMAGE,
                 "command": ["kubelearn", "run", "--experiment-fn",
                             "kubelearn.examples.linear:experiment_fn"]}
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
            "spec": {"tfReplicaSpecs": {"Worker": {
                "replicas": replicas, "restartPolicy": "Never",
                "template": {"spec": {"containers": [container]}}}}}}


# -- measuring -------------------------------------------------------------------------------
class Counter(threading.Thread):
    """Counts the pods or services that appear in a namespace, from a watch."""

    def __init__(self, api: client.ApiClient, kind: str, namespace: str, target: int) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api)
        self.kind, self.namespace, self.target = kind, namespace, target
        self.names: set[str] = set()
        self.done_at: float | None = None
        self.ready = threading.Event()
        self.finished = threading.Event()

    def run(self) -> None:
        lister = (self.core.list_namespaced_pod if self.kind == "pods"
                  else self.core.list_namespaced_service)
        rv = lister(self.namespace).metadata.resource_version
        self.ready.set()
        # Raw watch lines, names only: the same light cost whichever operator is measured.
        # The server may close a watch at any time (a slow reader, a timeout): watch again
        # from the last version seen.
        while True:
            resp = lister(self.namespace, watch=True, resource_version=rv, timeout_seconds=900,
                          allow_watch_bookmarks=True, _preload_content=False)
            buffer = b""
            try:
                for chunk in resp.stream(1 << 16):
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                        if event.get("type") == "ADDED":
                            self.names.add(obj["metadata"]["name"])
                    if len(self.names) >= self.target:
                        self.done_at = time.monotonic()
                        self.finished.set()
                        return
            finally:
                resp.release_conn()


def measure(api: client.ApiClient, namespace: str, body: dict[str, Any], plural: str,
            group: str, version: str, replicas: int, timeout: float,
            kinds: tuple[str, ...] = ("pods", "services")) -> float:
    counters = [Counter(api, kind, namespace, replicas) for kind in kinds]
    for c in counters:
        c.start()
        c.ready.wait(30)
    start = time.monotonic()
    client.CustomObjectsApi(api).create_namespaced_custom_object(group, version, namespace,
                                                                 plural, body)
    for c in counters:
        if not c.finished.wait(max(timeout - (time.monotonic() - start), 0)):
            raise TimeoutError(f"{plural}: only {len(c.names)}/{replicas} {c.kind} after "
                               f"{timeout:.0f}s")
    return max(c.done_at for c in counters if c.done_at) - start


def measure_floor(api: client.ApiClient, cp: Any, namespace: str, replicas: int,
                  timeout: float) -> float:
    """The same objects as kubelearn makes for an Experiment of `replicas` workers, created
    by a bare client (bare_create.py) in a namespace no operator serves, timed the same way:
    from the go to the watches seeing all pods and services."""
    body = experiment(f"exp{replicas}", replicas)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "kubelearn.dev", "v1alpha1", namespace, "experiments", body)
    creator = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "bare_create.py"), cp.server, str(cp.ca_file),
         cp.admin_token, namespace, body["metadata"]["name"]],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert creator.stdin is not None and creator.stdout is not None
    try:
        if creator.stdout.readline().strip() != "ready":
            raise RuntimeError("bare_create.py did not get ready")
        counters = [Counter(api, kind, namespace, replicas) for kind in ("pods", "services")]
        for c in counters:
            c.start()
            c.ready.wait(30)
        start = time.monotonic()
        creator.stdin.write("go\n")
        creator.stdin.flush()
        for c in counters:
            if not c.finished.wait(max(timeout - (time.monotonic() - start), 0)):
                raise TimeoutError(f"floor: only {len(c.names)}/{replicas} {c.kind}")
        creator.wait(60)
        if creator.returncode:
            raise RuntimeError(f"bare_create.py exited with {creator.returncode}")
        return max(c.done_at for c in counters if c.done_at) - start
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()


def measure_many(api: client.ApiClient, who: str, namespace: str, count: int,
                 running: Running, timeout: float) -> dict[str, Any]:
    """`count` Experiments (or TFJobs) of SMALL_JOB workers created at once (16 at a time from
    this process): the seconds until every pod exists, the operator's reconcile p95 over that
    time (the bucket bound) and its memory after."""
    make = kubelearn_run if who == "kubelearn" else peer_run
    jobs = [make(namespace, SMALL_JOB, f"-{i}") for i in range(count)]
    custom = client.CustomObjectsApi(api)
    counter = Counter(api, "pods", namespace, SMALL_JOB * count)
    counter.start()
    counter.ready.wait(30)
    before = scrape(running.metrics)
    cpu = cpu_seconds(running.proc.pid)
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda job: custom.create_namespaced_custom_object(
            job[4], job[5], namespace, job[3], job[2]), jobs))
    if not counter.finished.wait(timeout):
        raise TimeoutError(f"{who}: only {len(counter.names)}/{SMALL_JOB * count} pods")
    seconds = (counter.done_at or time.monotonic()) - start
    time.sleep(1)  # the reconciles that wrote the last pods' status have ended
    after = scrape(running.metrics)
    p95 = bucket_percentile(reconcile_buckets(who, before), reconcile_buckets(who, after), 95)
    return {"seconds": seconds, "reconcile_p95_le": p95,
            "requests": requests_made(who, after) - requests_made(who, before),
            "cpu_seconds": cpu_seconds(running.proc.pid) - cpu,
            **memory_mib(running.proc.pid)}


def make_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            return
        except client.ApiException:
            time.sleep(0.2)
    raise TimeoutError(f"no default ServiceAccount in {name}")


def drop_namespace(core: client.CoreV1Api, name: str) -> None:
    """Delete and wait until it is gone, so clean-up never overlaps the next measurement."""
    core.delete_namespace(name)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except client.ApiException as error:
            if error.status == 404:
                return
        time.sleep(0.5)
    say(f"namespace {name} still terminating after 300s")


# -- operators -------------------------------------------------------------------------------
def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    procs.clear()


@dataclass
class Running:
    """A started operator: its process and where its Prometheus metrics are."""
    proc: subprocess.Popen[bytes]
    metrics: str


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


#: The reconcile-time histogram of each operator: (metric, a label it must carry).
RECONCILE_HISTOGRAMS = {
    "kubelearn": ("kubelearn_reconcile_duration_seconds_bucket", ""),
    "training-operator": ("controller_runtime_reconcile_time_seconds_bucket",
                          'controller="tfjob-controller"')}


#: Each operator's count of its requests to the API server (all methods and answers).
REQUEST_COUNTERS = {"kubelearn": "kubelearn_api_requests_total",
                    "training-operator": "rest_client_requests_total"}


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def requests_made(who: str, text: str) -> float:
    """The operator's requests to the API server so far, from its metrics."""
    metric = REQUEST_COUNTERS[who]
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith(metric + "{"))


def reconcile_buckets(who: str, text: str) -> dict[float, float]:
    """Cumulative counts of the operator's reconcile-time histogram, by upper bound."""
    metric, label = RECONCILE_HISTOGRAMS[who]
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(metric + "{") and label in line:
            labels, _, value = line.rpartition(" ")
            bound = labels.split('le="', 1)[1].split('"', 1)[0]
            key = float("inf") if bound == "+Inf" else float(bound)
            buckets[key] = buckets.get(key, 0.0) + float(value)
    return buckets


def bucket_percentile(before: dict[float, float], after: dict[float, float],
                      pct: float) -> float | None:
    """The upper bound of the bucket holding the percentile of the reconciles between two
    readings of a histogram (None when there were none)."""
    delta = {b: after[b] - before.get(b, 0.0) for b in sorted(after)}
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return next(b for b, count in delta.items() if count >= total * pct / 100)


def start_ours(cp: Any, mode: Mode, namespaces: list[str], log: Path) -> Running:
    pythonpath = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "runner"), str(ROOT),
                                  *filter(None, [os.environ.get("PYTHONPATH")])])
    metrics_port = free_port()
    env = {**os.environ, **cp.env, "KUBELEARN_METRICS_PORT": str(metrics_port),
           "KUBELEARN_RESYNC_SECONDS": "30", "PYTHONPATH": pythonpath,
           "KUBELEARN_API_QPS": f"{mode.ours[0]:g}", "KUBELEARN_API_BURST": str(mode.ours[1])}
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    # As the image starts it (Dockerfile: python -m kubelearn_operator).
    argv = [sys.executable, "-m", "kubelearn_operator", f"--liveness={liveness}"]
    argv += [f"--namespace={ns}" for ns in namespaces]
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_ready(liveness, proc, 60)
    except BaseException:
        stop([proc])
        raise
    return Running(proc, f"http://127.0.0.1:{metrics_port}/metrics")


def start_peer(peer: Path, cp: Any, core: client.CoreV1Api, mode: Mode, webhook_port: int,
               peer_tmp: Path, log: Path) -> Running:
    """The peer with mode's limits, once its webhook server listens and its controller runs.
    v1.9 serves one namespace or all of them: give it all, it only finds TFJobs."""
    probe, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [str(peer), "--enable-scheme=tfjob", "--leader-elect=false",
         f"--kube-api-qps={mode.peer[0]:g}", f"--kube-api-burst={mode.peer[1]}",
         f"--kubeconfig={cp.kubeconfig}", f"--webhook-server-port={webhook_port}",
         f"--metrics-bind-address=127.0.0.1:{metrics_port}",
         f"--health-probe-bind-address=127.0.0.1:{probe}"],
        env={**os.environ, "KUBECONFIG": str(cp.kubeconfig), "MY_POD_NAMESPACE": PEER_NAMESPACE,
             "TMPDIR": str(peer_tmp)},
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        write_peer_certs(core, [PEER_ROTATOR_CERT_DIR,
                                peer_tmp / "k8s-webhook-server" / "serving-certs"])
        wait_port(webhook_port, proc, 120)
        wait_ready(f"http://127.0.0.1:{probe}/readyz", proc, 60)
        deadline = time.monotonic() + 60
        while b"Starting workers" not in log.read_bytes():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"training-operator's controller did not start; see {log}")
            time.sleep(0.2)
    except BaseException:
        stop([proc])
        raise
    return Running(proc, f"http://127.0.0.1:{metrics_port}/metrics")


# -- main ------------------------------------------------------------------------------------
def spread(runs: list[float]) -> str:
    return (f"{min(runs):6.2f} {statistics.median(runs):6.2f} {max(runs):6.2f}")


def percentile(runs: list[float], pct: float) -> float:
    """Linear between the closest ranks (numpy's default)."""
    ordered = sorted(runs)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def kubelearn_run(namespace: str, replicas: int, suffix: str = "") -> tuple[Any, ...]:
    return ("kubelearn", namespace, experiment(f"exp{replicas}{suffix}", replicas),
            "experiments", "kubelearn.dev", "v1alpha1")


def peer_run(namespace: str, replicas: int, suffix: str = "") -> tuple[Any, ...]:
    return ("training-operator", namespace, tfjob(f"tfjob{replicas}{suffix}", replicas),
            "tfjobs", "kubeflow.org", "v1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000", help='"" for none')
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--modes", help=f"any of {', '.join(m.name for m in MODES)}, defaults "
                                         "(exactly these; by default all, and defaults when "
                                         "they do not already measure it)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one creation may take (at 20 QPS 1000 replicas take "
                             "minutes)")
    parser.add_argument("--small-job", type=int, default=0, metavar="RUNS",
                        help=f"also the latency of a {SMALL_JOB}-worker job, RUNS times per "
                             "operator, in modes of equal limits (p50 and p95)")
    parser.add_argument("--many", default="", metavar="COUNTS",
                        help=f"also COUNTS (e.g. 1,10,100,500) experiments of {SMALL_JOB} workers "
                             "created at once, in the first mode of equal limits")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the bare client's creation of the same objects")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    many = [int(s) for s in args.many.split(",") if s.strip()]
    defaults = Mode("defaults", OURS_DEFAULTS, PEER_DEFAULTS)
    if args.modes is not None:
        modes = [m for m in [*MODES, defaults] if m.name in args.modes.split(",")]
    else:
        modes = list(MODES)
        # Each at its own defaults costs no run when the modes above already measured both.
        if not args.no_peer and sizes and (not any(m.ours == OURS_DEFAULTS for m in modes)
                                           or not any(m.peer == PEER_DEFAULTS for m in modes)):
            modes.append(defaults)
    # A plain SIGTERM still stops both operators and the control plane (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    peer, peer_error = (None, "--no-peer") if args.no_peer else build_peer()
    if peer is None and not args.no_peer:
        say(f"training-operator {PEER_VERSION} could not be built; benchmarking without it:\n"
            f"{peer_error}")

    binaries = ensure_built(progress=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    proxy = ConnectProxy(work / "egress.sock") if peer else None
    apiserver_args = ([f"--egress-selector-config-file={egress_config(work, proxy.path)}"]
                      if proxy else [])
    if proxy:
        proxy.start()
    made_cert_dir = peer is not None and not PEER_ROTATOR_CERT_DIR.exists()
    if peer and not made_cert_dir:
        say(f"{PEER_ROTATOR_CERT_DIR} exists already: its files will be overwritten")
    cp = start_control_plane(binaries.kubecp, binaries.helm, work / "cp", progress=sys.stderr,
                             apiserver_args=apiserver_args)
    procs: list[subprocess.Popen[bytes]] = []
    # results[mode][operator][replicas] = seconds of each repeat
    results: dict[str, dict[str, dict[int, list[float]]]] = {}
    # cpu[mode][operator][replicas] = CPU seconds of each repeat; peak[...][replicas] = MiB
    cpu: dict[str, dict[str, dict[int, list[float]]]] = {}
    peak: dict[str, dict[str, dict[int, float]]] = {}
    # small[mode][operator] = seconds of each small job
    small: dict[str, dict[str, list[float]]] = {}
    # crowd[operator][count] = measure_many's figures
    crowd: dict[str, dict[int, dict[str, Any]]] = {}
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        core = client.CoreV1Api(api)
        subprocess.run([*cp.kubectl, "apply", "--server-side", "-f",
                        str(ROOT / "crds" / "experiments.kubelearn.dev.yaml")], check=True,
                       stdout=subprocess.DEVNULL)
        webhook_port = free_port()
        if peer:
            prepare_peer(api, cp.kubectl, webhook_port)

        for m, mode in enumerate(modes):
            say(f"mode {mode.name}: kubelearn at {limits(mode.ours)}, training-operator at "
                f"{limits(mode.peer)} (QPS/burst)")
            small_runs = args.small_job if mode.ours == mode.peer else 0
            floor = m == 0 and not args.no_floor
            counts = many if mode.ours == mode.peer and not crowd else []
            ours_ns = [f"ours-{mode.name}-{n}-{r}" for n in sizes for r in range(args.repeats)]
            peer_ns = [f"peer-{mode.name}-{n}-{r}" for n in sizes for r in range(args.repeats)]
            ours_ns += [f"ours-{mode.name}-small-{r}" for r in range(small_runs)]
            peer_ns += [f"peer-{mode.name}-small-{r}" for r in range(small_runs)]
            ours_ns += [f"ours-many-{c}" for c in counts] + [f"ours-{mode.name}-warm"]
            peer_ns += [f"peer-many-{c}" for c in counts] + [f"peer-{mode.name}-warm"]
            floor_ns = [f"floor-{n}-{r}" for n in sizes for r in range(args.repeats)] * floor
            for ns in ours_ns + (peer_ns if peer else []) + floor_ns:
                make_namespace(core, ns)
            running = {"kubelearn": start_ours(cp, mode, ours_ns,
                                               work / f"ours-{mode.name}.log")}
            if peer:
                running["training-operator"] = start_peer(
                    peer, cp, core, mode, webhook_port, work / "peer-tmp",
                    work / f"peer-{mode.name}.log")
            procs.extend(r.proc for r in running.values())
            time.sleep(3)  # both list and start watching
            for proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"an operator exited early; see {work}")
            # One small job each, not measured: the first object of a kind the API server
            # takes costs it more than any later one, whoever makes it.
            warm = [kubelearn_run(f"ours-{mode.name}-warm", SMALL_JOB)]
            warm += [peer_run(f"peer-{mode.name}-warm", SMALL_JOB)] if peer else []
            for _, ns, *job in warm:
                measure(api, ns, *job, SMALL_JOB, args.timeout)
                drop_namespace(core, ns)

            res = results[mode.name] = {"kubelearn": {}, "training-operator": {}, "floor": {}}
            used = cpu[mode.name] = {who: {} for who in running}
            peaks = peak[mode.name] = {who: {} for who in running}
            for i, n in enumerate(sizes):
                for r in range(args.repeats):
                    runs = [kubelearn_run(f"ours-{mode.name}-{n}-{r}", n)]
                    if peer:
                        runs.append(peer_run(f"peer-{mode.name}-{n}-{r}", n))
                    if floor:
                        runs.append(("floor", f"floor-{n}-{r}"))
                    if (m + i + r) % 2:
                        runs.reverse()
                    for who, ns, *job in runs:
                        if who == "floor":
                            seconds = measure_floor(api, cp, ns, n, args.timeout)
                        else:
                            before = cpu_seconds(running[who].proc.pid)
                            seconds = measure(api, ns, *job, n, args.timeout)
                            used[who].setdefault(n, []).append(
                                cpu_seconds(running[who].proc.pid) - before)
                        res[who].setdefault(n, []).append(seconds)
                        say(f"{mode.name:9s} {who:18s} {n:5d} replicas: {seconds:7.2f} s")
                        drop_namespace(core, ns)
                for who, one in running.items():
                    peaks[who][n] = memory_mib(one.proc.pid)["VmHWM"]
            if small_runs:
                lat = small[mode.name] = {"kubelearn": [], "training-operator": []}
            for r in range(small_runs):
                runs = [kubelearn_run(f"ours-{mode.name}-small-{r}", SMALL_JOB)]
                if peer:
                    runs.append(peer_run(f"peer-{mode.name}-small-{r}", SMALL_JOB))
                if (m + r) % 2:
                    runs.reverse()
                for who, ns, body, plural, group, version in runs:
                    seconds = measure(api, ns, body, plural, group, version, SMALL_JOB,
                                      args.timeout, kinds=("pods",))
                    lat[who].append(seconds)
                    say(f"{mode.name:9s} {who:18s} small job {r + 1:2d}: {seconds * 1000:7.1f} ms")
                    drop_namespace(core, ns)
            for count in counts:
                for who in sorted(running, reverse=bool(count % 2)):
                    ns = f"{'ours' if who == 'kubelearn' else 'peer'}-many-{count}"
                    figures = measure_many(api, who, ns, count, running[who], args.timeout)
                    crowd.setdefault(who, {})[count] = figures
                    say(f"{mode.name:9s} {who:18s} {count:4d} experiments: "
                        f"{figures['seconds']:7.2f} s")
                    drop_namespace(core, ns)
            stop(procs)

        if sizes:
            report(modes, sizes, results, defaults, bool(peer))
            report_cost(cpu, peak)
        if floor_of(results):
            report_floor(results)
        if crowd:
            report_many(crowd)
        if small:
            report_small(small)
        if not peer:
            print(f"peer not measured: {peer_error.splitlines()[0] if peer_error else ''}")
        if args.json:
            args.json.write_text(json.dumps({
                "peer": f"training-operator {PEER_VERSION}" if peer else None,
                "modes": {m.name: {"kubelearn_qps_burst": m.ours,
                                   "training_operator_qps_burst": m.peer} for m in modes},
                "results": results, "cpu_seconds": cpu, "peak_rss_mib": peak,
                "many": crowd,
                "small_job": {"workers": SMALL_JOB, "seconds": small} if small else None},
                indent=2))
        return 0
    finally:
        stop(procs)
        cp.stop()
        if proxy:
            proxy.close()
        if made_cert_dir:
            shutil.rmtree(PEER_ROTATOR_CERT_DIR.parent, ignore_errors=True)
        shutil.rmtree(work / "peer-tmp", ignore_errors=True)


def report(modes: list[Mode], sizes: list[int], results: dict[str, dict[str, dict[int,
           list[float]]]], defaults: Mode, peer: bool) -> None:
    """Per mode and size: min, median and max seconds of each operator, and the ratio of
    medians (training-operator / kubelearn: above 1, kubelearn is faster)."""
    rows: list[tuple[str, int, list[float], list[float] | None]] = []
    for mode in modes:
        for n in sizes:
            res = results[mode.name]
            rows.append((f"{mode.name} ({limits(mode.ours)} vs {limits(mode.peer)})", n,
                         res["kubelearn"][n], res["training-operator"].get(n)))
    ours_mode = next((m for m in modes if m.ours == OURS_DEFAULTS), None)
    peer_mode = next((m for m in modes if m.peer == PEER_DEFAULTS), None)
    derived = defaults not in modes and peer and ours_mode and peer_mode
    if derived:
        assert ours_mode is not None and peer_mode is not None
        for n in sizes:
            rows.append((f"defaults ({limits(OURS_DEFAULTS)} vs {limits(PEER_DEFAULTS)})*", n,
                         results[ours_mode.name]["kubelearn"][n],
                         results[peer_mode.name]["training-operator"][n]))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'mode (kubelearn vs peer QPS/burst)':<{width}} {'replicas':>8}  "
          f"{'kubelearn min/med/max s':>22}  {'training-operator min/med/max s':>31}  "
          f"{'ratio':>6}")
    for label, n, ours, theirs in rows:
        ratio = statistics.median(theirs) / statistics.median(ours) if theirs else None
        print(f"{label:<{width}} {n:>8}  {spread(ours):>22}  "
              f"{spread(theirs) if theirs else '-':>31}  "
              f"{f'{ratio:.1f}x' if ratio else '-':>6}")
    if derived:
        print("* read off the modes above, not a run of its own")
    repeats = {len(r[2]) for r in rows}
    print(f"runs per cell: {', '.join(map(str, sorted(repeats)))}; ratio: median of "
          f"training-operator over median of kubelearn")



def report_small(small: dict[str, dict[str, list[float]]]) -> None:
    """Per mode: p50 and p95 milliseconds of each operator's small job, and the ratio of
    p50s (training-operator / kubelearn)."""
    print(f"\nsmall job ({SMALL_JOB} workers, create to all pods existing), ms")
    print(f"{'mode':<10} {'runs':>5}  {'kubelearn p50/p95':>18}  "
          f"{'training-operator p50/p95':>26}  {'ratio p50':>9}  {'ratio p95':>9}")
    for mode, lat in small.items():
        ours, theirs = lat["kubelearn"], lat["training-operator"]
        cells = [f"{percentile(ours, 50) * 1000:.1f} / {percentile(ours, 95) * 1000:.1f}"]
        cells.append(f"{percentile(theirs, 50) * 1000:.1f} / {percentile(theirs, 95) * 1000:.1f}"
                     if theirs else "-")
        ratios = [f"{percentile(theirs, p) / percentile(ours, p):.1f}x" if theirs else "-"
                  for p in (50, 95)]
        print(f"{mode:<10} {len(ours):>5}  {cells[0]:>18}  {cells[1]:>26}  {ratios[0]:>9}  "
              f"{ratios[1]:>9}")
    print("ratio: training-operator's percentile over kubelearn's (above 1, kubelearn is "
          "faster)")


def report_cost(cpu: dict[str, dict[str, dict[int, list[float]]]],
                peak: dict[str, dict[str, dict[int, float]]]) -> None:
    """Per mode and size: each operator's CPU seconds for one creation (median of the
    repeats, from the create to all objects seen) and its peak RSS once the size was done."""
    print("\noperator cost: CPU seconds per creation (median), peak RSS MiB after the size")
    print(f"{'mode':<10} {'replicas':>8}  {'kubelearn CPU s':>15}  {'peer CPU s':>10}  "
          f"{'kubelearn peak MiB':>18}  {'peer peak MiB':>13}")
    for mode, used in cpu.items():
        ours, theirs = used.get("kubelearn", {}), used.get("training-operator", {})
        for n in sorted(ours):
            cells = [f"{statistics.median(ours[n]):.2f}",
                     f"{statistics.median(theirs[n]):.2f}" if n in theirs else "-",
                     f"{peak[mode]['kubelearn'][n]:.0f}",
                     f"{peak[mode]['training-operator'][n]:.0f}"
                     if "training-operator" in peak[mode] else "-"]
            print(f"{mode:<10} {n:>8}  {cells[0]:>15}  {cells[1]:>10}  {cells[2]:>18}  "
                  f"{cells[3]:>13}")


def floor_of(results: dict[str, dict[str, dict[int, list[float]]]]) -> str | None:
    """The mode whose repeats include the bare client's."""
    return next((mode for mode, res in results.items() if res.get("floor")), None)


def report_floor(results: dict[str, dict[str, dict[int, list[float]]]]) -> None:
    """Per size: the bare client's min/median/max and each operator's median over it."""
    mode = floor_of(results)
    assert mode is not None
    res = results[mode]
    print(f"\nthe floor ({mode}): the same objects by a bare client, no rate limit, "
          f"{Settings.create_concurrency} in flight")
    print(f"{'replicas':>8}  {'floor min/med/max s':>20}  {'kubelearn / floor':>17}  "
          f"{'peer / floor':>12}")
    for n, runs in sorted(res["floor"].items()):
        base = statistics.median(runs)
        ours = statistics.median(res["kubelearn"][n]) / base
        theirs = (f"{statistics.median(res['training-operator'][n]) / base:.2f}x"
                  if res["training-operator"].get(n) else "-")
        print(f"{n:>8}  {spread(runs):>20}  {f'{ours:.2f}x':>17}  {theirs:>12}")


def report_many(crowd: dict[str, dict[int, dict[str, Any]]]) -> None:
    """Per count of small experiments created at once: seconds to all pods, reconcile p95
    (the histogram's bucket bound), CPU seconds and memory, each operator."""
    print(f"\nmany experiments of {SMALL_JOB} workers created at once")
    print(f"{'operator':<18} {'count':>5}  {'all pods s':>10}  {'reconcile p95 <=':>16}  "
          f"{'requests':>8}  {'CPU s':>6}  {'RSS MiB':>7}  {'peak MiB':>8}")
    for who, figures in crowd.items():
        for count, f in sorted(figures.items()):
            p95 = f["reconcile_p95_le"]
            print(f"{who:<18} {count:>5}  {f['seconds']:>10.2f}  "
                  f"{f'{p95:g} s' if p95 is not None else '-':>16}  {f['requests']:>8.0f}  "
                  f"{f['cpu_seconds']:>6.2f}  {f['VmRSS']:>7.0f}  {f['VmHWM']:>8.0f}")
    print("requests: to the API server while the count was measured (and 1 s after)")


if __name__ == "__main__":
    sys.exit(main())
