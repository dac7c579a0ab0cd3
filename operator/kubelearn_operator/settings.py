"""Operator settings, read once from the environment at start-up (never inside builders).

KUBELEARN_RUNNER_IMAGE        image of replicas that name none (kubelearn/runner:0.1.0)
KUBELEARN_RUNNER_IMAGE_PULL_POLICY  its imagePullPolicy (Always, IfNotPresent, Never; none:
                              Kubernetes' default)
KUBELEARN_TENSORBOARD_IMAGE   image of an experiment's TensorBoard (kubelearn/tensorboard:0.1.0),
                              pulled per KUBELEARN_RUNNER_IMAGE_PULL_POLICY too
KUBELEARN_CLUSTER_DOMAIN      appended to replica addresses in TF_CONFIG (none: <svc>.<ns>.svc)
KUBELEARN_API_QPS, _BURST     client-side rate limit of all API requests (500/s, burst 1000);
                              Events and clean-up go only when nothing else waits
KUBELEARN_CREATE_CONCURRENCY  API requests in flight at once (64)
KUBELEARN_WORKERS             experiments reconciled at once (8)
KUBELEARN_RESYNC_SECONDS      every experiment is reconciled at least this often (10)
KUBELEARN_METRICS_PORT        Prometheus /metrics port, 0 to disable (9090)
KUBELEARN_PODGROUP_CHECK_SECONDS  how long the PodGroup API's presence is cached (30)
KUBELEARN_INLINE_CLUSTER_MAX_REPLICAS  above this, TF_CONFIG's cluster comes from a ConfigMap (64)
KUBELEARN_PROGRESS_SECONDS    how often running chiefs' progress is polled into status (5; 0: off)
KUBELEARN_NETWORK_POLICY, KUBELEARN_OPERATOR_NAMESPACE, KUBELEARN_OPERATOR_SELECTOR
                              a NetworkPolicy per experiment (see netpol.py; the chart sets them)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from .netpol import NetworkPolicyConfig, network_policy_config

DEFAULT_IMAGE = "kubelearn/runner:0.1.0"
DEFAULT_TENSORBOARD_IMAGE = "kubelearn/tensorboard:0.1.0"


@dataclass(frozen=True)
class Settings:
    image: str = DEFAULT_IMAGE
    image_pull_policy: str | None = None
    tensorboard_image: str = DEFAULT_TENSORBOARD_IMAGE
    cluster_domain: str | None = None
    api_qps: float = 500.0
    api_burst: int = 1000
    create_concurrency: int = 64
    workers: int = 8
    resync_seconds: float = 10.0
    metrics_port: int = 9090
    podgroup_check_seconds: float = 30.0
    inline_cluster_max: int = 64
    progress_seconds: float = 5.0
    network_policy: NetworkPolicyConfig | None = None
    #: CurveZMQ on every experiment's ps wire (KUBELEARN_WIRE_ENCRYPTION=curve). Off by
    #: default: it costs more than 2x in ps throughput (README, bench/ps_throughput.py).
    encrypt_wire: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, default: float) -> float:
            value = env.get(name)
            if not value:
                return default
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None

        return cls(
            image=env.get("KUBELEARN_RUNNER_IMAGE") or DEFAULT_IMAGE,
            image_pull_policy=pull_policy(env.get("KUBELEARN_RUNNER_IMAGE_PULL_POLICY", "")),
            tensorboard_image=(env.get("KUBELEARN_TENSORBOARD_IMAGE")
                               or DEFAULT_TENSORBOARD_IMAGE),
            cluster_domain=env.get("KUBELEARN_CLUSTER_DOMAIN") or None,
            api_qps=number("KUBELEARN_API_QPS", cls.api_qps),
            api_burst=int(number("KUBELEARN_API_BURST", cls.api_burst)),
            create_concurrency=int(number("KUBELEARN_CREATE_CONCURRENCY",
                                          cls.create_concurrency)),
            workers=int(number("KUBELEARN_WORKERS", cls.workers)),
            resync_seconds=number("KUBELEARN_RESYNC_SECONDS", cls.resync_seconds),
            metrics_port=int(number("KUBELEARN_METRICS_PORT", cls.metrics_port)),
            podgroup_check_seconds=number("KUBELEARN_PODGROUP_CHECK_SECONDS",
                                          cls.podgroup_check_seconds),
            inline_cluster_max=int(number("KUBELEARN_INLINE_CLUSTER_MAX_REPLICAS",
                                          cls.inline_cluster_max)),
            progress_seconds=number("KUBELEARN_PROGRESS_SECONDS", cls.progress_seconds),
            network_policy=network_policy_config(env),
            encrypt_wire=wire_encryption(env.get("KUBELEARN_WIRE_ENCRYPTION", "")),
        )


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def pull_policy(value: str) -> str | None:
    """One of Kubernetes' image pull policies, or None (nothing set) for an empty value."""
    choice = value.strip()
    if not choice:
        return None
    if choice not in PULL_POLICIES:
        raise ValueError(f"KUBELEARN_RUNNER_IMAGE_PULL_POLICY must be one of "
                         f"{', '.join(PULL_POLICIES)}, got {value!r}")
    return choice


def wire_encryption(value: str) -> bool:
    """``curve`` turns CurveZMQ on, ``none`` (or nothing) leaves it off."""
    choice = value.strip().lower()
    if choice not in ("", "none", "curve"):
        raise ValueError(f"KUBELEARN_WIRE_ENCRYPTION must be curve or none, got {value!r}")
    return choice == "curve"
