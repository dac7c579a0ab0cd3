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
