"""The per-experiment NetworkPolicy: who may reach an experiment's pods, as a pure builder.

The parameter servers listen on port 2222 and authenticate peers with the experiment's token;
the policy adds a network fence, so only the experiment's own pods reach that port. The chief's
progress endpoint (port 2223) is open to the operator's pods only. Everything else that comes
into the experiment's pods is refused once the policy exists (a NetworkPolicy isolates the pods
it selects), so a user who serves more from a replica adds a policy of their own: policies add
up. Egress is left alone: replicas need DNS and their storage.

Turned on and configured by the operator's settings (``network_policy_config``), which the
Helm chart fills from its ``networkPolicy`` values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubelearn_spec import contract, names

#: Label every namespace carries (Kubernetes >= 1.21), used to point at the operator's one.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

ENV_ENABLED = "KUBELEARN_NETWORK_POLICY"
ENV_OPERATOR_NAMESPACE = "KUBELEARN_OPERATOR_NAMESPACE"
ENV_OPERATOR_SELECTOR = "KUBELEARN_OPERATOR_SELECTOR"

_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class NetworkPolicyConfig:
    """Where the operator runs: the pods allowed to reach the progress endpoint."""

    operator_namespace: str
    operator_selector: Mapping[str, str]


def parse_selector(text: str, field: str = ENV_OPERATOR_SELECTOR) -> dict[str, str]:
    """``"a=b,c=d"`` into ``{"a": "b", "c": "d"}``; a ValueError names ``field`` otherwise."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise ValueError(f"{field}: {part!r} is not a label key=value pair")
        if len(value) > 63 or len(key.rpartition("/")[2]) > 63:
            raise ValueError(f"{field}: {part!r} is longer than a label allows (63)")
        labels[key] = value
    return labels


def network_policy_config(env: Mapping[str, str]) -> NetworkPolicyConfig | None:
    """The policy settings from the operator's environment; None when turned off.

    On unless ``KUBELEARN_NETWORK_POLICY`` is false. When on, the operator must know its own
    pods: ``KUBELEARN_OPERATOR_NAMESPACE`` and ``KUBELEARN_OPERATOR_SELECTOR`` (``k=v,k=v``),
    which the chart sets; without them the policy is off (an operator run by hand).
    """
    enabled = (env.get(ENV_ENABLED) or "true").strip().lower()
    if enabled in _FALSE:
        return None
    if enabled not in _TRUE:
        raise ValueError(f"{ENV_ENABLED} must be true or false, got {env.get(ENV_ENABLED)!r}")
    namespace = (env.get(ENV_OPERATOR_NAMESPACE) or "").strip()
    selector = parse_selector(env.get(ENV_OPERATOR_SELECTOR) or "")
    if not namespace and not selector:
        return None
    if not namespace:
        raise ValueError(f"{ENV_OPERATOR_NAMESPACE} must be set with {ENV_OPERATOR_SELECTOR}")
    if not selector:
        raise ValueError(f"{ENV_OPERATOR_SELECTOR} must be set with {ENV_OPERATOR_NAMESPACE}")
    return NetworkPolicyConfig(namespace, selector)


def build_network_policy(
    experiment_name: str,
    namespace: str,
    owner_reference: Mapping[str, Any],
    operator: NetworkPolicyConfig,
    *,
    labels: Mapping[str, str] | None = None,
    port: int = contract.PORT,
    progress_port: int = contract.PROGRESS_PORT,
) -> dict[str, Any]:
    """NetworkPolicy selecting the experiment's pods: port ``port`` from those pods only,
    ``progress_port`` from the operator's pods only, nothing else in.

    ``owner_reference`` (the Experiment's) makes the garbage collector delete the policy with
    the experiment. ``labels`` are added to the policy's own (they select nothing).
    """
    if not operator.operator_selector:
        # An empty selector would open the progress port to every pod of that namespace.
        raise ValueError("operator_selector must name at least one label of the operator's pods")
    if not operator.operator_namespace:
        raise ValueError("operator_namespace must name the operator's namespace")
    for field, value in (("port", port), ("progress_port", progress_port)):
        if not 1 <= value <= 65535:
            raise ValueError(f"{field} must be a TCP port (1-65535), got {value}")
    experiment = names.selector(experiment_name)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": names.network_policy_name(experiment_name),
            "namespace": namespace,
            "labels": {**(labels or {}), **experiment},
            "ownerReferences": [dict(owner_reference)],
        },
        "spec": {
            "podSelector": {"matchLabels": dict(experiment)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {   # The replicas of this experiment, to each other (same namespace).
                    "from": [{"podSelector": {"matchLabels": dict(experiment)}}],
                    "ports": [{"protocol": "TCP", "port": port}],
                },
                {   # The operator, polling the chief's progress.
                    "from": [{
                        "namespaceSelector": {"matchLabels": {
                            NAMESPACE_NAME_LABEL: operator.operator_namespace}},
                        "podSelector": {"matchLabels": dict(operator.operator_selector)},
                    }],
                    "ports": [{"protocol": "TCP", "port": progress_port}],
                },
            ],
        },
    }
