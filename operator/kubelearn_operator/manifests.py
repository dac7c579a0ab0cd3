"""Pure builders: an Experiment's spec in, plain manifest dicts out (no I/O)."""

from __future__ import annotations

import base64
import copy
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import naming
from .spec import ExperimentSpec
from .tfconfig import cluster_json, cluster_spec, tf_config, tf_config_reference

#: Above this many replicas TF_CONFIG's cluster comes from a ConfigMap, not each pod.
INLINE_CLUSTER_MAX_REPLICAS = 64


@dataclass(frozen=True)
class ExperimentRef:
    """Identity of the Experiment that owns the objects being built."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": naming.API_VERSION, "kind": naming.KIND, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}

    def metadata(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": dict(labels),
                "ownerReferences": [self.owner_reference()]}


def _pod_restart_policy(policy: str) -> str:
    """ExitCode restarts are made by the operator (it recreates the pod), so the pod's is Never."""
    return policy if policy in ("OnFailure", "Always") else "Never"


def default_command(spec: ExperimentSpec) -> list[str]:
    command = ["kubelearn", "run", "--experiment-fn", spec.experiment_fn]
    if spec.schedule:
        command += ["--schedule", spec.schedule]
    return command


def replica_env(ref: ExperimentRef, spec: ExperimentSpec, role: str, index: int,
                tf_config_value: str, *, cluster_from_configmap: bool = False,
                encrypt_wire: bool = False) -> list[dict[str, Any]]:
    """Environment of a replica's main container: the runner contract."""
    cluster: list[dict[str, Any]] = []
    if cluster_from_configmap:
        cluster = [{"name": naming.CLUSTER_ENV, "valueFrom": {"configMapKeyRef": {
            "name": naming.cluster_configmap_name(ref.name), "key": naming.CLUSTER_KEY}}}]
    return [
        *cluster,
        {"name": "TF_CONFIG", "value": tf_config_value},
        {"name": "KUBELEARN_EXPERIMENT", "value": ref.name},
        {"name": "KUBELEARN_ROLE", "value": role},
        {"name": "KUBELEARN_INDEX", "value": str(index)},
        {"name": "KUBELEARN_HPARAMS", "value": json.dumps(dict(spec.hparams), sort_keys=True)},
        {"name": "KUBELEARN_MODEL_DIR", "value": spec.model_dir},
        {"name": "KUBELEARN_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": naming.secret_name(ref.name), "key": naming.TOKEN_KEY}}},
        # Optional: a Secret made before the key was added has none; then every replica of
        # the experiment alike speaks plaintext.
        *([{"name": "KUBELEARN_CURVE_KEY", "valueFrom": {"secretKeyRef": {
            "name": naming.secret_name(ref.name), "key": naming.CURVE_KEY,
            "optional": True}}}] if encrypt_wire else []),
        # The runner writes its final metrics (or its error) there; the kubelet puts them
        # in the pod's status, where the operator reads them.
        {"name": "KUBELEARN_TERMINATION_LOG", "value": naming.TERMINATION_LOG},
    ]


def _main_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    for container in containers:
        if container.get("name") == naming.CONTAINER_NAME:
            return container
    if containers:
        return containers[0]
    container: dict[str, Any] = {"name": naming.CONTAINER_NAME}
    containers.append(container)
    return container


class PodBuilder:
    """Builds every replica's pod of one experiment; the cluster spec is computed once."""

    def __init__(self, ref: ExperimentRef, spec: ExperimentSpec, *,
                 cluster_domain: str | None = None, gang: bool = False,
                 inline_max: int = INLINE_CLUSTER_MAX_REPLICAS,
                 encrypt_wire: bool = False) -> None:
        self.ref = ref
        self.encrypt_wire = encrypt_wire
        self.spec = spec
        self.gang = gang and spec.run_policy.scheduling is not None
        counts = {role: r.replicas for role, r in spec.replicas.items()}
        self.cluster = cluster_spec(ref.name, ref.namespace, counts,
                                    cluster_domain=cluster_domain)
        self.cluster_from_configmap = spec.total_replicas > inline_max

    def configmap(self) -> dict[str, Any] | None:
        """The ConfigMap the pods' TF_CONFIG refers to, when the cluster is not inlined."""
        if not self.cluster_from_configmap:
            return None
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": self.ref.metadata(naming.cluster_configmap_name(self.ref.name),
                                              naming.selector(self.ref.name)),
                "data": {naming.CLUSTER_KEY: cluster_json(self.cluster)}}

    def tf_config(self, role: str, index: int) -> str:
        if self.cluster_from_configmap:
            return tf_config_reference(role, index, naming.CLUSTER_ENV)
        return tf_config(self.cluster, role, index)

    def pod(self, role: str, index: int, *, restarts: int = 0) -> dict[str, Any]:
        replica = self.spec.replicas[role]
        template = copy.deepcopy(dict(replica.template))
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}),
                  **naming.replica_labels(self.ref.name, role, index)}
        annotations = dict(tmeta.get("annotations") or {})
        if restarts:
            annotations[naming.ANNOTATION_RESTARTS] = str(restarts)
        pod_spec: dict[str, Any] = dict(template.get("spec") or {})
        pod_spec["restartPolicy"] = _pod_restart_policy(replica.restart_policy)
        # A thousand services would otherwise be injected as environment variables.
        pod_spec.setdefault("enableServiceLinks", False)
        containers = [dict(c) for c in pod_spec.get("containers") or []]
        pod_spec["containers"] = containers
        main = _main_container(containers)
        main.setdefault("image", self.spec.image)
        main.setdefault("terminationMessagePath", naming.TERMINATION_LOG)
        # A replica that dies before writing its message still says why: its last log lines.
        main.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
        if not main.get("command") and not main.get("args"):
            main["command"] = default_command(self.spec)
        ours = replica_env(self.ref, self.spec, role, index, self.tf_config(role, index),
                           cluster_from_configmap=self.cluster_from_configmap,
                           encrypt_wire=self.encrypt_wire)
        names = {e["name"] for e in ours}
        main["env"] = ours + [e for e in main.get("env") or [] if e.get("name") not in names]
        ports = [p for p in main.get("ports") or [] if p.get("containerPort") != naming.PORT]
        main["ports"] = [{"name": naming.PORT_NAME, "containerPort": naming.PORT,
                          "protocol": "TCP"}, *ports]
        scheduling = self.spec.run_policy.scheduling
        if scheduling and scheduling.priority_class:
            pod_spec.setdefault("priorityClassName", scheduling.priority_class)
        if self.gang and scheduling:
            pod_spec["schedulerName"] = scheduling.scheduler_name
            labels[naming.PODGROUP_LABEL] = naming.podgroup_name(self.ref.name)
        metadata = self.ref.metadata(naming.replica_name(self.ref.name, role, index), labels)
        if annotations:
            metadata["annotations"] = annotations
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def build_pod(ref: ExperimentRef, spec: ExperimentSpec, role: str, index: int, *,
              cluster_domain: str | None = None, gang: bool = False,
              restarts: int = 0) -> dict[str, Any]:
    return PodBuilder(ref, spec, cluster_domain=cluster_domain, gang=gang).pod(
        role, index, restarts=restarts)


def build_service(ref: ExperimentRef, role: str, index: int) -> dict[str, Any]:
    """Headless service giving one replica a stable DNS name before its pod is ready."""
    labels = naming.replica_labels(ref.name, role, index)
    selector = {k: labels[k] for k in (naming.LABEL_EXPERIMENT, naming.LABEL_ROLE,
                                       naming.LABEL_INDEX)}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": ref.metadata(naming.replica_name(ref.name, role, index), labels),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector,
                 "ports": [{"name": naming.PORT_NAME, "port": naming.PORT,
                            "targetPort": naming.PORT, "protocol": "TCP"}]},
    }


def build_secret(ref: ExperimentRef, token: str, curve_key: str | None = None
                 ) -> dict[str, Any]:
    """Secret with the token that authenticates the experiment's parameter-server traffic
    (and its progress endpoint) and the Curve key that encrypts that traffic (fresh
    random bytes unless given)."""
    curve_key = curve_key if curve_key is not None else secrets.token_hex(32)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": ref.metadata(naming.secret_name(ref.name), naming.selector(ref.name)),
        "data": {naming.TOKEN_KEY: base64.b64encode(token.encode()).decode(),
                 naming.CURVE_KEY: base64.b64encode(curve_key.encode()).decode()},
    }


def build_podgroup(ref: ExperimentRef, spec: ExperimentSpec) -> dict[str, Any]:
    """scheduler-plugins PodGroup: schedule all (or minAvailable) replicas together or none."""
    scheduling = spec.run_policy.scheduling
    assert scheduling is not None
    labels = naming.selector(ref.name)
    if scheduling.queue:
        labels[f"{naming.GROUP}/queue"] = scheduling.queue
    body: dict[str, Any] = {
        "apiVersion": f"{naming.PODGROUP_GROUP}/{naming.PODGROUP_VERSION}", "kind": "PodGroup",
        "metadata": ref.metadata(naming.podgroup_name(ref.name), labels),
        "spec": {"minMember": scheduling.min_available or spec.total_replicas},
    }
    if scheduling.schedule_timeout_seconds:
        body["spec"]["scheduleTimeoutSeconds"] = scheduling.schedule_timeout_seconds
    return body
