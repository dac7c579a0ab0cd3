"""A whole kubelearn on this machine for trying it out: python -m tests.e2e up|down|status|logs.

    eval "$(python -m tests.e2e up)"        # control plane + CRD + operator + node agent
    kubectl apply -f examples/experiment.yaml
    kubectl get exp -w
    python -m tests.e2e logs linear-master-0
    python -m tests.e2e down                # operator and node agent (and their pods)
    python -m tests.cluster down            # the control plane

The control plane is the one of ``python -m tests.cluster up`` (started when not running).
The operator runs from the package for all namespaces; the node agent runs the pods of the
namespaces given with ``--namespace`` (default: ``default``) as local processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from kubernetes import client, config

from tests.cluster import __main__ as cluster_cli
from tests.cluster.build import ensure_built
from tests.cluster.controlplane import start_control_plane
from tests.cluster.fixtures import ensure_default_storage_class
from tests.cluster.helpers import apply_yaml, wait_for
from tests.e2e.stack import NodeAgent, pod_log_paths
from tests.operator_stack import CRD, Operator

STATE = "e2e.json"


def state_dir() -> Path:
    return cluster_cli.state_dir().parent / "dev-e2e"


def _load_state() -> dict:
    path = state_dir() / STATE
    return json.loads(path.read_text()) if path.is_file() else {}


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _stop_group(pid: int | None, timeout: float = 15) -> None:
    if not _alive(pid):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def up(namespaces: list[str]) -> int:
    cp = cluster_cli.load()
    if cp is None or not cp.is_ready():
        if cp is not None:
            cp.stop(remove_workdir=False)
        shutil.rmtree(cluster_cli.state_dir(), ignore_errors=True)
        binaries = ensure_built()
        cp = start_control_plane(binaries.kubecp, binaries.helm, cluster_cli.state_dir(),
                                 detach=True)
    state = _load_state()
    if _alive(state.get("operator")) and _alive(state.get("agent")):
        print("operator and node agent already running", file=sys.stderr)
        print("\n".join(cluster_cli.env_lines(cp)))
        return 0
    _stop_group(state.get("operator"))
    _stop_group(state.get("agent"))
    api = config.new_client_from_config(config_file=str(cp.kubeconfig))
    apply_yaml(api, CRD)
    ensure_default_storage_class(api)  # as kind has: experiments' claims are made from it
    ext = client.ApiextensionsV1Api(api)
    wait_for(lambda: any(c.type == "Established" and c.status == "True" for c in
                         ext.read_custom_resource_definition(
                             "experiments.kubelearn.dev").status.conditions or []),
             30, "the Experiment CRD to be established")
    core = client.CoreV1Api(api)
    for ns in namespaces:
        with contextlib.suppress(client.ApiException):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    work = state_dir()
    work.mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(cp.env, namespaces, work / "node", node_name="kubelearn-node",
                      ip_octet=0).start()
    try:
        operator = Operator(cp.env, [], work / "operator.log").start()
    except BaseException:
        agent.stop()
        raise
    (work / STATE).write_text(json.dumps({
        "operator": operator.pid, "agent": agent.pid, "namespaces": namespaces,
        "workdir": str(work), "metrics": f"http://127.0.0.1:{operator.metrics_port}/metrics"}))
    print(f"operator (pid {operator.pid}, log {operator.log}, metrics on port "
          f"{operator.metrics_port}) and node agent (pid {agent.pid}, log {agent.log}) for "
          f"namespaces {', '.join(namespaces)} are running; stop them with "
          f"python -m tests.e2e down", file=sys.stderr)
    print("\n".join(cluster_cli.env_lines(cp)))
    return 0


def down() -> int:
    state = _load_state()
    if not state:
        print("nothing recorded", file=sys.stderr)
        return 0
    _stop_group(state.get("operator"))
    _stop_group(state.get("agent"))
    (state_dir() / STATE).unlink(missing_ok=True)
    print("stopped the operator and the node agent (the control plane keeps running: "
          "python -m tests.cluster down)", file=sys.stderr)
    return 0


def status() -> int:
    state = _load_state()
    ok = bool(state) and _alive(state.get("operator")) and _alive(state.get("agent"))
    for part in ("operator", "agent"):
        pid = state.get(part)
        print(f"{part}: {'running' if _alive(pid) else 'stopped'}"
              + (f" (pid {pid})" if pid else ""))
    return 0 if ok else 1


def logs(pod: str, namespace: str) -> int:
    workdir = Path(_load_state().get("workdir") or state_dir()) / "node"
    paths = [p for p in pod_log_paths(workdir, namespace)
             if p.parent.name == f"{namespace}_{pod}"]
    if not paths:
        print(f"no log of pod {namespace}/{pod} under {workdir}", file=sys.stderr)
        return 1
    for path in paths:
        sys.stdout.write(path.read_text(errors="replace"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start control plane, CRD, operator and node agent")
    p_up.add_argument("--namespace", action="append",
                      help="namespace whose pods the node agent runs (repeatable)")
    sub.add_parser("down", help="stop the operator and the node agent")
    sub.add_parser("status")
    p_logs = sub.add_parser("logs", help="a pod's log (all its restarts)")
    p_logs.add_argument("pod")
    p_logs.add_argument("-n", "--namespace", default="default")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args.namespace or ["default"])
    if args.command == "down":
        return down()
    if args.command == "status":
        return status()
    return logs(args.pod, args.namespace)


if __name__ == "__main__":
    sys.exit(main())
