"""The user's path on a real node: the chart installs the operator from the image built here,
and experiments run as pods in containers, each with its own filesystem, reached through
cluster DNS and read with `kubectl logs`.

The install, the example run and the clean-up are hack/kind-e2e.sh's own steps, run with the
node's kubectl and helm on PATH: the same commands a kind user runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubelearn_spec import names
from tests.cluster.helpers import wait_for
from tests.node import node as nodes

pytestmark = [pytest.mark.node, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
KIND_E2E = REPO / "hack" / "kind-e2e.sh"
RELEASE_NS = "kubelearn-system"
NS = "experiments"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


class Cluster:
    """The node seen from a test: kubectl in the experiments' namespace, and kind-e2e.sh."""

    def __init__(self, node: nodes.Node, bindir: Path) -> None:
        self.node = node
        self.env = {**os.environ, **node.env, "PATH": f"{bindir}:{os.environ['PATH']}",
                    "RELEASE_NAMESPACE": RELEASE_NS, "EXAMPLE_NAMESPACE": NS,
                    # The images were imported, never to be pulled.
                    "HELM_EXTRA_ARGS": "--set image.pullPolicy=Never "
                                       "--set runnerImage.pullPolicy=Never"}

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.node.kubectl("-n", NS, *args, check=check, timeout=timeout, input=input)

    def kind_e2e(self, *steps: str, timeout: float = 900, **env: str
                 ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["bash", str(KIND_E2E), *steps], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **env})
        assert proc.returncode == 0, f"kind-e2e.sh {' '.join(steps)}:\n{proc.stdout}{proc.stderr}"
        return proc

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any]:
        return json.loads(self.node.kubectl("-n", namespace, "get", kind, name, "-o",
                                            "json").stdout)

    def wait_phase(self, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            exp = self.get("experiment", name)
            seen = exp.get("status", {}).get("phase")
            assert seen != "Failed" or phase == "Failed", json.dumps(exp.get("status"))
            return exp if seen == phase else None

        try:
            return wait_for(reached, timeout=timeout, description=f"experiment {name} {phase}")
        except AssertionError:
            pods = self.kubectl("get", "pods", "-o", "wide", check=False).stdout
            raise AssertionError(f"experiment {name} not {phase}; pods:\n{pods}") from None

    def running_pod(self, name: str, timeout: float = 180) -> dict[str, Any]:
        def running() -> dict[str, Any] | None:
            pod = self.get("pod", name)
            statuses = pod["status"].get("containerStatuses") or []
            return pod if statuses and "running" in statuses[0]["state"] else None

        return wait_for(running, timeout=timeout, description=f"pod {name} running")


@pytest.fixture(scope="module")
def cluster(real_node: nodes.Node, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    """The operator installed by kind-e2e.sh's install step, in restricted namespaces."""
    bindir = tmp_path_factory.mktemp("bin")
    (bindir / "kubectl").symlink_to(real_node.cp.kubecp)
    (bindir / "helm").symlink_to(real_node.cp.helm)
    c = Cluster(real_node, bindir)
    for ns in (RELEASE_NS, NS):
        c.node.kubectl("apply", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": ns, "labels": RESTRICTED}}))
    c.kind_e2e("install", "wait-operator")
    try:
        yield c
    finally:
        c.kind_e2e("uninstall")


def linear(name: str, train_steps: int, worker_policy: str = "ExitCode") -> dict[str, Any]:
    """The example's model, trained long enough to act on it while it runs."""
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": name},
            "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                     "hparams": {"learning_rate": 0.05, "train_steps": train_steps},
                     "replicaSpecs": {
                         "ps": {"replicas": 1, "restartPolicy": "ExitCode"},
                         "worker": {"replicas": 2, "restartPolicy": worker_policy},
                         "master": {"replicas": 1, "restartPolicy": "ExitCode"}},
                     "runPolicy": {"backoffLimit": 3}}}


def _service_url(c: Cluster, port_name: str, path: str) -> str:
    svc = c.get("service", "kubelearn-metrics", RELEASE_NS)
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == port_name)
    return f"http://{svc['spec']['clusterIP']}:{port}{path}"


def test_operator_runs_from_the_chart_and_answers_through_its_service(cluster: Cluster
                                                                      ) -> None:
    deploy = cluster.get("deployment", "kubelearn", RELEASE_NS)
    available = {c["type"]: c["status"] for c in deploy["status"]["conditions"]}
    assert available["Available"] == "True"
    # Through the Service's ClusterIP (kube-proxy's rules), from this machine; kube-proxy
    # programs the ready pod's endpoint a moment after the Deployment reports Available.
    def get(port_name: str, path: str) -> bytes:
        with urllib.request.urlopen(_service_url(cluster, port_name, path), timeout=10) as r:
            assert r.status == 200
            return r.read()

    wait_for(lambda: get("health", "/healthz") is not None, timeout=60,
             description="the operator's /healthz through its Service")
    assert b"kubelearn_" in get("metrics", "/metrics")


def test_example_succeeds_and_users_see_its_progress_and_logs(cluster: Cluster) -> None:
    cluster.kind_e2e("run-example", "wait-succeeded")
    shown = cluster.kind_e2e("show-metrics").stdout
    header, row = shown.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "REPLICAS", "STEP", "LOSS"]
    assert row.split()[1] == "Succeeded" and int(row.split()[3]) >= 2000
    assert float(row.split()[4]) < 0.01
    logs = cluster.kubectl("logs", "linear-master-0").stdout
    assert "Loss for final step" in logs and "global_step" in logs
    # The master decided success: it exited 0, and its final metrics (its run record among
    # them) reached the status through its termination message.
    status = cluster.get("experiment", "linear")["status"]
    assert status["replicaStatuses"]["master"]["succeeded"] == 1, status
    assert status["step"] >= 2000 and status["loss"] < 0.01, status
    assert status["metrics"]["run"].startswith(status["storage"]["modelDir"]), status
    pod = cluster.get("pod", "linear-master-0")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # The replicas reached each other through the Service names in TF_CONFIG.
    master = pod["spec"]["containers"][0]
    tf_config = json.loads(next(e["value"] for e in master["env"] if e["name"] == "TF_CONFIG"))
    assert tf_config["cluster"]["ps"] == [f"linear-ps-0.{NS}.svc:2222"]
    # From the image imported into the node, which is never pulled.
    assert master["imagePullPolicy"] == "Never"


def test_a_sweep_runs_its_trials_as_pods_and_keeps_the_best(cluster: Cluster) -> None:
    """The operator image's search, the chart's Sweep CRD and RBAC: two trials at once, each
    an Experiment whose master runs in a container."""
    cluster.apply({
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Sweep", "metadata": {"name": "lr"},
        "spec": {"experiment": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                                "hparams": {"train_steps": 300},
                                "replicas": {"master": 1}},
                 "parameters": [{"name": "learning_rate", "type": "discrete",
                                 "values": [0.05, 100.0, 0.01]}],
                 "objective": {"metric": "loss", "direction": "minimize"},
                 "algorithm": "grid", "parallelism": 2, "maxTrials": 3, "seed": 1}})

    def ended() -> dict[str, Any] | None:
        status = cluster.get("sweep", "lr").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_for(ended, timeout=600, description="sweep lr to end")
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["succeeded"] == 2 and status["counts"]["failed"] == 1, status
    history = {h["hparams"]["learning_rate"]: h for h in status["history"]}
    assert history[100.0]["state"] == "failed"
    best = status["best"]
    assert best["hparams"]["learning_rate"] in (0.05, 0.01)
    finals = {h["name"]: cluster.get("experiment", h["name"])["status"]["metrics"]["loss"]
              for h in status["history"] if h["state"] == "succeeded"}
    assert best["name"] == min(finals, key=finals.get)
    header, row = cluster.kubectl("get", "sweep", "lr").stdout.splitlines()[:2]
    assert header.split()[:5] == ["NAME", "PHASE", "TRIALS", "BEST", "OBJECTIVE"]
    assert row.split()[:4] == ["lr", "Succeeded", "3/3", best["name"]]
    assert "Loss for final step" in cluster.kubectl("logs", f"{best['name']}-master-0").stdout
    cluster.kubectl("delete", "sweep", "lr", "--wait=false")


def test_pods_run_as_65532_read_only_without_capabilities(cluster: Cluster) -> None:
    """Both images, checked from inside: the operator's pod and an experiment's ps."""
    cluster.apply(linear("whoami", 40000))
    cluster.running_pod("whoami-ps-0")
    probe = ("import os; print(os.getuid(), os.getgid()); "
             "print([l.split()[1] for l in open('/proc/self/status') "
             "if l.startswith('CapEff')][0]); open('/probe', 'w')")
    for namespace, target in ((NS, "pod/whoami-ps-0"), (RELEASE_NS, "deployment/kubelearn")):
        proc = cluster.node.kubectl("-n", namespace, "exec", target, "--", "python", "-c",
                                    probe, check=False)
        lines = proc.stdout.split("\n")
        assert lines[0] == "65532 65532", (target, proc.stdout, proc.stderr)
        assert int(lines[1], 16) == 0, target  # no capabilities
        assert "Read-only file system" in proc.stderr, target
    cluster.kubectl("delete", "experiment", "whoami", "--wait=false")


def test_restricted_namespaces_admit_our_pods_and_refuse_others(cluster: Cluster) -> None:
    for ns in (RELEASE_NS, NS):
        labels = cluster.get("namespace", ns, "")["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    refused = cluster.kubectl("run", "rooted", "--image", cluster.node.images["runner"],
                              "--restart=Never", "--", "true", check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr
    # The operator's pods were admitted (they ran the examples above); its events say so too.
    events = cluster.kubectl("get", "events", "-o", "json").stdout
    assert "violates PodSecurity" not in events


@pytest.mark.parametrize("policy, by", [("OnFailure", "kubelet"), ("ExitCode", "operator")])
def test_killed_worker_process_comes_back_per_restart_policy(cluster: Cluster, policy: str,
                                                             by: str) -> None:
    name = f"kill-{policy.lower()}"
    cluster.apply(linear(name, 40000, worker_policy=policy))
    pod = cluster.running_pod(f"{name}-worker-1")
    uid = pod["metadata"]["uid"]
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    time.sleep(3)  # training
    tasks = cluster.node.ctr("tasks", "ls").splitlines()[1:]
    pid = next(int(t.split()[1]) for t in tasks if t.split()[0] == container_id)
    os.kill(pid, 9)  # the container's init (tini): the container dies, not the pod
    if by == "kubelet":  # the same pod, its container restarted
        after = wait_for(lambda: (p := cluster.get("pod", f"{name}-worker-1"))["status"][
            "containerStatuses"][0]["restartCount"] >= 1 and p, timeout=120,
            description="worker-1's container restarted")
        assert after["metadata"]["uid"] == uid
    else:  # a new pod in its place (seen while it runs: at the end it may be cleaned up)
        wait_for(lambda: cluster.get("pod", f"{name}-worker-1")["metadata"]["uid"] != uid,
                 timeout=120, description="a new worker-1 pod")
    exp = cluster.wait_phase(name, "Succeeded", timeout=600)
    assert exp["status"]["replicaStatuses"]["worker"]["restarts"] >= 1, exp["status"]
    assert exp["status"]["metrics"]["global_step"] >= 40000
    cluster.kubectl("delete", "experiment", name, "--wait=false")


def test_operator_pod_deleted_mid_run_its_replacement_finishes(cluster: Cluster) -> None:
    cluster.apply(linear("survivor", 40000))
    cluster.running_pod("survivor-master-0")
    cluster.node.kubectl("-n", RELEASE_NS, "delete", "pod", "-l",
                         "app.kubernetes.io/instance=kubelearn", "--wait=false")
    exp = cluster.wait_phase("survivor", "Succeeded", timeout=600)
    assert exp["status"]["metrics"]["global_step"] >= 40000
    pods = json.loads(cluster.kubectl("get", "pods", "-l", "kubelearn.dev/experiment=survivor",
                                      "-o", "json").stdout)["items"]
    # Nothing was duplicated: one pod per replica at most.
    assert len({p["metadata"]["name"] for p in pods}) == len(pods) <= 4
    cluster.kubectl("delete", "experiment", "survivor", "--wait=false")


def test_kubectl_scale_adds_and_removes_workers_while_it_trains(cluster: Cluster) -> None:
    """The full form (replicaSpecs) scaled through the scale subresource: new workers' pods
    reach the ps by its Service name and push; removed ones stop; nothing else restarts."""
    cluster.apply(linear("elastic", 100000))
    cluster.running_pod("elastic-master-0")

    def status() -> dict[str, Any]:
        return cluster.get("experiment", "elastic").get("status") or {}

    wait_for(lambda: status().get("step", 0) > 1000, timeout=300,
             description="training under way")
    # While it trains, the operator polls the chief's progress into the status.
    running = status()
    assert running["phase"] == "Running" and running["loss"] is not None, running
    assert running["metrics"]["global_step"] == running["step"], running
    assert "steps_per_sec" in running["metrics"], running
    assert running["metrics"]["run"].startswith(running["storage"]["modelDir"]), running
    assert "Running" in cluster.kubectl("get", "exp", "elastic").stdout

    def uids() -> dict[str, str]:
        pods = json.loads(cluster.kubectl("get", "pods", "-l",
                                          "kubelearn.dev/experiment=elastic", "-o",
                                          "json").stdout)["items"]
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}

    before = uids()
    cluster.kubectl("scale", "exp/elastic", "--replicas=4")
    # Worker i starts training min(60, 5 i) s after it starts, as in TensorFlow.
    wait_for(lambda: "First push from worker:3" in cluster.kubectl(
        "logs", "elastic-ps-0").stdout, timeout=300, description="worker 3's first push")
    assert "First push from worker:2" in cluster.kubectl("logs", "elastic-ps-0").stdout
    step = status()["step"]
    wait_for(lambda: status().get("step", 0) > step + 500, timeout=120,
             description="training going on with 4 workers, the status following it")
    cluster.kubectl("scale", "exp/elastic", "--replicas=1")
    kept = ("elastic-ps-0", "elastic-master-0", "elastic-worker-0")
    during = wait_for(lambda: sorted(u := uids()) == sorted(kept) and u, timeout=120,
                      description="the scaled-down workers gone")
    # The same pods as before the scales: none was restarted or replaced.
    assert during == {n: before[n] for n in kept}
    exp = cluster.wait_phase("elastic", "Succeeded", timeout=900)
    assert exp["status"]["metrics"]["global_step"] >= 100000
    assert exp["status"]["loss"] < 0.01, exp["status"]
    assert all(s["restarts"] == 0 for s in exp["status"]["replicaStatuses"].values())
    assert exp["status"]["workers"]["desired"] == 1
    events = json.loads(cluster.kubectl("get", "events", "--field-selector",
                                        "involvedObject.name=elastic", "-o", "json").stdout)
    assert {"ScaledUp", "ScaledDown"} <= {e["reason"] for e in events["items"]}
    cluster.kubectl("delete", "experiment", "elastic", "--wait=false")


PROBE = r"""
import errno, json, socket, ssl, urllib.request
out = {}
routes = [l.split() for l in open("/proc/net/route").read().splitlines()[1:]]
out["default_route"] = any(r[1] == "00000000" for r in routes)
s = socket.socket()
s.settimeout(3)
try:
    s.connect(("198.51.100.1", 80))
    out["outside"] = "connected"
except OSError as e:
    out["outside"] = errno.errorcode.get(e.errno, str(e))
out["kubernetes"] = socket.gethostbyname("kubernetes.default.svc.cluster.local")
try:
    out["example.com"] = socket.gethostbyname("example.com")
except OSError as e:
    out["example.com"] = type(e).__name__
sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
req = urllib.request.Request("https://kubernetes.default.svc/version",
                             headers={"Authorization": "Bearer " + open(sa + "token").read()})
ctx = ssl.create_default_context(cafile=sa + "ca.crt")
out["version"] = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["gitVersion"]
print(json.dumps(out))
"""


def test_pods_reach_the_cluster_and_nothing_outside_it(cluster: Cluster) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
           "spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "probe", "image": cluster.node.images["runner"],
                        "command": ["python", "-c", PROBE],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.apply(pod)
    wait_for(lambda: cluster.get("pod", "probe")["status"].get("phase") in ("Succeeded",
                                                                            "Failed"),
             timeout=120, description="probe pod done")
    logs = cluster.kubectl("logs", "probe").stdout
    result = json.loads(logs.strip().splitlines()[-1])
    assert result["default_route"] is False
    assert result["outside"] == "ENETUNREACH"  # no route: not a packet leaves
    assert result["kubernetes"] == "10.0.0.1"
    assert result["example.com"] == "gaierror"  # DNS answers for the cluster only
    assert result["version"] == "v1.34.4"  # in-cluster credentials through kube-proxy
    # On the machine: the pod subnet may go nowhere but its bridge.
    forward = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True,
                             text=True).stdout
    assert (f"-A FORWARD -s {nodes.POD_CIDR} ! -o {nodes.BRIDGE} -m comment --comment "
            f"{nodes.RULE_COMMENT} -j DROP") in forward
    nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
    for iface in nodes._external_interfaces():
        assert f"-o {iface}" not in nat
    cluster.kubectl("delete", "pod", "probe", "--wait=false")


def _connect_probe(name: str, image: str, labels: dict[str, str], address: str) -> dict:
    """A restricted pod that tries one TCP connection and prints how it went."""
    script = ("import socket, sys\n"
              "s = socket.socket(); s.settimeout(5)\n"
              "try:\n    s.connect((sys.argv[1], int(sys.argv[2]))); print('connected')\n"
              "except OSError as e:\n    print(type(e).__name__)\n")
    host, port = address.rsplit(":", 1)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "probe", "image": image,
                         "command": ["python", "-c", script, host, port],
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "capabilities": {"drop": ["ALL"]}}}]}}


def _probe(cluster: Cluster, name: str, labels: dict[str, str], address: str) -> str:
    cluster.apply(_connect_probe(name, cluster.node.images["runner"], labels, address))
    wait_for(lambda: cluster.get("pod", name)["status"].get("phase") in ("Succeeded", "Failed"),
             timeout=120, description=f"pod {name} done")
    result = cluster.kubectl("logs", name).stdout.strip()
    cluster.kubectl("delete", "pod", name, "--wait=false")
    return result


def test_network_policy_fences_the_ps_off_from_other_experiments(cluster: Cluster) -> None:
    if why := nodes.network_policy_unsupported():
        pytest.skip(f"no NetworkPolicy enforcement on this node: {why}")
    cluster.apply(linear("fenced", 40000))
    ps = cluster.running_pod("fenced-ps-0")
    policy = cluster.get("networkpolicy", "fenced-kubelearn")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"kubelearn.dev/experiment": "fenced"}
    other = {"kubelearn.dev/experiment": "other"}
    # The path itself is open: the same pod reaches a pod that no policy selects ...
    operator_ip = json.loads(cluster.node.kubectl(
        "-n", RELEASE_NS, "get", "pods", "-l", "app.kubernetes.io/instance=kubelearn",
        "-o", "json").stdout)["items"][0]["status"]["podIP"]
    assert _probe(cluster, "reach-operator", other, f"{operator_ip}:9090") == "connected"
    # ... but not this experiment's ps, which its own workers use all along.
    assert _probe(cluster, "intruder", other, f"{ps['status']['podIP']}:2222") == "TimeoutError"
    exp = cluster.wait_phase("fenced", "Succeeded", timeout=600)
    assert exp["status"]["metrics"]["global_step"] >= 40000
    cluster.kubectl("delete", "experiment", "fenced", "--wait=false")


def test_digits_with_two_ps_and_an_evaluator_succeeds(cluster: Cluster) -> None:
    cluster.kind_e2e("run-example", "wait-succeeded", EXAMPLE="examples/digits.yaml")
    exp = cluster.get("experiment", "digits")
    assert exp["status"]["metrics"]["accuracy"] >= 0.9
    cluster.kubectl("delete", "experiment", "digits", "--wait=false")


READ_MODEL = r"""
import json, os, sys
import numpy as np
from kubelearn import checkpoints
from kubelearn.estimators import load_exported
model_dir, export = sys.argv[1], sys.argv[2]
out = {"uid": os.getuid()}
latest = checkpoints.latest_checkpoint(model_dir)
params, step = checkpoints.load(latest)
out["checkpoint_step"] = step
out["checkpoint_params"] = sorted(params)
if export:
    model = load_exported(export)
    features = np.zeros((2, json.load(open(os.path.join(export, "signature.json")))["input_dim"]),
                        np.float32)
    out["predictions"] = {k: np.asarray(v).shape[0] for k, v in model.predict(features).items()}
evaluations = os.path.join(model_dir, "eval_continuous", "results.jsonl")
if os.path.exists(evaluations):
    out["evaluator"] = json.loads(open(evaluations).read().splitlines()[-1])
print(json.dumps(out))
"""


def _read_claim(cluster: Cluster, claim: str, model_dir: str, export: str = "") -> dict:
    """Mount a claim in a fresh restricted pod (read-only) and load what the experiment left
    there: the latest checkpoint, the export, the evaluator's last evaluation."""
    name = f"read-{claim}"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"restartPolicy": "Never",
                    "securityContext": {"runAsNonRoot": True,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "volumes": [{"name": "model", "persistentVolumeClaim": {
                        "claimName": claim, "readOnly": True}}],
                    "containers": [{
                        "name": "read", "image": cluster.node.images["runner"],
                        "imagePullPolicy": "Never",
                        "command": ["python", "-c", READ_MODEL, model_dir, export],
                        "volumeMounts": [{"name": "model", "mountPath": model_dir,
                                          "readOnly": True}],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    cluster.apply(pod)
    wait_for(lambda: cluster.get("pod", name)["status"].get("phase") in ("Succeeded", "Failed"),
             timeout=180, description=f"pod {name} done")
    logs = cluster.kubectl("logs", name).stdout
    cluster.kubectl("delete", "pod", name, "--wait=false")
    return json.loads(logs.strip().splitlines()[-1])


def test_digits_evaluator_evaluates_the_masters_checkpoints(cluster: Cluster) -> None:
    manifest = yaml.safe_load((REPO / "examples" / "digits.yaml").read_text())
    manifest["metadata"]["name"] = "digits-eval"
    cluster.apply(manifest)
    cluster.running_pod("digits-eval-evaluator-0")

    def evaluated() -> bool:
        logs = cluster.kubectl("logs", "digits-eval-evaluator-0", check=False).stdout
        return "Saving evaluation summary" in logs

    wait_for(evaluated, timeout=180, description="an evaluation by the evaluator")
    exp = cluster.wait_phase("digits-eval", "Succeeded", timeout=600)
    # The chief reported the evaluator's evaluation (read from the shared volume).
    evaluator = exp["status"]["metrics"]["evaluator"]
    assert evaluator["global_step"] > 0 and 0 < evaluator["accuracy"] <= 1, evaluator
    storage = exp["status"]["storage"]
    seen = _read_claim(cluster, storage["claimName"], storage["modelDir"])
    # The evaluator's last evaluation is of the final checkpoint.
    assert seen["evaluator"]["global_step"] >= 1500, seen
    assert seen["evaluator"]["accuracy"] >= 0.9, seen
    cluster.kubectl("delete", "experiment", "digits-eval", "--wait=false")


def test_training_resumes_from_the_volume_after_losing_master_and_ps(cluster: Cluster) -> None:
    every = 2000
    manifest = linear("resume", 60000)
    manifest["spec"]["hparams"]["save_checkpoints_steps"] = every
    cluster.apply(manifest)
    ps = cluster.running_pod("resume-ps-0")
    wait_for(lambda: (cluster.get("experiment", "resume")["status"].get("step") or 0)
             >= 3 * every, timeout=300, description="a few checkpoints")
    container_id = ps["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    cluster.kubectl("delete", "pod", "resume-master-0", "--wait=false")
    tasks = cluster.node.ctr("tasks", "ls").splitlines()[1:]
    os.kill(next(int(t.split()[1]) for t in tasks if t.split()[0] == container_id), 9)
    at_kill = cluster.get("experiment", "resume")["status"]["step"]
    cluster.running_pod("resume-ps-0")
    exp = cluster.wait_phase("resume", "Succeeded", timeout=900)
    assert exp["status"]["metrics"]["global_step"] >= 60000
    assert exp["status"]["replicaStatuses"]["ps"]["restarts"] >= 1
    logs = cluster.kubectl("logs", "resume-ps-0", check=False).stdout
    restored = [int(x) for x in re.findall(r"Initialized \d+ variables at global step (\d+)",
                                           logs)]
    # The new ps was given the master's checkpoint from the volume, not fresh variables,
    # and lost no more than the steps since it (plus what the status lagged behind).
    clients = "".join(cluster.kubectl("logs", pod, check=False).stdout
                      for pod in ("resume-master-0", "resume-worker-0", "resume-worker-1"))
    model_dir = exp["status"]["storage"]["modelDir"]
    assert f"Restoring ps [0] from {model_dir}/model.ckpt-" in clients, clients[-3000:]
    assert restored and restored[0] >= every, logs[-3000:]
    assert at_kill - restored[0] <= 2 * every, (at_kill, restored, logs[-2000:])
    cluster.kubectl("delete", "experiment", "resume", "--wait=false")


def test_after_success_the_model_loads_from_a_fresh_pod_and_the_claim_stays(
        cluster: Cluster) -> None:
    manifest = linear("keep", 3000)
    manifest["spec"]["runPolicy"]["cleanPodPolicy"] = "All"
    manifest["spec"]["tensorboard"] = True
    cluster.apply(manifest)
    exp = cluster.wait_phase("keep", "Succeeded", timeout=600)
    wait_for(lambda: not json.loads(cluster.kubectl(
        "get", "pods", "-l", f"kubelearn.dev/experiment=keep,{names.LABEL_ROLE}", "-o",
        "json").stdout)["items"],
        timeout=120, description="every replica of keep deleted (cleanPodPolicy All)")
    storage = exp["status"]["storage"]
    assert storage["claimName"] == "keep-model"
    assert storage["export"].startswith(storage["modelDir"] + "/export/model/")
    seen = _read_claim(cluster, "keep-model", storage["modelDir"], storage["export"])
    assert seen["checkpoint_step"] >= 3000 and seen["checkpoint_params"]
    assert seen["predictions"] and all(n == 2 for n in seen["predictions"].values())
    assert seen["uid"] == 65532
    claim = cluster.get("pvc", "keep-model")
    assert claim["status"]["phase"] == "Bound"

    # TensorBoard reads the same claim, after the replicas are gone.
    board = exp["status"]["tensorboard"]
    assert board["url"] == f"http://keep-tensorboard.{NS}.svc:6006"
    cluster.kubectl("rollout", "status", "deployment/keep-tensorboard", "--timeout=180s",
                    timeout=200)
    tags = _tensorboard_scalars(cluster, board["service"])
    assert set(tags) >= {".", "eval"}, tags  # training and evaluation curves, side by side

    cluster.kubectl("delete", "experiment", "keep", "--wait=true", timeout=120)
    wait_for(lambda: cluster.kubectl("get", "deployment", "keep-tensorboard",
                                     check=False).returncode != 0,
             timeout=120, description="TensorBoard removed with the Experiment")
    # The trained model outlives its Experiment.
    assert cluster.get("pvc", "keep-model")["metadata"]["uid"] == claim["metadata"]["uid"]


def _tensorboard_scalars(cluster: Cluster, service: str) -> dict:
    """The scalar tags TensorBoard serves through its Service, once it has loaded a loss of
    training (run ".") and of evaluation (run "eval"): it loads runs one after another."""
    address = cluster.get("service", service)["spec"]["clusterIP"]
    seen: list[dict] = [{}]

    def scalars() -> dict | None:
        url = f"http://{address}:6006/data/plugin/scalars/tags"
        with urllib.request.urlopen(url, timeout=10) as response:
            seen[0] = tags = json.load(response)
        return tags if all("loss" in tags.get(run, {}) for run in (".", "eval")) else None

    try:
        return wait_for(scalars, timeout=180, description="TensorBoard's scalars")
    except Exception as error:
        raise AssertionError(f"TensorBoard serves only {seen[0]}") from error


@pytest.fixture(scope="module")
def node_s3(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """An S3-compatible server on the node's bridge address, where pods reach it, and the
    Secret with its credentials in the experiments' namespace."""
    from tests.cluster.build import ensure_s3_server
    from tests.s3server import BUCKET, start_server

    access, secret = "kubelearn-node", os.urandom(16).hex()
    proc, port = start_server(ensure_s3_server(), tmp_path_factory.mktemp("s3") / "buckets",
                              access, secret, address=nodes.NODE_IP)
    env = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
           "AWS_ENDPOINT_URL": f"http://{nodes.NODE_IP}:{port}",
           "AWS_DEFAULT_REGION": "us-east-1"}
    cluster.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-credentials"},
                   "stringData": env})
    try:
        yield {"bucket": BUCKET, "env": env}
    finally:
        proc.kill()
        proc.wait()


def test_a_url_model_dir_holds_the_model_on_object_storage(cluster: Cluster, node_s3: dict,
                                                            monkeypatch) -> None:
    url = f"s3://{node_s3['bucket']}/objstore"
    manifest = linear("objstore", 3000)
    manifest["spec"]["modelDir"] = url
    manifest["spec"]["storage"] = {"secretName": "s3-credentials"}
    manifest["spec"]["tensorboard"] = True
    cluster.apply(manifest)
    exp = cluster.wait_phase("objstore", "Succeeded", timeout=600)
    storage = exp["status"]["storage"]
    assert storage["modelDir"] == url and storage["claimName"] == ""
    assert storage["export"].startswith(url + "/export/model/"), storage
    ready = {c["type"]: c for c in exp["status"]["conditions"]}["StorageReady"]
    assert ready["reason"] == "ObjectStore", ready
    # No claim, no volume: the pods wrote only to the store.
    assert cluster.kubectl("get", "pvc", "objstore-model", check=False).returncode != 0
    # From this machine, as a user would: the checkpoint and the export load from the store.
    for name, value in node_s3["env"].items():
        monkeypatch.setenv(name, value)
    import s3fs

    from kubelearn import checkpoints
    from kubelearn.estimators import load_exported

    s3fs.S3FileSystem.clear_instance_cache()
    latest = checkpoints.latest_checkpoint(url)
    params, step = checkpoints.load(latest)
    assert step >= 3000 and params
    assert load_exported(storage["export"]) is not None
    # TensorBoard reads the event files from the store, with the same Secret.
    cluster.kubectl("rollout", "status", "deployment/objstore-tensorboard", "--timeout=180s",
                    timeout=200)
    tags = _tensorboard_scalars(cluster, exp["status"]["tensorboard"]["service"])
    assert set(tags) >= {".", "eval"}, tags
    cluster.kubectl("delete", "experiment", "objstore", "--wait=false")
