"""Every API coordinate, role, label and object name of an Experiment and a Sweep, built in
one place."""

from __future__ import annotations

from collections.abc import Callable

GROUP = "kubelearn.dev"
VERSION = "v1alpha1"
PLURAL = "experiments"
SINGULAR = "experiment"
KIND = "Experiment"
LIST_KIND = "ExperimentList"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"

SWEEP_PLURAL = "sweeps"
SWEEP_SINGULAR = "sweep"
SWEEP_KIND = "Sweep"
SWEEP_LIST_KIND = "SweepList"
SWEEP_CRD_NAME = f"{SWEEP_PLURAL}.{GROUP}"

#: Roles in the order their pods are created and reported.
ROLES = ("chief", "master", "ps", "worker", "evaluator")
#: Roles whose single replica decides success when present.
LEADER_ROLES = ("chief", "master")
#: Roles that take part in training (TF_CONFIG's cluster); the evaluator runs beside it.
CLUSTER_ROLES = ("chief", "master", "ps", "worker")
#: Roles of which at least one must run for there to be training at all.
TRAINING_ROLES = ("worker", "master", "chief")

LABEL_EXPERIMENT = f"{GROUP}/experiment"
LABEL_ROLE = f"{GROUP}/role"
LABEL_INDEX = f"{GROUP}/index"
LABEL_JOB_ROLE = f"{GROUP}/job-role"
LABEL_QUEUE = f"{GROUP}/queue"
#: The component label of what serves an experiment beside its replicas.
LABEL_COMPONENT = f"{GROUP}/component"
TENSORBOARD = "tensorboard"
TENSORBOARD_PORT = 6006
ANNOTATION_RESTARTS = f"{GROUP}/restarts"
#: The labels of a Sweep's trial Experiments: the Sweep's name and the trial's number, from
#: which the search state is rebuilt.
LABEL_SWEEP = f"{GROUP}/sweep"
LABEL_TRIAL = f"{GROUP}/trial"
#: The role whose count the scale subresource sets (``kubectl scale exp/NAME``).
SCALED_ROLE = "worker"
#: Set by the Sweep's controller on a trial it stops (with spec.runPolicy.suspend): why,
#: "pruned" (early stopping) or "stopped" (the sweep ended first), and the reason in words.
#: Kept on the Experiment, so the trial's state survives an operator restart.
ANNOTATION_TRIAL_STOPPED = f"{GROUP}/trial-stopped"
ANNOTATION_TRIAL_STOP_REASON = f"{GROUP}/trial-stop-reason"
#: StorageClass annotation that makes a class the cluster's default.
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

PODGROUP_GROUP = "scheduling.x-k8s.io"
PODGROUP_VERSION = "v1alpha1"
PODGROUP_PLURAL = "podgroups"
PODGROUP_LABEL = f"{PODGROUP_GROUP}/pod-group"
DEFAULT_GANG_SCHEDULER = "scheduler-plugins-scheduler"

MAX_DNS_LABEL = 63
#: DNS-1035 label: it names the experiment's services, so it must start with a letter.
DNS_1035 = r"[a-z]([-a-z0-9]*[a-z0-9])?"


def replica_name(experiment: str, role: str, index: int) -> str:
    """Name of the pod and of the headless service of one replica."""
    return f"{experiment}-{role}-{index}"


def replica_task(role: str, index: int) -> str:
    """How a replica is called where the experiment is known: ``worker-0``."""
    return f"{role}-{index}"


def _suffixed(suffix: str, doc: str) -> Callable[[str], str]:
    """The name function of an object the operator makes for an experiment beside its
    replicas: ``<experiment>-<suffix>``."""
    def name(experiment: str) -> str:
        return f"{experiment}-{suffix}"

    name.__doc__ = doc
    return name


secret_name = _suffixed(
    "kubelearn-token", "Name of the Secret holding the experiment's parameter-server token.")
cluster_configmap_name = _suffixed(
    "kubelearn-cluster",
    "Name of the ConfigMap holding a large experiment's cluster spec (TF_CONFIG's bulk).")
model_claim_name = _suffixed(
    "model", "Name of the PersistentVolumeClaim the operator creates for the model directory.")
tensorboard_name = _suffixed(
    TENSORBOARD,
    "Name of the TensorBoard Deployment and Service of an experiment (spec.tensorboard).")
network_policy_name = _suffixed("kubelearn", "Name of an experiment's NetworkPolicy.")


def podgroup_name(experiment: str) -> str:
    return experiment


def trial_name(sweep: str, number: int) -> str:
    """Name of trial ``number`` (from 0) of a Sweep: the Experiment it runs."""
    return f"{sweep}-{number}"


def trial_labels(sweep: str, number: int) -> dict[str, str]:
    """Labels of a trial Experiment, naming its Sweep and its number."""
    return {LABEL_SWEEP: sweep, LABEL_TRIAL: str(number)}


def max_name_length(counts: dict[str, int]) -> int:
    """Longest experiment name whose ``<name>-<role>-<index>`` names all fit a DNS label."""
    limits = [MAX_DNS_LABEL - len(role) - 2 - len(str(n - 1))
              for role, n in counts.items() if n > 0]
    return min(limits, default=MAX_DNS_LABEL)


def selector(experiment: str) -> dict[str, str]:
    """Labels that every object of an experiment carries."""
    return {LABEL_EXPERIMENT: experiment}


def replica_labels(experiment: str, role: str, index: int) -> dict[str, str]:
    labels = {LABEL_EXPERIMENT: experiment, LABEL_ROLE: role, LABEL_INDEX: str(index)}
    if role in LEADER_ROLES:
        labels[LABEL_JOB_ROLE] = "master"
    return labels
