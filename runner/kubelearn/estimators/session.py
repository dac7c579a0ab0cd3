"""The training session: the interface between the Estimator's step loop and whatever owns
the variables (this process, or the parameter servers of a cluster).

The Estimator runs the same loop over any :class:`TrainingSession`; a session gets from the
Estimator only a :class:`SessionModel`, never the Estimator itself. Checkpoints are saved on
tf.contrib.learn's schedule (:class:`SaveTimer`), with :class:`CheckpointSaverListener`
callbacks around every save.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from kubelearn.estimators import optimizers
from kubelearn.run_config import RunConfig

log = logging.getLogger("kubelearn")

Restored = tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]


class CheckpointSaverListener:
    """Called around each checkpoint that training saves (TF's CheckpointSaverListener).

    ``session`` is the :class:`TrainingSession`; ``global_step_value`` the step saved.
    ``after_save`` may return True to ask training to stop.
    """

    def begin(self) -> None:
        """Called once before the first step."""

    def before_save(self, session: Any, global_step_value: int) -> None:
        """Called before each checkpoint is written."""

    def after_save(self, session: Any, global_step_value: int) -> bool | None:
        """Called after each checkpoint is written; True stops training."""
        return None

    def end(self, session: Any, global_step_value: int) -> None:
        """Called once at the end of training, after the last checkpoint."""


@dataclass(frozen=True)
class SessionModel:
    """What a training session needs from the Estimator, and nothing more."""

    model_dir: str
    config: RunConfig
    dtype: np.dtype
    shapes: Callable[[int], Mapping[str, tuple[int, ...]]]
    init_params: Callable[[int], dict[str, np.ndarray]]
    restore: Callable[[str | None, int], Restored | None]
    new_optimizer: Callable[[], optimizers.Optimizer]
    saving_listeners: Sequence[CheckpointSaverListener] = field(default_factory=tuple)


#: Makes the session that trains a model under a RunConfig: handed in by the package that
#: knows the cluster (``kubelearn.sessions``), so estimators never import the ps wire.
SessionFactory = Callable[[SessionModel, RunConfig], "TrainingSession"]
_session_factory: SessionFactory | None = None


def hand_in_session_factory(factory: SessionFactory) -> None:
    """Sets how every Estimator's ``fit`` gets its session (see :data:`SessionFactory`)."""
    global _session_factory
    _session_factory = factory


def training_session(model: SessionModel, config: RunConfig) -> TrainingSession:
    """The session for one ``fit``: the handed-in factory's, else a local one."""
    if _session_factory is not None:
        return _session_factory(model, config)
    from kubelearn.estimators.local_session import LocalSession

    return LocalSession(model)


@runtime_checkable
class TrainingSession(Protocol):
    """Owns the variables, the optimiser state and the global step for one ``fit``."""

    finished: bool
    """True once the job's training is over (set by the session, e.g. when the chief has
    marked it done or the parameter servers have stopped): the step loop stops."""
    target_step: int | None
    """The global step that training stops at, if known."""
    last_checkpoint: str | None
    """Path of the newest checkpoint this session knows of."""
    stop_requested: bool
    """True when a saving listener asked training to stop."""

    def start(self, input_dim: int) -> int:
        """Initialises or restores the variables; returns the global step."""

    def params(self) -> dict[str, np.ndarray]:
        """Current values of the model's variables."""

    def global_step(self) -> int:
        """The current global step."""

    def refresh(self) -> int:
        """Reads the variables and the global step again; returns the step. The step loop
        calls it once, after the hooks' ``begin``: a hook may wait there (for a global
        step, say), and the first gradient must come from the values of its own step, as
        a TF session reads them when the step runs, not from those read at ``start``."""

    def apply(self, grads: Mapping[str, np.ndarray]) -> int:
        """Applies one step's gradients; returns the new global step."""

    def after_step(self, step: int) -> None:
        """Saves a checkpoint when one is due."""

    def next_due(self) -> tuple[float, float]:
        """The global step and ``time.monotonic()`` time before which :meth:`after_step`
        has nothing to do: the step loop does not call it before then."""

    def save(self) -> None:
        """Saves a checkpoint of the current step, unless it already has one."""

    def close(self, done: bool = False) -> None:
        """Saves a last checkpoint and releases the session; ``done`` marks the job's
        training as finished."""


class SaveTimer:
    """When checkpoints are due: at the first step a session runs, then once
    ``every_steps`` steps or ``every_secs`` seconds have passed since the last save (the
    schedule of TF's CheckpointSaverHook).

    Raises:
      ValueError: both intervals are set.
    """

    def __init__(self, every_steps: int | None, every_secs: float | None,
                 clock: Callable[[], float] = time.monotonic):
        if every_steps and every_secs:
            raise ValueError(
                "Can not provide both save_checkpoints_secs and save_checkpoints_steps.")
        self.every_steps = every_steps or None
        self.every_secs = every_secs or None
        self._clock = clock
        self.last_step: int | None = None
        # When a save is next due, by count and by time: asked after every step, they are
        # compared with, not recomputed.
        self._next_step: float = 0 if self.enabled else math.inf
        self._deadline = clock() + self.every_secs if self.every_secs else math.inf

    @property
    def enabled(self) -> bool:
        return bool(self.every_steps or self.every_secs)

    def due(self, step: int) -> bool:
        if step >= self._next_step:
            return step != self.last_step
        return bool(self.every_secs and self._clock() >= self._deadline
                    and step != self.last_step)

    def next_due(self) -> tuple[float, float]:
        """The step and the ``time.monotonic()`` time before which :meth:`due` is False. A
        timer on another clock is asked at every step."""
        if self.every_secs and self._clock is not time.monotonic:
            return self._next_step, -math.inf
        return self._next_step, self._deadline

    def saved(self, step: int) -> None:
        self.last_step = step
        self._next_step = step + self.every_steps if self.every_steps else math.inf
        if self.every_secs:
            self._deadline = self._clock() + self.every_secs


class SavingListeners:
    """Calls the listeners of one session, in order, around each of its saves."""

    def __init__(self, listeners: Iterable[CheckpointSaverListener]):
        self._listeners = list(listeners)
        self.stop_requested = False

    def begin(self) -> None:
        for listener in self._listeners:
            listener.begin()

    def save(self, session: Any, step: int, write: Callable[[], None]) -> None:
        """Runs ``write`` (which saves the checkpoint of ``step``) between ``before_save``
        and ``after_save``."""
        for listener in self._listeners:
            listener.before_save(session, step)
        write()
        for listener in self._listeners:
            if listener.after_save(session, step):
                log.info("A CheckpointSaverListener requested that training be stopped. "
                         "listener: %s", listener)
                self.stop_requested = True

    def end(self, session: Any, step: int) -> None:
        for listener in self._listeners:
            listener.end(session, step)
