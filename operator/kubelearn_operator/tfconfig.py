"""TF_CONFIG: the cluster every replica joins, in the format tf.contrib.learn reads."""

from __future__ import annotations

import json
from collections.abc import Mapping

from . import naming

#: Roles that take part in training; the evaluator runs beside the cluster, not in it.
CLUSTER_ROLES = ("chief", "master", "ps", "worker")


def cluster_spec(experiment: str, namespace: str, counts: Mapping[str, int], *,
                 cluster_domain: str | None = None, port: int = naming.PORT,
                 ) -> dict[str, list[str]]:
    """Addresses of every training replica by role (roles with no replicas are left out)."""
    return {
        role: [naming.address(experiment, role, i, namespace, cluster_domain, port)
               for i in range(counts[role])]
        for role in CLUSTER_ROLES if counts.get(role, 0) > 0
    }


def tf_config(cluster: Mapping[str, list[str]], role: str, index: int) -> str:
    """The TF_CONFIG value of one replica; ``environment: cloud`` as contrib.learn expects."""
    return json.dumps({"cluster": cluster, "task": {"type": role, "index": index},
                       "environment": "cloud"}, separators=(",", ":"))


def tf_config_reference(role: str, index: int, variable: str) -> str:
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
