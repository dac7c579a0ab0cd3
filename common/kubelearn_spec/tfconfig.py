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
