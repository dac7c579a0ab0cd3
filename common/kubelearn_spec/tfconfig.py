"""TF_CONFIG: the cluster every replica joins, in the format tf.contrib.learn reads."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from . import contract, names


def service_address(experiment: str, namespace: str, cluster_domain: str | None = None,
                    port: int = contract.PORT) -> Callable[[str, int], str]:
    """A replica's DNS address on a cluster: ``<exp>-<role>-<i>.<ns>.svc[.<domain>]:<port>``."""
    def address(role: str, index: int) -> str:
        host = f"{names.replica_name(experiment, role, index)}.{namespace}.svc"
        if cluster_domain:
            host = f"{host}.{cluster_domain}"
        return f"{host}:{port}"
    return address


def cluster_spec(counts: Mapping[str, int], address: Callable[[str, int], str],
                 ) -> dict[str, list[str]]:
    """Addresses of every training replica by role (roles with no replicas are left out)."""
    return {role: [address(role, i) for i in range(counts[role])]
            for role in names.CLUSTER_ROLES if counts.get(role, 0) > 0}


def tf_config(cluster: Mapping[str, list[str]], role: str, index: int) -> str:
    """The TF_CONFIG value of one replica; ``environment: cloud`` as contrib.learn expects."""
    return json.dumps({"cluster": cluster, "task": {"type": role, "index": index},
                       "environment": "cloud"}, separators=(",", ":"))


def tf_config_reference(role: str, index: int, variable: str = contract.ENV_CLUSTER) -> str:
    """TF_CONFIG with the cluster taken from an earlier environment variable.

    The kubelet expands ``$(VAR)`` in an env value from the variables defined before it, so
    the pod stores a reference and the process still sees the whole TF_CONFIG. A 1000-replica
    cluster spec is 40 kB: inlined, every pod would carry it (40 MB through etcd and every
    watch); referenced, one ConfigMap does.
    """
    task = json.dumps({"type": role, "index": index}, separators=(",", ":"))
    return f'{{"cluster":$({variable}),"task":{task},"environment":"cloud"}}'


def cluster_json(cluster: Mapping[str, list[str]]) -> str:
    return json.dumps(cluster, separators=(",", ":"))


def tf_config_task(role: str, index: int) -> str:
    """TF_CONFIG without its cluster, which a file named by ``KUBELEARN_CLUSTER_SPEC_FILE``
    holds (:func:`with_cluster`): N replicas then cost N small values and one file of N
    addresses, not N copies of it."""
    return json.dumps({"task": {"type": role, "index": index}, "environment": "cloud"},
                      separators=(",", ":"))


def with_cluster(tf_config_text: str, cluster_text: str) -> str:
    """The whole TF_CONFIG of :func:`tf_config_task`'s form and the cluster file's JSON.

    Raises:
        ValueError: when either is not a JSON object, or TF_CONFIG has a cluster already.
    """
    try:
        config = json.loads(tf_config_text or "{}")
        cluster = json.loads(cluster_text)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError("TF_CONFIG must be a JSON object")
    if not isinstance(cluster, dict):
        raise ValueError(f"the cluster file must hold a JSON object, got "
                         f"{type(cluster).__name__}")
    if "cluster" in config:
        raise ValueError(f"TF_CONFIG has a cluster and {contract.ENV_CLUSTER_FILE} names "
                         "another: give one")
    return json.dumps({"cluster": cluster, **config}, separators=(",", ":"))
