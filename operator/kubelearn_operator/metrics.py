"""Prometheus metrics of the operator."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

REGISTRY = CollectorRegistry()

_COUNTERS = {
    name: Counter(f"kubelearn_experiments_{name}_total", f"Experiments {name}.",
                  ["namespace"], registry=REGISTRY)
    for name in ("created", "succeeded", "failed", "restarted", "deleted")
}
RECONCILE_SECONDS = Histogram(
    "kubelearn_reconcile_duration_seconds", "Time to reconcile one Experiment.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY)

#: Requests to the API server by method and answer, as client-go's rest_client_requests_total
#: counts them (code "<error>" when no answer came).
API_REQUESTS = Counter("kubelearn_api_requests_total", "Requests to the Kubernetes API server.",
                       ["method", "code"], registry=REGISTRY)


def count(name: str, namespace: str) -> None:
    _COUNTERS[name].labels(namespace=namespace).inc()


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 disables it)."""
    if port:
        start_http_server(port, addr="0.0.0.0", registry=REGISTRY)
