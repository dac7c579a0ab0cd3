"""Time between a Sweep's trials: from one trial's pod finishing to the next trial's Experiment
being created, on a real API server, with the operator run as its image runs it.

    python bench/sweep_latency.py [--trials 21] [--json FILE]

A Sweep of parallelism 1 (random search, one worker per trial) runs ``--trials`` trials. This
script is the kubelet: when a trial's pod exists, it writes the pod's status Succeeded with the
final metrics in its termination message, as the runner leaves them. A watch on the
Experiments records when each trial is created and when its status first shows Succeeded.

For each trial but the last, side by side:
  to next trial    pod status written -> next trial's Experiment created (the whole path)
  to Succeeded     pod status written -> the trial's own status Succeeded (the Experiment
                   controller's part of that path)
The Sweep controller's own part is the difference. Goal: p95 of the first under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "operator", ROOT / "common", ROOT / "runner", ROOT):
    sys.path.insert(0, str(_path))

from kubernetes import client, config, watch  # noqa: E402

from tests.cluster.build import ensure_built  # noqa: E402
from tests.cluster.controlplane import start_control_plane  # noqa: E402
from tests.operator_stack import free_port, image_command  # noqa: E402

GROUP, VERSION = "kubelearn.dev", "v1alpha1"
NAMESPACE = "sweep-bench"
SWEEP = "lat"


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sweep_manifest(trials: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Sweep", "metadata": {"name": SWEEP},
            "spec": {"experiment": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                                    "replicas": {"worker": 1},
                                    "storage": {"ephemeral": True}},
                     "parameters": [{"name": "learning_rate", "type": "double", "min": 0.001,
                                     "max": 0.1, "distribution": "logUniform"}],
                     "objective": {"metric": "loss", "direction": "minimize"},
                     "algorithm": "random", "parallelism": 1, "maxTrials": trials,
                     "seed": 1}}


class Watcher(threading.Thread):
    """First time each trial Experiment is seen, and first time it is seen Succeeded."""

    def __init__(self, api: client.ApiClient) -> None:
        super().__init__(daemon=True)
        self.custom = client.CustomObjectsApi(api)
        self.created: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self.changed = threading.Condition()

    def run(self) -> None:
        while True:  # a watch ends now and then; the next one lists again (first times stay)
            try:
                for event in watch.Watch().stream(self.custom.list_namespaced_custom_object,
                                                  GROUP, VERSION, NAMESPACE, "experiments",
                                                  timeout_seconds=60):
                    self.seen(event["object"], time.perf_counter())
            except Exception as error:  # reconnect, as a client would
                say(f"watch ended: {error}")
                time.sleep(0.1)

    def seen(self, body: dict[str, Any], now: float) -> None:
        name = body["metadata"]["name"]
        with self.changed:
            self.created.setdefault(name, now)
            if (body.get("status") or {}).get("phase") == "Succeeded":
                self.succeeded.setdefault(name, now)
            self.changed.notify_all()

    def wait(self, table: dict[str, float], name: str, timeout: float = 60) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: name in table, timeout):
                raise TimeoutError(f"{name} not seen in {timeout} s")
            return table[name]


def finish_pod(core: client.CoreV1Api, pod: str, loss: float) -> float:
    """Writes the pod's status Succeeded, as a kubelet would; the time it was written."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = json.dumps({"global_step": 100, "loss": loss})
    body = {"status": {"phase": "Succeeded", "startTime": now, "containerStatuses": [{
        "name": "kubelearn", "image": "kubelearn/runner", "imageID": "", "ready": False,
        "restartCount": 0, "state": {"terminated": {
            "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
            "message": message}}}]}}
    core.patch_namespaced_pod_status(pod, NAMESPACE, body)
    return time.perf_counter()


def wait_pod(core: client.CoreV1Api, pod: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod(pod, NAMESPACE)
            return
        except client.ApiException as error:
            if error.status != 404:
                raise
        time.sleep(0.01)
    raise TimeoutError(f"pod {pod} not created in {timeout} s")


def start_operator(cp: Any, log: Path) -> subprocess.Popen[bytes]:
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    pythonpath = os.pathsep.join([str(ROOT / "operator"), str(ROOT / "runner"), str(ROOT)])
    env = {**os.environ, **cp.env, "KUBELEARN_METRICS_PORT": "0", "PYTHONPATH": pythonpath}
    proc = subprocess.Popen([*image_command(), f"--namespace={NAMESPACE}",
                             f"--liveness={liveness}"], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(liveness, timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
    raise TimeoutError("operator not live")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=21)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    binaries = ensure_built(progress=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="sweep-latency-"))
    cp = start_control_plane(binaries.kubecp, binaries.helm, work / "cp", progress=sys.stderr)
    operator = None
    try:
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        core = client.CoreV1Api(api)
        for crd in ("experiments", "sweeps"):
            subprocess.run([*cp.kubectl, "apply", "--server-side", "-f",
                            str(ROOT / "crds" / f"{crd}.kubelearn.dev.yaml")], check=True,
                           stdout=subprocess.DEVNULL)
        subprocess.run([*cp.kubectl, "wait", "--for=condition=Established",
                        "crd/sweeps.kubelearn.dev", "crd/experiments.kubelearn.dev"],
                       check=True, stdout=subprocess.DEVNULL)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        operator = start_operator(cp, work / "operator.log")
        watcher = Watcher(api)
        watcher.start()
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "sweeps", sweep_manifest(args.trials))
        to_next, to_succeeded = [], []
        for n in range(args.trials):
            trial = f"{SWEEP}-{n}"
            watcher.wait(watcher.created, trial)
            wait_pod(core, f"{trial}-worker-0")
            written = finish_pod(core, f"{trial}-worker-0", loss=1.0 / (n + 1))
            to_succeeded.append(watcher.wait(watcher.succeeded, trial) - written)
            if n + 1 < args.trials:
                to_next.append(watcher.wait(watcher.created, f"{SWEEP}-{n + 1}") - written)
        results = {name: {"p50": statistics.median(v), "p95": percentile(v, 0.95),
                          "max": max(v), "n": len(v)}
                   for name, v in (("to_next_trial", to_next), ("to_succeeded", to_succeeded))}
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(15)
        cp.stop()
    print(f"{args.trials} trials, one at a time; seconds from a trial's pod finishing:")
    print("| to | p50 | p95 | max |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name.replace('_', ' ')} | {r['p50']:.3f} | {r['p95']:.3f} | {r['max']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
