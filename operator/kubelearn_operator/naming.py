"""Every name, label key and API coordinate the operator uses, built in one place."""

from __future__ import annotations

GROUP = "kubelearn.dev"
VERSION = "v1alpha1"
PLURAL = "experiments"
KIND = "Experiment"
API_VERSION = f"{GROUP}/{VERSION}"

#: Roles in the order their pods are created and reported.
ROLES = ("chief", "master", "ps", "worker", "evaluator")
#: Roles whose single replica decides success when present.
LEADER_ROLES = ("chief", "master")

LABEL_EXPERIMENT = f"{GROUP}/experiment"
LABEL_ROLE = f"{GROUP}/role"
LABEL_INDEX = f"{GROUP}/index"
LABEL_JOB_ROLE = f"{GROUP}/job-role"
ANNOTATION_RESTARTS = f"{GROUP}/restarts"
ANNOTATION_METRICS = f"{GROUP}/metrics"
TERMINATION_LOG = "/dev/termination-log"
PROGRESS_PORT = 2223  # the chief's progress endpoint (the runner's KUBELEARN_PROGRESS_PORT)
PROGRESS_PATH = "/progress"

CONTAINER_NAME = "kubelearn"
PORT = 2222
PORT_NAME = "kubelearn-port"
TOKEN_KEY = "token"
#: The experiment's CurveZMQ secret key (64 hex digits) in the same Secret: the ps wire
#: is encrypted and admits only the experiment's replicas.
CURVE_KEY = "curve-key"
CLUSTER_KEY = "cluster"
CLUSTER_ENV = "KUBELEARN_CLUSTER_SPEC"

PODGROUP_GROUP = "scheduling.x-k8s.io"
PODGROUP_VERSION = "v1alpha1"
PODGROUP_PLURAL = "podgroups"
PODGROUP_LABEL = f"{PODGROUP_GROUP}/pod-group"
DEFAULT_GANG_SCHEDULER = "scheduler-plugins-scheduler"

MAX_DNS_LABEL = 63


def replica_name(experiment: str, role: str, index: int) -> str:
    """Name of the pod and of the headless service of one replica."""
    return f"{experiment}-{role}-{index}"


def secret_name(experiment: str) -> str:
    """Name of the Secret holding the experiment's parameter-server token."""
    return f"{experiment}-kubelearn-token"


def cluster_configmap_name(experiment: str) -> str:
    """Name of the ConfigMap holding a large experiment's cluster spec (TF_CONFIG's bulk)."""
    return f"{experiment}-kubelearn-cluster"


def podgroup_name(experiment: str) -> str:
    return experiment


def address(experiment: str, role: str, index: int, namespace: str,
            cluster_domain: str | None = None, port: int = PORT) -> str:
    """DNS address of a replica: ``<exp>-<role>-<i>.<ns>.svc[.<domain>]:<port>``."""
    host = f"{replica_name(experiment, role, index)}.{namespace}.svc"
    if cluster_domain:
        host = f"{host}.{cluster_domain}"
    return f"{host}:{port}"


def selector(experiment: str) -> dict[str, str]:
    """Labels that every object of an experiment carries."""
    return {LABEL_EXPERIMENT: experiment}


def replica_labels(experiment: str, role: str, index: int) -> dict[str, str]:
    labels = {LABEL_EXPERIMENT: experiment, LABEL_ROLE: role, LABEL_INDEX: str(index)}
    if role in LEADER_ROLES:
        labels[LABEL_JOB_ROLE] = "master"
    return labels
