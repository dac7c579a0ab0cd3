"""The training session of a single process: the variables live here."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kubelearn import checkpoints
from kubelearn.estimators.session import SaveTimer, SavingListeners, SessionModel


class LocalSession:
    """Variables, optimiser state and global step held in this process.

    Restores from the latest checkpoint of ``model_dir`` on start and saves checkpoints on
    the schedule of the RunConfig, so a killed process loses at most the steps since the
    last checkpoint.
    """

    def __init__(self, model: SessionModel):
        self._model = model
        config = model.config
        self._timer = SaveTimer(config.save_checkpoints_steps, config.save_checkpoints_secs)
        self._save_due = self._timer.due  # asked after every step
        self._listeners = SavingListeners(model.saving_listeners)
        self._optimizer = model.new_optimizer()
        self._apply = self._optimizer.apply  # called at every step
        self._params: dict[str, np.ndarray] = {}
        self._step = 0
        self._saved_step = -1
        self.finished = False
        self.target_step: int | None = None
        self.last_checkpoint: str | None = checkpoints.latest_checkpoint(model.model_dir)
        # A plain attribute, read after every step; only a save (its listeners) sets it.
        self.stop_requested = False

    def start(self, input_dim: int) -> int:
        restored = self._model.restore(self.last_checkpoint, input_dim)
        if restored is None:
            self._params = self._model.init_params(input_dim)
            self._step = 0
        else:
            self._params, slots, self._step = restored
            self._optimizer.load_state(slots)
            self._saved_step = self._step
        self._listeners.begin()
        return self._step

    def params(self) -> dict[str, np.ndarray]:
        return self._params

    def global_step(self) -> int:
        return self._step

    def refresh(self) -> int:
        return self._step  # the variables are this process's own: nothing to read again

    def apply(self, grads: Mapping[str, np.ndarray]) -> int:
        self._apply(self._params, grads)
        self._step += 1
        return self._step

    def next_due(self) -> tuple[float, float]:
        return self._timer.next_due()

    def after_step(self, step: int) -> None:
        if self._save_due(step):
            self.save()

    def save(self) -> None:
        if self._step == self._saved_step:
            return
        step = self._step
        variables = {**self._params, **self._optimizer.state()}

        def write() -> None:
            self.last_checkpoint = checkpoints.save(
                self._model.model_dir, variables, step, self._model.config.keep_checkpoint_max)

        self._listeners.save(self, step, write)
        self.stop_requested = self._listeners.stop_requested
        self._saved_step = step
        self._timer.saved(step)

    def close(self, done: bool = False) -> None:
        self.save()
        self._listeners.end(self, self._step)
        if done:
            checkpoints.mark_training_done(self._model.model_dir, self._step)
