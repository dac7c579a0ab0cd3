"""Time from creating an Experiment to all its pods and services existing, beside Kubeflow's
training-operator creating the equivalent TFJob, on the same API server in the same run.

    python bench/operator_scale.py [--sizes 10,100,1000] [--repeats 1] [--no-peer]

The control plane comes from tests/cluster (built once into ~/.cache/kubelearn). The peer is
`go install github.com/kubeflow/training-operator/cmd/training-operator.v1@v1.7.0` into
~/.cache/kubelearn/training-operator-v1.7.0 (run with --enable-scheme=tfjob), and its TFJob CRD
is read from that module's source in the Go module cache, never copied into this repository.
Both operators run the whole time, each watching its own namespaces; sizes alternate which
operator goes first. Every replica is a worker (N workers, one pod and one service each).
Pods are never started (there is no kubelet), so what is measured is the operators' creation
path and the API server, the same for both.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from kubernetes import client, config  # noqa: E402

from tests.cluster.build import ensure_built  # noqa: E402
from tests.cluster.controlplane import start_control_plane  # noqa: E402

PEER_MODULE = "github.com/kubeflow/training-operator"
PEER_VERSION = "v1.7.0"
PEER_PACKAGE = f"{PEER_MODULE}/cmd/training-operator.v1@{PEER_VERSION}"
CACHE = Path(os.environ.get("KUBELEARN_CACHE") or Path.home() / ".cache" / "kubelearn")
PEER_DIR = CACHE / f"training-operator-{PEER_VERSION}"
IMAGE = "kubelearn/runner:0.1.0"


def say(msg: str) -> None:
    print(f"[operator-scale] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


# -- manifests -------------------------------------------------------------------------------
def experiment(name: str, replicas: int) -> dict[str, Any]:
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                     "image": IMAGE, "replicas": {"worker": replicas}}}


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
            group: str, version: str, replicas: int, timeout: float) -> float:
    counters = [Counter(api, kind, namespace, replicas) for kind in ("pods", "services")]
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


# -- main ------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds one creation may take (the peer is rate-limited)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # A plain SIGTERM still stops both operators and the control plane (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    peer, peer_error = (None, "--no-peer") if args.no_peer else build_peer()
    if peer is None and not args.no_peer:
        say(f"training-operator {PEER_VERSION} could not be built; benchmarking without it:\n"
            f"{peer_error}")

    binaries = ensure_built(progress=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    cp = start_control_plane(binaries.kubecp, binaries.helm, work / "cp", progress=sys.stderr)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        core = client.CoreV1Api(api)
        subprocess.run([*cp.kubectl, "apply", "--server-side", "-f",
                        str(ROOT / "crds" / "experiments.kubelearn.dev.yaml")], check=True,
                       stdout=subprocess.DEVNULL)
        ours_ns = [f"ours-{n}-{r}" for n in sizes for r in range(args.repeats)]
        peer_ns = [f"peer-{n}-{r}" for n in sizes for r in range(args.repeats)]
        for ns in ours_ns + (peer_ns if peer else []):
            make_namespace(core, ns)

        env = {**os.environ, **cp.env, "KUBELEARN_METRICS_PORT": "0",
               "KUBELEARN_RESYNC_SECONDS": "30", "PYTHONPATH": str(ROOT / "operator")}
        # As the image starts it (Dockerfile: python -m kubelearn_operator).
        ours_args = [sys.executable, "-m", "kubelearn_operator",
                     f"--liveness=http://127.0.0.1:{free_port()}/healthz"]
        ours_args += [f"--namespace={ns}" for ns in ours_ns]
        procs.append(subprocess.Popen(ours_args, env=env, stdout=(work / "ours.log").open("wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        if peer:
            subprocess.run([*cp.kubectl, "apply", "--server-side", "-f", str(peer_crd())],
                           check=True, stdout=subprocess.DEVNULL)
            # v1.7 serves one namespace or all of them: give it all, it only finds TFJobs.
            procs.append(subprocess.Popen(
                [str(peer), "--enable-scheme=tfjob", "--leader-elect=false",
                 f"--kubeconfig={cp.kubeconfig}",
                 f"--metrics-bind-address=127.0.0.1:{free_port()}",
                 f"--health-probe-bind-address=127.0.0.1:{free_port()}"],
                env={**os.environ, "KUBECONFIG": str(cp.kubeconfig)},
                stdout=(work / "peer.log").open("wb"), stderr=subprocess.STDOUT,
                start_new_session=True))
        time.sleep(5)  # both operators list and start watching
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"an operator exited early; see {work}")

        results: dict[str, dict[int, list[float]]] = {"kubelearn": {}, "training-operator": {}}
        for i, n in enumerate(sizes):
            for r in range(args.repeats):
                runs = [("kubelearn", f"ours-{n}-{r}",
                         experiment(f"exp{n}", n), "experiments", "kubelearn.dev", "v1alpha1")]
                if peer:
                    runs.append(("training-operator", f"peer-{n}-{r}", tfjob(f"tfjob{n}", n),
                                 "tfjobs", "kubeflow.org", "v1"))
                if (i + r) % 2:
                    runs.reverse()
                for who, ns, body, plural, group, version in runs:
                    seconds = measure(api, ns, body, plural, group, version, n, args.timeout)
                    results[who].setdefault(n, []).append(seconds)
                    say(f"{who:18s} {n:5d} replicas: {seconds:7.2f} s")
                    drop_namespace(core, ns)

        print(f"\n{'replicas':>8} {'kubelearn s':>12} {'training-operator s':>20} "
              f"{'peer/kubelearn':>15}")
        summary = []
        for n in sizes:
            ours = statistics.median(results["kubelearn"][n])
            theirs = (statistics.median(results["training-operator"][n])
                      if n in results["training-operator"] else None)
            ratio = theirs / ours if theirs else None
            summary.append({"replicas": n, "kubelearn_s": ours, "training_operator_s": theirs,
                            "ratio": ratio})
            print(f"{n:>8} {ours:>12.2f} {theirs if theirs is not None else float('nan'):>20.2f}"
                  f" {ratio if ratio is not None else float('nan'):>14.1f}x")
            runs = results["kubelearn"][n]
            summary[-1]["kubelearn_runs"] = runs
            print(f"{'':>8} kubelearn over {len(runs)} runs: min {min(runs):.2f} s, "
                  f"median {ours:.2f} s, max {max(runs):.2f} s")
        goal = next((s for s in summary if s["replicas"] == 1000), None)
        if goal:
            print(f"\n1000 replicas under 5 s: {'yes' if goal['kubelearn_s'] < 5 else 'NO'} "
                  f"({goal['kubelearn_s']:.2f} s)")
        if not peer:
            print(f"peer not measured: {peer_error.splitlines()[0] if peer_error else ''}")
        if args.json:
            args.json.write_text(json.dumps({"results": summary, "peer": bool(peer)}, indent=2))
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
