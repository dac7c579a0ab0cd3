"""Pure builders of the objects an Experiment owns: its spec in, plain dicts out (no I/O).

Pods, services, the token Secret, the cluster ConfigMap, the PodGroup, the model
directory's claim and TensorBoard; the names, the environment and TF_CONFIG come from the model
(:mod:`kubelearn_spec`).
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
from dataclasses import dataclass
from typing import Any

from kubelearn_spec import containers as main_containers
from kubelearn_spec import contract, names
from kubelearn_spec.model import ExperimentSpec
from kubelearn_spec.policy import pod_restart_policy
from kubelearn_spec.tfconfig import (
    cluster_json,
    cluster_spec,
    service_address,
    tf_config,
    tf_config_reference,
)

from .objects import ExperimentRef

#: Above this many replicas TF_CONFIG's cluster comes from a ConfigMap, not each pod.
INLINE_CLUSTER_MAX_REPLICAS = contract.INLINE_CLUSTER_MAX_REPLICAS

#: What the Pod Security Standards' `restricted` level asks of a pod and its main container,
#: given to kubelearn's own runner. A template's own settings win, key by key.
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
#: What a user's own image (the template gives the main container an image) gets: what
#: cannot keep it from starting. A root image (the official TensorFlow images) would fail
#: with runAsNonRoot (CreateContainerConfigError), a read-only root filesystem would break
#: an image that writes where it was built to write.
USER_POD_SECURITY = {"seccompProfile": {"type": "RuntimeDefault"}}
USER_CONTAINER_SECURITY = {"allowPrivilegeEscalation": False,
                           "capabilities": {"drop": ["ALL"]}}
#: A user's image in a namespace that enforces the `restricted` level
#: (``pod-security.kubernetes.io/enforce``), which admits no pod without runAsNonRoot: run
#: as the runner's user, so that a root image starts (as that user) instead of failing.
RESTRICTED_USER_POD_SECURITY = {**USER_POD_SECURITY, "runAsNonRoot": True,
                                "runAsUser": contract.RUNNER_UID}
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"


def security_defaults(runner: bool, enforce: str | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the main container's default securityContext: the restricted profile
    for kubelearn's runner, what cannot break it for a user's image (more where the
    namespace's ``enforce`` level is ``restricted``). A template's settings win over them."""
    if runner:
        return POD_SECURITY, CONTAINER_SECURITY
    if enforce == "restricted":
        return RESTRICTED_USER_POD_SECURITY, USER_CONTAINER_SECURITY
    return USER_POD_SECURITY, USER_CONTAINER_SECURITY


def runs_runner_image(spec: ExperimentSpec, main: dict[str, Any]) -> bool:
    """Whether a main container (as written in the template) runs kubelearn's runner: the
    spec has an experiment function and the template gives no image of its own (the
    container gets spec.image or the operator's runner image)."""
    return spec.experiment_fn is not None and not main_containers.has_own_image(main)


#: With a read-only root filesystem, the runner writes (model directory included) under /tmp.
SCRATCH_VOLUME, SCRATCH_PATH = "kubelearn-tmp", "/tmp"
#: The volume of the model directory's claim, mounted at the model directory.
MODEL_VOLUME = "kubelearn-model"
#: A pod that mounts the claim: its files belong to the runner's group, changed only when
#: the volume's root does not already (a large model directory is not walked each start).
STORAGE_POD_SECURITY = {"fsGroup": contract.RUNNER_GID, "fsGroupChangePolicy": "OnRootMismatch"}


def model_claim(spec: ExperimentSpec) -> str | None:
    """The claim that holds the experiment's model directory; None when it is ephemeral or
    on an object store."""
    if not spec.storage.on_volume:
        return None
    return spec.storage.claim_name or names.model_claim_name(spec.name)


def _env_from_storage_secret(container: dict[str, Any], spec: ExperimentSpec) -> None:
    """The object store's credentials: every key of spec.storage.secretName as a variable
    (fsspec's clients read them from the environment, e.g. AWS_ACCESS_KEY_ID)."""
    if not spec.storage.secret_name:
        return
    sources = [dict(s) for s in container.get("envFrom") or []]
    ref = {"secretRef": {"name": spec.storage.secret_name}}
    if ref not in sources:
        sources.append(ref)
    container["envFrom"] = sources


def _mount_model_dir(pod_spec: dict[str, Any], main: dict[str, Any], claim: str,
                     path: str) -> None:
    """The claim at the model directory, writable by the runner's group (fsGroup), unless
    the template already mounts something there."""
    mounts = [dict(m) for m in main.get("volumeMounts") or []]
    if any(m.get("mountPath", "").rstrip("/") == path.rstrip("/") for m in mounts):
        return
    volumes = [dict(v) for v in pod_spec.get("volumes") or []]
    volumes.append({"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim}})
    pod_spec["volumes"] = volumes
    main["volumeMounts"] = [*mounts, {"name": MODEL_VOLUME, "mountPath": path}]
    pod_spec["securityContext"] = {**STORAGE_POD_SECURITY,
                                   **(pod_spec.get("securityContext") or {})}


def _secure(pod_spec: dict[str, Any], main: dict[str, Any], *, runner: bool = True,
            enforce: str | None = None) -> None:
    """The defaults of :func:`security_defaults` under the template's own settings, on the
    pod and its main container (other containers are left as written); a read-only image
    gets a scratch /tmp."""
    pod_security, container_security = security_defaults(runner, enforce)
    pod_spec["securityContext"] = {**pod_security, **(pod_spec.get("securityContext") or {})}
    main["securityContext"] = {**container_security, **(main.get("securityContext") or {})}
    mounts = [dict(m) for m in main.get("volumeMounts") or []]
    if main["securityContext"].get("readOnlyRootFilesystem") and not any(
            m.get("mountPath", "").rstrip("/") == SCRATCH_PATH for m in mounts):
        volumes = [dict(v) for v in pod_spec.get("volumes") or []]
        if not any(v.get("name") == SCRATCH_VOLUME for v in volumes):
            volumes.append({"name": SCRATCH_VOLUME, "emptyDir": {}})
        pod_spec["volumes"] = volumes
        main["volumeMounts"] = [*mounts, {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}]


def replica_env(ref: ExperimentRef, spec: ExperimentSpec, tf_config_value: str, *,
                cluster_from_configmap: bool = False, encrypt_wire: bool = False,
                ) -> list[dict[str, Any]]:
    """Environment of a replica's main container: the runner contract."""
    cluster: list[dict[str, Any]] = []
    if cluster_from_configmap:
        cluster = [{"name": contract.ENV_CLUSTER, "valueFrom": {"configMapKeyRef": {
            "name": names.cluster_configmap_name(ref.name), "key": contract.CLUSTER_KEY}}}]
    assert spec.model_dir is not None, "the operator's parse_spec fills in the model dir"
    plain = contract.replica_env(spec, tf_config_value, spec.model_dir)
    return [
        *cluster,
        *({"name": k, "value": v} for k, v in plain.items()),
        {"name": contract.ENV_TOKEN, "valueFrom": {"secretKeyRef": {
            "name": names.secret_name(ref.name), "key": contract.TOKEN_KEY}}},
        # Optional: a Secret made before the key was added has none; then every replica of
        # the experiment alike speaks plaintext.
        *([{"name": contract.ENV_CURVE_KEY, "valueFrom": {"secretKeyRef": {
            "name": names.secret_name(ref.name), "key": contract.CURVE_KEY,
            "optional": True}}}] if encrypt_wire else []),
        # The runner writes its final metrics (or its error) there; the kubelet puts them
        # in the pod's status, where the operator reads them.
        {"name": contract.ENV_TERMINATION_LOG, "value": contract.TERMINATION_LOG},
    ]


def _main_container(containers: list[dict[str, Any]]) -> dict[str, Any]:
    """The main container (:func:`kubelearn_spec.containers.main_container_index`); one
    named kubelearn is added to a template without containers."""
    index = main_containers.main_container_index(containers)
    if index is not None:
        return containers[index]
    if containers:  # the schema refuses several containers that name no main one
        raise ValueError(main_containers.NO_MAIN_CONTAINER)
    container: dict[str, Any] = {"name": main_containers.DEFAULT_CONTAINER_NAME}
    containers.append(container)
    return container


class PodBuilder:
    """Builds every replica's pod of one experiment; the cluster spec is computed once."""

    def __init__(self, ref: ExperimentRef, spec: ExperimentSpec, *,
                 cluster_domain: str | None = None, gang: bool = False,
                 inline_max: int = INLINE_CLUSTER_MAX_REPLICAS,
                 encrypt_wire: bool = False, image_pull_policy: str | None = None,
                 enforce: str | None = None) -> None:
        self.ref = ref
        #: The namespace's Pod Security enforce level, when known (see security_defaults).
        self.enforce = enforce
        self.image_pull_policy = image_pull_policy
        self.encrypt_wire = encrypt_wire
        self.spec = spec
        self.gang = gang and spec.run_policy.scheduling is not None
        self.cluster = cluster_spec(
            spec.counts(), service_address(ref.name, ref.namespace, cluster_domain))
        self.cluster_from_configmap = spec.total_replicas > inline_max

    def configmap(self) -> dict[str, Any] | None:
        """The ConfigMap the pods' TF_CONFIG refers to, when the cluster is not inlined."""
        if not self.cluster_from_configmap:
            return None
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": self.ref.metadata(names.cluster_configmap_name(self.ref.name),
                                              names.selector(self.ref.name)),
                "data": {contract.CLUSTER_KEY: cluster_json(self.cluster)}}

    def tf_config(self, role: str, index: int) -> str:
        if self.cluster_from_configmap:
            return tf_config_reference(role, index)
        return tf_config(self.cluster, role, index)

    def pod(self, role: str, index: int, *, restarts: int = 0) -> dict[str, Any]:
        replica = self.spec.replicas[role]
        template = copy.deepcopy(dict(replica.template))
        tmeta = template.get("metadata") or {}
        labels = {**(tmeta.get("labels") or {}),
                  **names.replica_labels(self.ref.name, role, index)}
        annotations = dict(tmeta.get("annotations") or {})
        if restarts:
            annotations[names.ANNOTATION_RESTARTS] = str(restarts)
        pod_spec: dict[str, Any] = dict(template.get("spec") or {})
        pod_spec["restartPolicy"] = pod_restart_policy(replica.restart_policy)
        # A thousand services would otherwise be injected as environment variables.
        pod_spec.setdefault("enableServiceLinks", False)
        containers = [dict(c) for c in pod_spec.get("containers") or []]
        pod_spec["containers"] = containers
        main = _main_container(containers)
        runner = runs_runner_image(self.spec, main)
        main.setdefault("image", self.spec.image)
        if self.image_pull_policy:
            main.setdefault("imagePullPolicy", self.image_pull_policy)
        main.setdefault("terminationMessagePath", contract.TERMINATION_LOG)
        # A replica that dies before writing its message still says why: its last log lines.
        main.setdefault("terminationMessagePolicy", "FallbackToLogsOnError")
        if self.spec.experiment_fn is not None and not main_containers.own_command(main):
            main["command"] = contract.runner_command(self.spec)
        ours = replica_env(self.ref, self.spec, self.tf_config(role, index),
                           cluster_from_configmap=self.cluster_from_configmap,
                           encrypt_wire=self.encrypt_wire)
        taken = {e["name"] for e in ours}
        main["env"] = ours + [e for e in main.get("env") or [] if e.get("name") not in taken]
        ports = [p for p in main.get("ports") or [] if p.get("containerPort") != contract.PORT]
        main["ports"] = [{"name": contract.PORT_NAME, "containerPort": contract.PORT,
                          "protocol": "TCP"}, *ports]
        if claim := model_claim(self.spec):
            assert self.spec.model_dir is not None
            _mount_model_dir(pod_spec, main, claim, self.spec.model_dir)
        _env_from_storage_secret(main, self.spec)
        _secure(pod_spec, main, runner=runner, enforce=self.enforce)
        scheduling = self.spec.run_policy.scheduling
        if scheduling and scheduling.priority_class:
            pod_spec.setdefault("priorityClassName", scheduling.priority_class)
        if self.gang and scheduling:
            pod_spec["schedulerName"] = scheduling.scheduler_name
            labels[names.PODGROUP_LABEL] = names.podgroup_name(self.ref.name)
        metadata = self.ref.metadata(names.replica_name(self.ref.name, role, index), labels)
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
    labels = names.replica_labels(ref.name, role, index)
    selector = {k: labels[k] for k in (names.LABEL_EXPERIMENT, names.LABEL_ROLE,
                                       names.LABEL_INDEX)}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": ref.metadata(names.replica_name(ref.name, role, index), labels),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector,
                 "ports": [{"name": contract.PORT_NAME, "port": contract.PORT,
                            "targetPort": contract.PORT, "protocol": "TCP"}]},
    }


def build_secret(ref: ExperimentRef, token: str, curve_key: str | None = None
                 ) -> dict[str, Any]:
    """Secret with the token that authenticates the experiment's parameter-server traffic
    (and its progress endpoint) and the Curve key that encrypts that traffic (fresh
    random bytes unless given)."""
    curve_key = curve_key if curve_key is not None else secrets.token_hex(32)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": ref.metadata(names.secret_name(ref.name), names.selector(ref.name)),
        "data": {contract.TOKEN_KEY: base64.b64encode(token.encode()).decode(),
                 contract.CURVE_KEY: base64.b64encode(curve_key.encode()).decode()},
    }


def build_podgroup(ref: ExperimentRef, spec: ExperimentSpec) -> dict[str, Any]:
    """scheduler-plugins PodGroup: schedule all (or minAvailable) replicas together or none."""
    scheduling = spec.run_policy.scheduling
    assert scheduling is not None
    labels = names.selector(ref.name)
    if scheduling.queue:
        labels[names.LABEL_QUEUE] = scheduling.queue
    body: dict[str, Any] = {
        "apiVersion": f"{names.PODGROUP_GROUP}/{names.PODGROUP_VERSION}", "kind": "PodGroup",
        "metadata": ref.metadata(names.podgroup_name(ref.name), labels),
        "spec": {"minMember": scheduling.min_available or spec.total_replicas},
    }
    if scheduling.schedule_timeout_seconds:
        body["spec"]["scheduleTimeoutSeconds"] = scheduling.schedule_timeout_seconds
    return body


def build_model_claim(ref: ExperimentRef, spec: ExperimentSpec) -> dict[str, Any]:
    """The claim the operator creates for the model directory (``<name>-model``).

    Owned by the Experiment (deleted with it) only when the spec asks: by default the
    trained model outlives the Experiment, and a new Experiment of the same name resumes
    from its checkpoints, as a TensorFlow job pointed at the same model_dir does.
    """
    storage = spec.storage
    metadata: dict[str, Any] = {"name": names.model_claim_name(ref.name),
                                "namespace": ref.namespace,
                                "labels": names.selector(ref.name)}
    if storage.delete_with_experiment:
        metadata["ownerReferences"] = [ref.owner_reference()]
    body: dict[str, Any] = {"accessModes": list(storage.access_modes),
                            "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class:
        body["storageClassName"] = storage.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata,
            "spec": body}


@dataclass(frozen=True)
class TensorBoard:
    """What serves an experiment's event files: a Deployment and its Service."""

    deployment: dict[str, Any]
    service: dict[str, Any]

    @staticmethod
    def url(ref: ExperimentRef, cluster_domain: str | None = None) -> str:
        host = f"{names.tensorboard_name(ref.name)}.{ref.namespace}.svc"
        if cluster_domain:
            host += f".{cluster_domain}"
        return f"http://{host}:{names.TENSORBOARD_PORT}"


def build_tensorboard(ref: ExperimentRef, spec: ExperimentSpec, image: str,
                      pull_policy: str | None = None) -> TensorBoard:
    """TensorBoard over the model directory: its claim mounted read-only at the same path
    the replicas write, so the event files' paths read the same, or its URL with the same
    credentials. Owned by the Experiment: removed with it."""
    claim = model_claim(spec)
    assert spec.model_dir is not None and not spec.storage.ephemeral, \
        "the schema refuses ephemeral"
    name = names.tensorboard_name(ref.name)
    labels = {**names.selector(ref.name), names.LABEL_COMPONENT: names.TENSORBOARD}
    container: dict[str, Any] = {
        "name": names.TENSORBOARD, "image": image,
        "args": ["--logdir", spec.model_dir, "--bind_all",
                 "--port", str(names.TENSORBOARD_PORT)],
        "ports": [{"name": "http", "containerPort": names.TENSORBOARD_PORT,
                   "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
    }
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    pod_spec: dict[str, Any] = {
        "containers": [container], "enableServiceLinks": False,
        "automountServiceAccountToken": False}
    scheme = contract.model_dir_scheme(spec.model_dir)
    if scheme is not None:
        # TensorBoard finds new event files by listing the directory again and again; the
        # fsspec clients (s3fs, gcsfs, adlfs) would keep their first listing for good and
        # never show a run whose events were written after TensorBoard started.
        container["env"] = [{"name": f"FSSPEC_{scheme.upper()}",
                             "value": json.dumps({"use_listings_cache": False})}]
    if claim is not None:
        container["volumeMounts"] = [{"name": MODEL_VOLUME, "mountPath": spec.model_dir,
                                      "readOnly": True}]
        pod_spec["volumes"] = [{"name": MODEL_VOLUME, "persistentVolumeClaim": {
            "claimName": claim, "readOnly": True}}]
    _env_from_storage_secret(container, spec)
    _secure(pod_spec, container)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": ref.metadata(name, labels),
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod_spec}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": ref.metadata(name, labels),
        "spec": {"selector": labels, "ports": [{
            "name": "http", "port": names.TENSORBOARD_PORT, "targetPort": "http",
            "protocol": "TCP"}]},
    }
    return TensorBoard(deployment, service)
