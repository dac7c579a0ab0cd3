"""kopf handlers: thin adapters from Experiment and Sweep events to the controllers' work
queues.

Pods and services are watched by the controller's own label-filtered caches (informer.py).

All are coroutines: kopf runs plain functions in a thread pool, and the work queue belongs to
the event loop.

Run with ``python -m kubelearn_operator`` (__main__.py), as the image does.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from kubelearn_spec import names

from . import metrics
from .experiment_controller import Controller
from .kube import KubeClient
from .settings import Settings
from .sweep_controller import SweepController

_state: dict[str, Any] = {}


def _controller() -> Controller:
    return _state["controller"]


def _sweeps() -> SweepController:
    return _state["sweeps"]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    # React to an event at once rather than waiting 0.1 s for more of the same object's.
    settings.batching.batch_window = 0.001
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    config = Settings.from_env()
    metrics.serve(config.metrics_port)
    client = await KubeClient.connect(qps=config.api_qps, burst=config.api_burst,
                                      concurrency=config.create_concurrency)
    controller = Controller(config, client)
    sweeps = SweepController(controller)
    _state.update(controller=controller, sweeps=sweeps)
    await controller.start()
    await sweeps.start()
    logger.info("kubelearn operator started: image %s, %s QPS (burst %s), %s concurrent "
                "requests, resync every %ss", config.image, config.api_qps, config.api_burst,
                config.create_concurrency, config.resync_seconds)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    sweeps = _state.pop("sweeps", None)
    if sweeps is not None:
        await sweeps.stop()
    controller = _state.pop("controller", None)
    if controller is not None:
        await controller.stop()


@kopf.on.probe(id="controller")
async def probe(**_: Any) -> dict[str, Any]:
    return _controller().healthy()


@kopf.on.event(names.GROUP, names.VERSION, names.PLURAL)
async def experiment_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _controller().observe_experiment(event.get("type"), copy.deepcopy(dict(body)))


@kopf.on.event(names.GROUP, names.VERSION, names.SWEEP_PLURAL)
async def sweep_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    _sweeps().observe_sweep(event.get("type"), copy.deepcopy(dict(body)))
