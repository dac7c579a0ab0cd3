"""What a replica is given: environment variable names, ports and paths.

The operator sets these in a pod, ``kubelearn local`` in a process, and ``kubelearn run``
reads them; all three take the names from here.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from .schema import URL_SCHEME

if TYPE_CHECKING:
    from .model import ExperimentSpec

#: The port every replica listens on (parameter servers, and the cluster spec's addresses).
PORT = 2222
PORT_NAME = "kubelearn-port"
#: The chief's progress endpoint (``GET /progress``), polled by the operator.
PROGRESS_PORT = 2223
PROGRESS_PATH = "/progress"

#: The name of the main container the operator adds to a template without containers
#: (which container is the main one: :mod:`.containers`).
CONTAINER_NAME = "kubelearn"
#: The runner image's user and group (Dockerfile): the model directory's volume is made
#: writable for this group (fsGroup).
RUNNER_UID = RUNNER_GID = 65532
TERMINATION_LOG = "/dev/termination-log"
#: Keys of the experiment's Secret and cluster ConfigMap.
TOKEN_KEY = "token"
#: The experiment's CurveZMQ secret key (64 hex digits): with wire encryption on, the ps
#: wire is encrypted and admits only the experiment's replicas.
CURVE_KEY = "curve-key"
CLUSTER_KEY = "cluster"

ENV_TF_CONFIG = "TF_CONFIG"
ENV_TOKEN = "KUBELEARN_TOKEN"
ENV_CURVE_KEY = "KUBELEARN_CURVE_KEY"
ENV_EXPERIMENT = "KUBELEARN_EXPERIMENT"
ENV_EXPERIMENT_FN = "KUBELEARN_EXPERIMENT_FN"
ENV_HPARAMS = "KUBELEARN_HPARAMS"
ENV_MODEL_DIR = "KUBELEARN_MODEL_DIR"
ENV_SCHEDULE = "KUBELEARN_SCHEDULE"
ENV_PROGRESS_PORT = "KUBELEARN_PROGRESS_PORT"
ENV_TERMINATION_LOG = "KUBELEARN_TERMINATION_LOG"
ENV_BIND_HOST = "KUBELEARN_BIND_HOST"
#: The most a parameter server may hold in memory before it drops its connections (bytes,
#: or with Ki/Mi/Gi/Ti); by default a share of the container's limit (distributed/memory.py).
ENV_PS_MEMORY_LIMIT = "KUBELEARN_PS_MEMORY_LIMIT"
#: The cluster spec, when TF_CONFIG refers to it instead of inlining it.
ENV_CLUSTER = "KUBELEARN_CLUSTER_SPEC"
#: A file holding the cluster spec, when TF_CONFIG leaves it out (``kubelearn local`` above
#: :data:`INLINE_CLUSTER_MAX_REPLICAS` replicas): ``kubelearn run`` puts it in before anything
#: reads TF_CONFIG, as the kubelet expands :data:`ENV_CLUSTER` in a pod.
ENV_CLUSTER_FILE = "KUBELEARN_CLUSTER_SPEC_FILE"
#: Above this many replicas TF_CONFIG's cluster is given once, not in every replica's
#: TF_CONFIG: from a ConfigMap on a cluster (the operator's default), from a file with
#: ``kubelearn local``. Inlined, N replicas would carry N addresses each.
INLINE_CLUSTER_MAX_REPLICAS = 64
#: The largest cluster file ``kubelearn run`` reads (100,000 addresses take about 5 MB).
MAX_CLUSTER_FILE_BYTES = 16 << 20
#: ``curve`` encrypts the ps wire of the experiments launched (CurveZMQ), ``none`` (or
#: nothing) leaves it in plaintext: a setting of the operator and of ``kubelearn local``, read
#: by :func:`wire_encryption`.
ENV_WIRE_ENCRYPTION = "KUBELEARN_WIRE_ENCRYPTION"

#: The exit code of ``kubelearn run`` and ``kubelearn local`` when the model directory is a
#: URL the runner cannot use: an unknown scheme, or a known one whose filesystem package
#: (s3fs for s3://, gcsfs for gs://, ...) is not installed. No restart can fix it.
EXIT_MODEL_DIR_UNUSABLE = 3

_URL_SCHEME_RE = re.compile(URL_SCHEME)


def model_dir_scheme(model_dir: str) -> str | None:
    """The URL scheme of a model directory given as a URL, lower-cased (``s3`` for
    ``s3://bucket/prefix``); None for a path (which has no ``scheme://`` at its start)."""
    match = _URL_SCHEME_RE.match(model_dir)
    return match.group(1).lower() if match else None


def wire_encryption(value: str) -> bool:
    """Whether a value of ``$KUBELEARN_WIRE_ENCRYPTION`` turns CurveZMQ on: ``curve`` does,
    ``none`` (or nothing) leaves it off.

    Raises:
        ValueError: for any other value, naming the variable.
    """
    choice = value.strip().lower()
    if choice not in ("", "none", "curve"):
        raise ValueError(f"{ENV_WIRE_ENCRYPTION} must be curve or none, got {value!r}")
    return choice == "curve"


def runner_command(spec: ExperimentSpec) -> list[str]:
    """The command a main container without one runs: ``kubelearn run`` with the experiment
    function (the spec has one)."""
    assert spec.experiment_fn is not None, "no runner without an experiment function"
    command = ["kubelearn", "run", "--experiment-fn", spec.experiment_fn]
    if spec.schedule:
        command += ["--schedule", spec.schedule]
    return command


def replica_env(spec: ExperimentSpec, tf_config: str, model_dir: str) -> dict[str, str]:
    """The variables every replica gets with a plain value, wherever it runs.

    The token (a Secret on a cluster) and the launcher's own additions come on top.
    """
    return {
        ENV_TF_CONFIG: tf_config,
        ENV_EXPERIMENT: spec.name,
        ENV_HPARAMS: json.dumps(dict(spec.hparams), sort_keys=True),
        ENV_MODEL_DIR: model_dir,
    }
