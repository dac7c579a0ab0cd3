"""Operator settings, read once from the environment at start-up (never inside builders).

Each setting is declared once, as a field of :class:`Settings` that names its variable, its
default (when the variable is unset or empty), its parser and what it does; ``SETTINGS`` lists
them, and ``Settings.from_env``, the list below and ``python -m kubelearn_operator --help``
come from there.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubelearn_spec import contract

from .builders import INLINE_CLUSTER_MAX_REPLICAS
from .netpol import (
    ENV_ENABLED,
    ENV_OPERATOR_NAMESPACE,
    ENV_OPERATOR_SELECTOR,
    NetworkPolicyConfig,
    network_policy_config,
)


@dataclass(frozen=True)
class Setting:
    """One setting: the :class:`Settings` field it fills, the variable it is read from, its
    value when that variable is unset or empty, the parser of any other value (raising a
    ValueError that names the variable) and what it does."""

    field: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    #: Further variables read with ``env`` into this one field: ``parse`` is then given the
    #: whole environment, and decides the default too.
    also: tuple[str, ...] = ()
    #: Whether an empty value is taken as it is rather than as the default.
    keep_empty: bool = False

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.env, *self.also)

    def read(self, env: Mapping[str, str]) -> Any:
        if self.also:
            return self.parse(env)
        value = env.get(self.env)
        if value is None or (not value and not self.keep_empty):
            return self.default
        return self.parse(value)

    def help(self) -> str:
        """The variable(s) and, indented below, what it does and its default."""
        default = "" if self.also else f" (default: {_shown(self.default)})"
        return "\n".join([", ".join(self.variables), textwrap.fill(
            self.doc + default, width=92, initial_indent="    ", subsequent_indent="    ")])


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _declare(env: str, default: Any, parse: Callable[[str], Any], doc: str, **more: Any) -> Any:
    """A :class:`Settings` field read from ``env`` (its ``Setting`` kept in the field's
    metadata; ``field`` is filled in by ``SETTINGS``)."""
    setting = Setting("", env, default, parse, doc, **more)
    return dataclasses.field(default=default, metadata={"setting": setting})


def _text(env: str, default: str | None, doc: str, **more: Any) -> Any:
    return _declare(env, default, str, doc, **more)


def _number(env: str, default: float, doc: str) -> Any:
    """A number; a whole one (a fraction cut off) when the default is an int."""
    whole = isinstance(default, int)

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{env} must be a number, got {value!r}") from None
        return int(number) if whole else number

    return _declare(env, default, parse, doc)


ENV_PULL_POLICY = "KUBELEARN_RUNNER_IMAGE_PULL_POLICY"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def pull_policy(value: str) -> str | None:
    """One of Kubernetes' image pull policies, or None (nothing set) for an empty value."""
    choice = value.strip()
    if not choice:
        return None
    if choice not in PULL_POLICIES:
        raise ValueError(f"{ENV_PULL_POLICY} must be one of "
                         f"{', '.join(PULL_POLICIES)}, got {value!r}")
    return choice


@dataclass(frozen=True)
class Settings:
    image: str = _text(
        "KUBELEARN_RUNNER_IMAGE", "kubelearn/runner:0.1.0", "image of replicas that name none")
    image_pull_policy: str | None = _declare(
        ENV_PULL_POLICY, None, pull_policy,
        f"its imagePullPolicy: {', '.join(PULL_POLICIES)}; none: Kubernetes' default")
    tensorboard_image: str = _text(
        "KUBELEARN_TENSORBOARD_IMAGE", "kubelearn/tensorboard:0.1.0",
        f"image of an experiment's TensorBoard, pulled per {ENV_PULL_POLICY} too")
    cluster_domain: str | None = _text(
        "KUBELEARN_CLUSTER_DOMAIN", None,
        "appended to replica addresses in TF_CONFIG; none: <svc>.<ns>.svc")
    api_qps: float = _number(
        "KUBELEARN_API_QPS", 500.0,
        "client-side rate limit of all API requests, per second; Events and clean-up go only "
        "when nothing else waits")
    api_burst: int = _number("KUBELEARN_API_BURST", 1000, "the burst of that rate limit")
    create_concurrency: int = _number(
        "KUBELEARN_CREATE_CONCURRENCY", 64, "API requests in flight at once")
    workers: int = _number("KUBELEARN_WORKERS", 8, "experiments reconciled at once")
    resync_seconds: float = _number(
        "KUBELEARN_RESYNC_SECONDS", 10.0, "every experiment is reconciled at least this often")
    metrics_port: int = _number(
        "KUBELEARN_METRICS_PORT", 9090, "Prometheus /metrics port, 0 to disable")
    podgroup_check_seconds: float = _number(
        "KUBELEARN_PODGROUP_CHECK_SECONDS", 30.0, "how long the PodGroup API's presence is cached")
    inline_cluster_max: int = _number(
        "KUBELEARN_INLINE_CLUSTER_MAX_REPLICAS", INLINE_CLUSTER_MAX_REPLICAS,
        "above this many replicas, TF_CONFIG's cluster comes from a ConfigMap")
    progress_seconds: float = _number(
        "KUBELEARN_PROGRESS_SECONDS", 5.0,
        "how often running chiefs' progress is polled into status; 0: off")
    network_policy: NetworkPolicyConfig | None = _declare(  # noqa: RUF009 (a field())
        ENV_ENABLED, None, network_policy_config,
        "a NetworkPolicy per experiment: on unless KUBELEARN_NETWORK_POLICY is false, once the "
        "operator's namespace and pod selector (k=v,k=v) are set, which the chart does (see "
        "netpol.py)",
        also=(ENV_OPERATOR_NAMESPACE, ENV_OPERATOR_SELECTOR))
    #: Off by default: CurveZMQ costs more than 2x in ps throughput (README,
    #: bench/ps_throughput.py).
    encrypt_wire: bool = _declare(
        contract.ENV_WIRE_ENCRYPTION, False, contract.wire_encryption,
        "curve: CurveZMQ on every experiment's ps wire; none: plaintext")
    liveness_endpoint: str = _text(
        "KUBELEARN_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz",
        "kopf's liveness endpoint, unless --liveness names one; empty: none", keep_empty=True)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(**{setting.field: setting.read(env) for setting in SETTINGS})


#: Every setting, in the order of :class:`Settings`' fields.
SETTINGS: tuple[Setting, ...] = tuple(
    dataclasses.replace(f.metadata["setting"], field=f.name)
    for f in dataclasses.fields(Settings))


def read(field: str, env: Mapping[str, str] | None = None) -> Any:
    """One setting alone, from ``env`` (default: the process's environment)."""
    setting = next(s for s in SETTINGS if s.field == field)
    return setting.read(os.environ if env is None else env)


def help_text() -> str:
    """Every setting's variable(s), what it does and its default."""
    return "\n".join(setting.help() for setting in SETTINGS)


__doc__ = f"{__doc__}\n{help_text()}\n"
