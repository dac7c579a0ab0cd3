"""kopf handlers: thin adapters from watch events to the controller's work queue.

All are coroutines: kopf runs plain functions in a thread pool, and the work queue belongs to
the event loop.

Run with ``kopf run --standalone -m kubelearn_operator.handlers --all-namespaces`` (or
``python -m kubelearn_operator``, which also turns the liveness endpoint on).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from . import metrics, naming
from .controller import Controller
from .kube import KubeClient, load_connection
from .pods import PodState, controller_uid, pod_state
from .settings import Settings

_state: dict[str, Controller] = {}
_EXPERIMENT_PRESENT = {naming.LABEL_EXPERIMENT: kopf.PRESENT}


def _controller() -> Controller:
    return _state["controller"]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # Nothing of kopf's own goes into our objects' status (no progress, no diff-base there).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=naming.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP)
    settings.posting.level = logging.WARNING
    # React to an event at once rather than waiting 0.1 s for more of the same object's.
    settings.batching.batch_window = 0.01
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    config = Settings.from_env()
    metrics.serve(config.metrics_port)
    client = KubeClient(load_connection(), qps=config.api_qps, burst=config.api_burst,
                        concurrency=config.create_concurrency)
    controller = Controller(config, client)
    _state["controller"] = controller
    await controller.start()
    logger.info("kubelearn operator started: image %s, %s QPS (burst %s), %s concurrent "
                "requests, resync every %ss", config.image, config.api_qps, config.api_burst,
                config.create_concurrency, config.resync_seconds)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    controller = _state.pop("controller", None)
    if controller is not None:
        await controller.stop()


@kopf.on.probe(id="controller")
async def probe(**_: Any) -> dict[str, Any]:
    return _controller().healthy()


@kopf.index("pods", labels=_EXPERIMENT_PRESENT)
async def experiment_pods(body: kopf.Body, namespace: str, **_: Any) -> dict[Any, PodState] | None:
    state = pod_state(body)
    return {(namespace, state.experiment): state} if state else None


@kopf.index("services", labels=_EXPERIMENT_PRESENT)
async def experiment_services(body: kopf.Body, namespace: str, name: str, labels: kopf.Labels,
                        **_: Any) -> dict[Any, tuple[str, str]]:
    key = (namespace, labels[naming.LABEL_EXPERIMENT])
    return {key: (name, controller_uid(body.get("metadata") or {}))}


@kopf.on.event(naming.GROUP, naming.VERSION, naming.PLURAL)
async def experiment_event(event: kopf.RawEvent, body: kopf.Body, experiment_pods: kopf.Index,
                     experiment_services: kopf.Index, **_: Any) -> None:
    controller = _controller()
    controller.pods_index = experiment_pods
    controller.services_index = experiment_services
    controller.observe_experiment(event.get("type"), copy.deepcopy(dict(body)))


@kopf.on.event("pods", labels=_EXPERIMENT_PRESENT)
async def pod_event(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    _controller().queue.add((namespace, labels[naming.LABEL_EXPERIMENT]))


@kopf.on.event("services", labels=_EXPERIMENT_PRESENT)
async def service_event(namespace: str, labels: kopf.Labels, **_: Any) -> None:
    _controller().queue.add((namespace, labels[naming.LABEL_EXPERIMENT]))
