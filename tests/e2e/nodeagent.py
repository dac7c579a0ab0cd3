"""A node agent for the test control plane: the scheduler's and the kubelet's part, in Python.

The test control plane has neither, so pods would stay Pending. This agent:

* registers a Ready Node and binds the unscheduled pods of its namespaces to it
  (``pods/binding``); pods of a gang (``scheduling.x-k8s.io/pod-group`` label) are bound
  all together once their PodGroup's ``minMember`` pods exist, or not at all;
* runs each pod's main container as a local process from this checkout's environment, with
  the container's command, args and env (``value``, ``secretKeyRef``, ``configMapKeyRef``,
  ``fieldRef``); ``kubelearn`` and ``python`` resolve to this interpreter;
* gives each pod its own address in 127.0.0.0/8 and runs it in a private mount namespace
  (``unshare --mount``) whose ``/etc/hosts`` maps the namespace's Service names to pod
  addresses, so TF_CONFIG's ``<exp>-worker-0.<ns>.svc:2222`` work unchanged; the pod's
  ``terminationMessagePath`` is a per-pod file bound there too;
* writes pod status as a kubelet does (phase, conditions, container state, exit code,
  restartCount, lastState, termination message, podIP), applies the restartPolicy with a
  back-off, and on deletion stops the process (SIGTERM, the grace period, then SIGKILL)
  before it removes the pod.

Logs go to ``<workdir>/pods/<ns>_<pod>/<container>.log`` (``python -m tests.e2e logs``).
Everything a pod runs dies with the agent (process groups, parent-death signal).

Run: ``python -m tests.e2e.nodeagent --workdir DIR --namespace NS`` (KUBECONFIG from the
environment).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import client, config

log = logging.getLogger("nodeagent")

ROOT = Path(__file__).resolve().parents[2]
PODGROUP_LABEL = "scheduling.x-k8s.io/pod-group"
PODGROUP = ("scheduling.x-k8s.io", "v1alpha1", "podgroups")
TERMINATION_LIMIT = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
BACKOFF_START_SECS = 1.0
BACKOFF_MAX_SECS = 10.0
#: Environment of the agent that a pod must not inherit (credentials, test settings).
PRIVATE_ENV_PREFIXES = ("KUBECONFIG", "KUBELEARN_", "PYTEST", "EM_")


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_pdeathsig() -> None:
    """Die with the agent's thread that started us (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def resolve_command(argv: list[str]) -> list[str]:
    """A container command on this machine: the checkout's interpreter for ``kubelearn``
    and ``python``; anything else from PATH."""
    if not argv:
        raise ValueError("container has neither command nor args")
    head = argv[0]
    if head == "kubelearn":
        return [sys.executable, "-m", "kubelearn", *argv[1:]]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def hosts_text(entries: Mapping[str, str]) -> str:
    """An /etc/hosts: localhost plus one line per name."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    by_ip: dict[str, list[str]] = {}
    for name, ip in sorted(entries.items()):
        by_ip.setdefault(ip, []).append(name)
    lines += [f"{ip}\t{' '.join(names)}" for ip, names in sorted(by_ip.items())]
    return "\n".join(lines) + "\n"


def service_names(service: str, namespace: str, domain: str = "cluster.local") -> list[str]:
    base = f"{service}.{namespace}"
    return [service, base, f"{base}.svc", f"{base}.svc.{domain}"]


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def restart_wanted(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def tail_of_log(path: Path) -> str:
    """What a kubelet's FallbackToLogsOnError keeps: the last lines, at most 2 KiB."""
    try:
        data = path.read_bytes()[-64 * 1024:]
    except OSError:
        return ""
    lines = data.decode(errors="replace").splitlines()[-FALLBACK_LOG_LINES:]
    return "\n".join(lines)[-FALLBACK_LOG_BYTES:]


class IPPool:
    """Stable addresses in 127.<octet>.0.0/16 keyed by (namespace, name), from .0.2 up."""

    def __init__(self, octet: int) -> None:
        self.octet = octet
        self.by_key: dict[tuple[str, str], str] = {}

    def get(self, namespace: str, name: str) -> str:
        key = (namespace, name)
        if key not in self.by_key:
            n = len(self.by_key) + 2
            if n > 65000:
                raise RuntimeError("pod address pool exhausted")
            self.by_key[key] = f"127.{self.octet}.{n // 256}.{n % 256}"
        return self.by_key[key]


@dataclass
class Running:
    """One pod this agent runs: its process, restarts and status so far."""

    namespace: str
    name: str
    uid: str
    ip: str
    directory: Path
    container: str
    restart_policy: str
    grace_default: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    start_time: str = field(default_factory=now_text)
    restart_count: int = 0
    last_state: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {
        "waiting": {"reason": "ContainerCreating"}})
    phase: str = "Pending"
    next_start: float = 0.0
    backoff: float = BACKOFF_START_SECS
    terminating_since: float | None = None
    kill_at: float | None = None
    written: str = ""
    message: str = ""

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.container}.log"

    @property
    def termination_path(self) -> Path:
        return self.directory / "termination-log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None



_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand_refs(value: str, defined: dict[str, str]) -> str:
    """A kubelet's expansion of ``$(VAR)`` in an env value: variables defined earlier in the
    container expand, ``$$`` is a literal ``$``, unknown references stay as written."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return _REF.sub(replace, value)


class NodeAgent:
    def __init__(self, api: client.ApiClient, namespaces: Iterable[str], workdir: Path, *,
                 node_name: str, ip_octet: int = 0, tick: float = 0.2,
                 log_to: Callable[[str], None] | None = None) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespaces = list(namespaces)
        self.workdir = workdir
        self.node = node_name
        self.pool = IPPool(ip_octet)
        self.tick = tick
        self.pods: dict[tuple[str, str], Running] = {}
        self.cache: dict[str, dict[str, dict[str, Any]]] = {ns: {} for ns in self.namespaces}
        self.services: dict[str, list[dict[str, Any]]] = {ns: [] for ns in self.namespaces}
        self.hosts_files: dict[str, Path] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self._last_services = 0.0
        self._last_heartbeat = 0.0
        self._last_list = 0.0

    # -- the API ------------------------------------------------------------------------
    def _raw(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        resp = call(*args, _preload_content=False, **kwargs)
        return json.loads(resp.data)

    def register_node(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubelearn.dev/node-agent": "true"}},
                "spec": {}}
        try:
            self.core.create_node(body)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        self.heartbeat()

    def heartbeat(self) -> None:
        stamp = now_text()
        status = {"status": {
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": self.node}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "node agent is posting ready status",
                            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}],
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "kubeletVersion": "nodeagent", "kubeProxyVersion": "",
                         "containerRuntimeVersion": "process://", "bootID": "",
                         "kernelVersion": os.uname().release, "machineID": "",
                         "osImage": "local processes", "systemUUID": ""}}}
        self.core.patch_node_status(self.node, status)
        self._last_heartbeat = time.monotonic()

    def unregister_node(self) -> None:
        with contextlib.suppress(Exception):
            self.core.delete_node(self.node)

    # -- watching pods ------------------------------------------------------------------
    def _watch(self, namespace: str) -> None:
        """List, then watch from that version; on any error list again. Feeds self.cache."""
        while not self.stopping.is_set():
            try:
                listed = self._raw(self.core.list_namespaced_pod, namespace)
                with self.lock:
                    self.cache[namespace] = {p["metadata"]["name"]: p
                                             for p in listed.get("items") or []}
                self.wake.set()
                version = listed["metadata"]["resourceVersion"]
                resp = self.core.list_namespaced_pod(
                    namespace, watch=True, resource_version=version, timeout_seconds=60,
                    allow_watch_bookmarks=False, _preload_content=False,
                    _request_timeout=(10, 90))
                for line in resp:
                    if self.stopping.is_set():
                        return
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        break
                    name = (obj.get("metadata") or {}).get("name")
                    with self.lock:
                        if event.get("type") == "DELETED":
                            self.cache[namespace].pop(name, None)
                        else:
                            self.cache[namespace][name] = obj
                    self.wake.set()
            except Exception as exc:  # the next list starts over
                if not self.stopping.is_set():
                    log.debug("watch of %s ended: %s", namespace, exc)
                    time.sleep(0.5)

    def _snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self.lock:
            return {ns: list(pods.values()) for ns, pods in self.cache.items()}

    # -- scheduling -----------------------------------------------------------------------
    def _bind(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": meta["name"], "uid": meta["uid"]},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        try:
            self.core.create_namespaced_binding(meta["namespace"], body,
                                                _preload_content=False)
            log.info("bound %s/%s", meta["namespace"], meta["name"])
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _min_member(self, namespace: str, group: str) -> int | None:
        try:
            body = self.custom.get_namespaced_custom_object(*PODGROUP[:2], namespace,
                                                            PODGROUP[2], group)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return int((body.get("spec") or {}).get("minMember") or 1)

    def schedule(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                and (p.get("status") or {}).get("phase") in (None, "Pending", "Running")]
        unbound = [p for p in live if not (p.get("spec") or {}).get("nodeName")]
        groups: dict[str, list[dict[str, Any]]] = {}
        for pod in unbound:
            group = (pod["metadata"].get("labels") or {}).get(PODGROUP_LABEL)
            if group is None:
                self._bind(pod)
            else:
                groups.setdefault(group, []).append(pod)
        for group, members in groups.items():
            need = self._min_member(namespace, group)
            if need is None:
                continue  # a gang without its PodGroup waits, as under scheduler-plugins
            bound = sum(1 for p in live if p["spec"].get("nodeName") == self.node
                        and (p["metadata"].get("labels") or {}).get(PODGROUP_LABEL) == group)
            if bound + len(members) >= need:
                for pod in members:
                    self._bind(pod)

    # -- names --------------------------------------------------------------------------
    def refresh_services(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_services < 1.0:
            return
        self._last_services = time.monotonic()
        for ns in self.namespaces:
            with contextlib.suppress(Exception):
                self.services[ns] = self._raw(self.core.list_namespaced_service,
                                              ns).get("items") or []

    def write_hosts(self, namespace: str, pods: list[dict[str, Any]]) -> Path:
        """The namespace's hosts file, rewritten in place (it is bind-mounted by inode)."""
        entries: dict[str, str] = {}
        ours = [p for p in pods if (p.get("spec") or {}).get("nodeName") == self.node]
        for svc in self.services.get(namespace, []):
            name = svc["metadata"]["name"]
            selector = (svc.get("spec") or {}).get("selector")
            ips = [self.pool.get(namespace, p["metadata"]["name"]) for p in ours
                   if selector_matches(selector, p["metadata"].get("labels") or {})]
            # A pod named as its Service (one per replica) gets its address before it exists.
            ip = ips[0] if ips else self.pool.get(namespace, name)
            for host in service_names(name, namespace):
                entries[host] = ip
        for pod in ours:
            entries[pod["metadata"]["name"]] = self.pool.get(namespace, pod["metadata"]["name"])
        path = self.hosts_files.get(namespace)
        if path is None:
            path = self.workdir / "hosts" / namespace
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            self.hosts_files[namespace] = path
        text = hosts_text(entries)
        if path.read_text() != text:
            with path.open("r+") as handle:
                handle.write(text)
                handle.truncate()
        return path

    # -- containers ---------------------------------------------------------------------
    def _env_value(self, namespace: str, pod: dict[str, Any], ip: str,
                   source: Mapping[str, Any]) -> str | None:
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            try:
                secret = self.core.read_namespaced_secret(ref["name"], namespace)
            except client.ApiException as exc:
                if exc.status == 404 and ref.get("optional"):
                    return None
                raise LookupError(f"secret {ref['name']!r}: {exc.reason}") from None
            data = (secret.data or {}).get(ref["key"])
            if data is None and ref.get("optional"):
                return None
            if data is None:
                raise LookupError(f"key {ref['key']!r} not in secret {ref['name']!r}")
            return base64.b64decode(data).decode()
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            try:
                cm = self.core.read_namespaced_config_map(ref["name"], namespace)
            except client.ApiException as exc:
                raise LookupError(f"configmap {ref['name']!r}: {exc.reason}") from None
            value = (cm.data or {}).get(ref["key"])
            if value is None:
                raise LookupError(f"key {ref['key']!r} not in configmap {ref['name']!r}")
            return value
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            meta = pod["metadata"]
            fields = {"metadata.name": meta["name"], "metadata.namespace": namespace,
                      "metadata.uid": meta["uid"], "spec.nodeName": self.node,
                      "status.podIP": ip, "status.hostIP": "127.0.0.1",
                      "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "")}
            return fields.get(path, "")
        return None

    def container_env(self, namespace: str, pod: dict[str, Any], container: dict[str, Any],
                      ip: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(PRIVATE_ENV_PREFIXES)}
        pythonpath = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env.update({"PYTHONPATH": os.pathsep.join(pythonpath), "PYTHONUNBUFFERED": "1",
                    "HOSTNAME": pod["metadata"]["name"], "POD_IP": ip,
                    "KUBELEARN_BIND_HOST": ip})
        defined: dict[str, str] = {}  # what $(VAR) may refer to: this container's earlier vars
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = defined[entry["name"]] = expand_refs(
                    str(entry["value"]), defined)
            elif "valueFrom" in entry:
                value = self._env_value(namespace, pod, ip, entry["valueFrom"])
                if value is not None:
                    env[entry["name"]] = defined[entry["name"]] = value
            else:
                env[entry["name"]] = ""
        return env

    def start_process(self, run: Running, pod: dict[str, Any]) -> None:
        container = main_container(pod)
        env = self.container_env(run.namespace, pod, container, run.ip)
        argv = resolve_command([*(container.get("command") or []),
                                *(container.get("args") or [])])
        self.refresh_services(force=True)  # names made just before the pod resolve at once
        hosts = self.write_hosts(run.namespace, self._snapshot().get(run.namespace, []))
        term_target = container.get("terminationMessagePath") or "/dev/termination-log"
        run.termination_path.write_text("")
        script = ('set -e; mount --bind "$1" /etc/hosts; '
                  '[ -e "$3" ] || touch "$3"; mount --bind "$2" "$3"; shift 3; exec "$@"')
        full = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                "sh", str(hosts), str(run.termination_path), term_target,
                *self._cd(container), *argv]
        with run.log_path.open("ab") as out:
            out.write(f"--- {now_text()} start {shlex.join(argv)} (pod IP {run.ip})\n"
                      .encode())
            out.flush()
            run.proc = subprocess.Popen(full, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=run.directory,
                                        start_new_session=True, preexec_fn=_set_pdeathsig)
        (run.directory / "pid").write_text(str(run.proc.pid))
        run.started_at = now_text()
        run.state = {"running": {"startedAt": run.started_at}}
        run.phase = "Running"
        log.info("started %s/%s pid %d: %s", run.namespace, run.name, run.proc.pid,
                 shlex.join(argv))

    @staticmethod
    def _cd(container: Mapping[str, Any]) -> list[str]:
        workdir = container.get("workingDir")
        return ["env", "-C", workdir] if workdir else []

    def on_exit(self, run: Running, pod: dict[str, Any] | None) -> None:
        assert run.proc is not None
        code = run.proc.returncode
        exit_code = 128 - code if code < 0 else code
        message = ""
        with contextlib.suppress(OSError):
            message = run.termination_path.read_bytes()[:TERMINATION_LIMIT].decode(
                errors="replace")
        policy = main_container(pod).get("terminationMessagePolicy") if pod else None
        if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
            message = tail_of_log(run.log_path)
        terminated: dict[str, Any] = {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": run.started_at, "finishedAt": now_text()}
        if code < 0:
            terminated["signal"] = -code
        if message:
            terminated["message"] = message
        with run.log_path.open("ab") as out:
            out.write(f"--- {now_text()} exited with code {exit_code}\n".encode())
        run.proc = None
        log.info("%s/%s exited with code %d", run.namespace, run.name, exit_code)
        if run.terminating_since is None and restart_wanted(run.restart_policy, exit_code):
            run.last_state = {"terminated": terminated}
            run.restart_count += 1
            run.next_start = time.monotonic() + run.backoff
            run.backoff = min(run.backoff * 2, BACKOFF_MAX_SECS)
            run.state = {"waiting": {"reason": "CrashLoopBackOff", "message":
                                     f"back-off restarting failed container {run.container}"}}
            run.phase = "Running"
            return
        run.state = {"terminated": terminated}
        run.phase = "Succeeded" if exit_code == 0 else "Failed"

    def write_status(self, run: Running, pod: dict[str, Any]) -> None:
        container = main_container(pod)
        running = "running" in run.state
        ready = "True" if running else "False"
        stamp = now_text()
        conditions = [{"type": t, "status": s, "lastTransitionTime": stamp}
                      for t, s in (("PodScheduled", "True"), ("Initialized", "True"),
                                   ("ContainersReady", ready), ("Ready", ready))]
        cstatus: dict[str, Any] = {
            "name": run.container, "image": container.get("image") or "none",
            "imageID": "", "containerID": f"process://{run.proc.pid}" if run.alive else "",
            "ready": running, "started": running, "restartCount": run.restart_count,
            "state": run.state}
        if run.last_state:
            cstatus["lastState"] = run.last_state
        status = {"phase": run.phase, "hostIP": "127.0.0.1", "podIP": run.ip,
                  "podIPs": [{"ip": run.ip}], "startTime": run.start_time,
                  "conditions": conditions, "containerStatuses": [cstatus]}
        if run.message:
            status["message"] = run.message
        # Only what changed goes out: the times in conditions are not part of the key.
        key = json.dumps([run.phase, run.state, run.last_state, run.restart_count, ready,
                          run.message], sort_keys=True)
        if key == run.written:
            return
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status})
            run.written = key
        except client.ApiException as exc:
            if exc.status != 404:
                log.warning("status of %s/%s: %s", run.namespace, run.name, exc.reason)

    # -- the loop -----------------------------------------------------------------------
    def sync(self) -> None:
        snapshot = self._snapshot()
        if time.monotonic() - self._last_heartbeat > 10:
            with contextlib.suppress(Exception):
                self.heartbeat()
        self.refresh_services()
        seen: set[tuple[str, str]] = set()
        for ns, pods in snapshot.items():
            self.schedule(ns, pods)
            self.write_hosts(ns, pods)
            for pod in pods:
                meta = pod["metadata"]
                if (pod.get("spec") or {}).get("nodeName") != self.node:
                    continue
                key = (ns, meta["name"])
                seen.add(key)
                run = self.pods.get(key)
                if run is not None and run.uid != meta["uid"]:
                    self.kill_now(run)  # a new pod of the same name: the old one is gone
                    run = None
                if run is None:
                    run = self._new_run(ns, pod)
                self.sync_pod(run, pod)
        for key in [k for k in self.pods if k not in seen]:
            # Gone from the API (force-deleted): nothing may keep running.
            self.kill_now(self.pods.pop(key))

    def _new_run(self, namespace: str, pod: dict[str, Any]) -> Running:
        meta = pod["metadata"]
        directory = self.workdir / "pods" / f"{namespace}_{meta['name']}"
        directory.mkdir(parents=True, exist_ok=True)
        container = main_container(pod)
        run = Running(namespace=namespace, name=meta["name"], uid=meta["uid"],
                      ip=self.pool.get(namespace, meta["name"]), directory=directory,
                      container=container.get("name") or "main",
                      restart_policy=pod["spec"].get("restartPolicy") or "Always",
                      grace_default=int(pod["spec"].get("terminationGracePeriodSeconds")
                                        or 30))
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            # Finished before this agent started: never run it again.
            run.phase = status["phase"]
            statuses = status.get("containerStatuses") or [{}]
            run.state = statuses[0].get("state") or {"terminated": {"exitCode": 0}}
            run.restart_count = int(statuses[0].get("restartCount") or 0)
        (directory / "uid").write_text(run.uid)
        self.pods[(namespace, meta["name"])] = run
        return run

    def sync_pod(self, run: Running, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if run.proc is not None and run.proc.poll() is not None:
            self.on_exit(run, pod)
        if meta.get("deletionTimestamp"):
            self.terminate(run, pod)
            return
        if run.proc is None and run.phase not in ("Succeeded", "Failed") \
                and time.monotonic() >= run.next_start:
            try:
                self.start_process(run, pod)
                run.message = ""
            except LookupError as exc:  # a Secret or ConfigMap not there yet
                run.state = {"waiting": {"reason": "CreateContainerConfigError",
                                         "message": str(exc)}}
                run.next_start = time.monotonic() + 0.5
            except (OSError, ValueError) as exc:
                run.state = {"waiting": {"reason": "RunContainerError", "message": str(exc)}}
                run.next_start = time.monotonic() + run.backoff
        self.write_status(run, pod)

    def terminate(self, run: Running, pod: dict[str, Any]) -> None:
        """SIGTERM, then SIGKILL after the grace period; the pod goes once the process has."""
        if run.alive:
            assert run.proc is not None
            if run.terminating_since is None:
                run.terminating_since = time.monotonic()
                grace = pod["metadata"].get("deletionGracePeriodSeconds")
                grace = run.grace_default if grace is None else int(grace)
                run.kill_at = run.terminating_since + grace
                signal_group(run.proc.pid, signal.SIGTERM)
            elif run.kill_at is not None and time.monotonic() >= run.kill_at:
                signal_group(run.proc.pid, signal.SIGKILL)
            return
        if run.proc is not None:
            run.terminating_since = run.terminating_since or time.monotonic()
            self.on_exit(run, pod)
            self.write_status(run, pod)
        try:
            self.core.delete_namespaced_pod(
                run.name, run.namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=run.uid)))
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise
        self.pods.pop((run.namespace, run.name), None)

    def kill_now(self, run: Running) -> None:
        if run.alive:
            assert run.proc is not None
            signal_group(run.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(10)

    def run(self) -> None:
        self.register_node()
        threads = [threading.Thread(target=self._watch, args=(ns,), daemon=True,
                                    name=f"watch-{ns}") for ns in self.namespaces]
        for thread in threads:
            thread.start()
        self.refresh_services(force=True)
        log.info("node %s serving %s", self.node, ", ".join(self.namespaces))
        while not self.stopping.is_set():
            self.wake.wait(self.tick)
            self.wake.clear()
            try:
                self.sync()
            except Exception:
                log.exception("sync failed; trying again")
                time.sleep(0.5)

    def shutdown(self) -> None:
        """Every process goes: SIGTERM, a moment, then SIGKILL; the Node is removed."""
        self.stopping.set()
        alive = [r for r in self.pods.values() if r.alive]
        for run in alive:
            assert run.proc is not None
            signal_group(run.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        for run in alive:
            assert run.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(max(0.0, deadline - time.monotonic()))
            self.kill_now(run)
        self.unregister_node()


def main_container(pod: Mapping[str, Any] | None) -> dict[str, Any]:
    containers = ((pod or {}).get("spec") or {}).get("containers") or [{}]
    for container in containers:
        if container.get("name") == "kubelearn":
            return container
    return containers[0]


def signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def check_host() -> None:
    """Fail early when private mount namespaces are not available here."""
    if shutil.which("unshare") is None:
        raise SystemExit("node agent needs unshare(1) (util-linux)")
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(f"node agent needs private mount namespaces (root): {probe.stderr}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.nodeagent")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--namespace", action="append", required=True)
    parser.add_argument("--node-name", default="kubelearn-node")
    parser.add_argument("--ip-octet", type=int, default=0,
                        help="pods get 127.<octet>.x.y addresses")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stdout)
    check_host()
    args.workdir.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    agent = NodeAgent(api, args.namespace, args.workdir, node_name=args.node_name,
                      ip_octet=args.ip_octet)

    def stop(signum: int, _frame: Any) -> None:
        agent.stopping.set()
        agent.wake.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
