"""The training session of a worker or chief in a cluster with parameter servers.

Every step pushes this task's gradients to the shards and gets the updated values back
in the same round trip (asynchronous SGD: the ps applies the optimiser). The chief
initialises the shards (from the latest checkpoint when there is one), re-initialises a
shard whose ps restarted, saves checkpoints from the ps values, and at the end of
training tells the ps tasks to stop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from kubelearn import checkpoints
from kubelearn.distributed import ENV_TOKEN, curve, placement
from kubelearn.distributed.client import PSClient, PSError, PSUnavailable
from kubelearn.estimators import optimizers
from kubelearn.estimators.session import SaveTimer, SavingListeners, SessionModel
from kubelearn.run_config import TaskType

log = logging.getLogger("kubelearn")

WAIT_POLL_SECS = 0.5


class ParameterServerSession:
    """Variables on the ps tasks of the cluster; see the module docstring."""

    def __init__(self, model: SessionModel):
        self._model = model
        self._config = model.config
        config = self._config
        self._addresses = config.cluster_spec.job_tasks(TaskType.PS)
        self._optimizer = model.new_optimizer()
        self._sync = getattr(self._optimizer, "replicas_to_aggregate", None)
        timeout = 120.0 if self._sync else 5.0
        model_dir = model.model_dir
        self._client = PSClient(
            self._addresses, os.environ.get(ENV_TOKEN, ""), request_timeout=timeout,
            give_up=lambda: checkpoints.training_done(model_dir, self.target_step),
            curve_key=curve.key_from_env())
        self._is_chief = config.is_chief
        # Named in each push, so a ps can say when a worker (one a scale-up added) joins.
        self._task = f"{config.task_type}:{config.task_id}"
        self._params: dict[str, np.ndarray] = {}
        self._placement: dict[str, int] = {}
        self._shards: list[list[str]] = []
        self._step = 0
        self._saved_step = -1
        self._timer = SaveTimer(config.save_checkpoints_steps, config.save_checkpoints_secs)
        self._listeners = SavingListeners(model.saving_listeners if self._is_chief else ())
        self.finished = False
        self.target_step: int | None = None  # the global step training stops at, if known
        self.last_checkpoint: str | None = checkpoints.latest_checkpoint(model.model_dir)

    @property
    def stop_requested(self) -> bool:
        return self._listeners.stop_requested

    # -- set-up ----------------------------------------------------------------------
    def start(self, input_dim: int) -> int:
        self._listeners.begin()
        if not self._is_chief and checkpoints.training_done(self._model.model_dir,
                                                           self.target_step):
            log.info("Training has already finished")
            self.finished = True
            return checkpoints.latest_global_step(self._model.model_dir)
        try:
            return self._start(input_dim)
        except PSUnavailable:
            return self._finish_if_done()

    def _finish_if_done(self) -> int:
        """The ps tasks are gone: fine when training has finished, an error otherwise."""
        if not checkpoints.training_done(self._model.model_dir, self.target_step):
            raise
        log.info("Training has finished (the parameter servers have stopped)")
        self.finished = True
        return max(self._step, checkpoints.latest_global_step(self._model.model_dir))

    def _start(self, input_dim: int) -> int:
        shapes = self._model.shapes(input_dim)
        num_ps = len(self._addresses)
        self._placement = placement.assign(shapes, num_ps, np.dtype(self._model.dtype).itemsize)
        self._shards = placement.shards(self._placement, num_ps)
        self._input_dim = input_dim
        if self._is_chief:
            self._initialize_shards(input_dim)
        else:
            self._wait_for_initialization()
        self._pull()
        # The step of the checkpoint on disk, not the ps's: a master restarted after the
        # workers trained on must still save what they trained.
        self._saved_step = (checkpoints.step_of(self.last_checkpoint) if self.last_checkpoint
                            else -1)
        return self._step

    def _initialize_shards(self, input_dim: int, only: set[int] | None = None) -> None:
        """Initialises the shards that are not yet, from the latest checkpoint if any."""
        statuses = self._client.call_many(
            {t: ("status", None, None) for t in range(len(self._addresses))})
        missing = {t for t, (h, _) in statuses.items() if not h.get("initialized")}
        if only is not None:
            missing &= only
        if any(h.get("done") for h, _ in statuses.values()):
            self.finished = True
            return
        if not missing:
            log.info("Parameter servers already hold the variables (global step %d)",
                     statuses[0][0].get("global_step", 0))
            return
        path = checkpoints.latest_checkpoint(self._model.model_dir)
        restored = self._model.restore(path, input_dim)
        if restored is None:
            values = self._model.init_params(input_dim)
            slots: dict[str, np.ndarray] = {}
            step = 0
            log.info("Initializing variables on ps %s", sorted(missing))
        else:
            values, slots, step = restored
            log.info("Restoring ps %s from %s (global step %d)", sorted(missing), path, step)
        if 0 not in missing and 0 in statuses:
            step = int(statuses[0][0].get("global_step", step))
        spec = optimizers.spec(self._optimizer)
        requests = {}
        for task in missing:
            names = self._shards[task]
            tensors = {n: values[n] for n in names}
            tensors.update({k: v for k, v in slots.items() if k.rsplit("/", 1)[0] in names})
            header = {"variables": names, "optimizer": spec, "global_step": step,
                      "sync_replicas": self._sync, "force": only is not None}
            requests[task] = ("init", header, tensors)
        self._client.call_many(requests)

    def _wait_for_initialization(self) -> None:
        logged = False
        while True:
            statuses = self._client.call_many(
                {t: ("status", None, None) for t in range(len(self._addresses))})
            if any(h.get("done") for h, _ in statuses.values()):
                self.finished = True
                return
            if all(h.get("initialized") for h, _ in statuses.values()):
                return
            if not logged:
                log.info("Waiting for the chief to initialize the variables")
                logged = True
            time.sleep(WAIT_POLL_SECS)

    # -- steps -----------------------------------------------------------------------
    def _absorb(self, replies: Mapping[int, tuple[dict[str, Any], dict[str, np.ndarray]]]
                ) -> None:
        for task, (header, tensors) in replies.items():
            if header.get("done"):
                self.finished = True
            for name, value in tensors.items():
                self._params[name] = value
            if task == 0 and "global_step" in header:
                self._step = int(header["global_step"])

    def _recover(self, error: PSError) -> None:
        """A shard lost its variables (its ps restarted): re-initialise it or wait."""
        if error.code != "uninitialized":
            raise error
        if self._is_chief:
            log.warning("ps %d restarted; restoring its shard from the latest checkpoint",
                        error.task)
            self._initialize_shards(self._input_dim, only={error.task})
        else:
            log.warning("ps %d restarted; waiting for the chief to restore it", error.task)
            self._wait_for_initialization()

    def _pull(self) -> None:
        if self.finished:
            return
        while True:
            try:
                self._absorb(self._client.call_many(
                    {t: ("pull", None, None) for t in range(len(self._addresses))}))
                return
            except PSError as exc:
                self._recover(exc)

    def params(self) -> dict[str, np.ndarray]:
        return self._params

    def global_step(self) -> int:
        if not self.finished:
            header, _ = self._client.call(0, "status")
            self._step = int(header.get("global_step", self._step))
        return self._step

    def refresh(self) -> int:
        """Pulls the variables and the global step: other tasks have trained since
        ``start``, and a gradient from those old values would undo their steps."""
        try:
            self._pull()
        except PSUnavailable:
            return self._finish_if_done()
        return self._step

    def apply(self, grads: Mapping[str, np.ndarray]) -> int:
        requests = {}
        for task, names in enumerate(self._shards):
            header = {"step": task == 0, "pulled_step": self._step, "task": self._task}
            requests[task] = ("push", header, {n: grads[n] for n in names})
        try:
            self._absorb(self._client.call_many(requests))
        except PSError as exc:
            self._recover(exc)
            self._pull()
        except PSUnavailable:
            return self._finish_if_done()
        return self._step

    # -- checkpoints and the end -----------------------------------------------------
    def next_due(self) -> tuple[float, float]:
        if not self._is_chief or self.finished:
            return math.inf, math.inf
        return self._timer.next_due()

    def after_step(self, step: int) -> None:
        if not self._is_chief or self.finished:
            return
        if self._timer.due(step):
            self.save()

    def save(self) -> None:
        try:
            replies = self._client.call_many(
                {t: ("snapshot", None, None) for t in range(len(self._addresses))})
        except PSError as exc:
            log.warning("Skipping a checkpoint: %s", exc)
            return
        variables: dict[str, np.ndarray] = {}
        for _, tensors in replies.values():
            variables.update(tensors)
        step = int(replies[0][0]["global_step"])
        if step == self._saved_step:
            return

        def write() -> None:
            self.last_checkpoint = checkpoints.save(self._model.model_dir, variables, step,
                                                    self._config.keep_checkpoint_max)

        self._listeners.save(self, step, write)
        self._saved_step = step
        self._timer.saved(step)

    def close(self, done: bool = False) -> None:
        if self._is_chief:
            self.save()
            self._listeners.end(self, self._saved_step)
            if done:
                checkpoints.mark_training_done(self._model.model_dir, self._saved_step)
                self.stop_servers()
        self._client.close()

    def stop_servers(self) -> None:
        """Tells every ps task to stop, so that the ps processes exit 0."""
        try:
            self._client.call_many({t: ("stop", None, None)
                                    for t in range(len(self._addresses))})
        except Exception as exc:  # the job is over either way
            log.warning("Could not stop every parameter server: %s", exc)
