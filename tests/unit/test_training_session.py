"""The training session interface, the checkpoint schedule and the saving listeners."""

import dataclasses

import numpy as np
import pytest

from kubelearn import RunConfig
from kubelearn.estimators import LinearRegressor
from kubelearn.estimators.session import (
    CheckpointSaverListener,
    SaveTimer,
)
from tests.support import session_model


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _due_steps(timer, steps):
    due = []
    for step in steps:
        if timer.due(step):
            timer.saved(step)
            due.append(step)
    return due


def test_save_timer_by_steps_saves_at_the_first_step_then_every_n():
    assert _due_steps(SaveTimer(3, None), range(1, 9)) == [1, 4, 7]
    timer = SaveTimer(100, None)
    assert _due_steps(timer, [5, 60, 104, 105, 230, 290, 331]) == [5, 105, 230, 331]


def test_save_timer_by_seconds():
    clock = FakeClock()
    timer = SaveTimer(None, 10, clock=clock)
    due = []
    for step in range(1, 8):
        clock.now += 4
        if timer.due(step):
            timer.saved(step)
            due.append(step)
    assert due == [1, 4, 7]  # 12 s after the save at step 4


def test_save_timer_off_and_both_intervals():
    assert _due_steps(SaveTimer(None, None), range(1, 5)) == []
    with pytest.raises(ValueError, match="save_checkpoints_secs and save_checkpoints_steps"):
        SaveTimer(3, 4)


def test_fit_refuses_both_checkpoint_intervals(tmp_path):
    config = RunConfig(model_dir=str(tmp_path), save_checkpoints_steps=3,
                       save_checkpoints_secs=4)
    est = LinearRegressor(config=config)
    with pytest.raises(ValueError, match="save_checkpoints_secs and save_checkpoints_steps"):
        est.fit(x=np.ones((4, 2), np.float32), y=np.ones(4, np.float32), steps=2)


def test_local_session_calls_listeners_around_saves_and_at_the_end(tmp_path, monkeypatch):
    from kubelearn.estimators.local_session import LocalSession

    calls = []

    class Listener(CheckpointSaverListener):
        def before_save(self, session, global_step_value):
            calls.append(("before", global_step_value, session.last_checkpoint))

        def after_save(self, session, global_step_value):
            calls.append(("after", global_step_value, session.last_checkpoint))

        def end(self, session, global_step_value):
            calls.append(("end", global_step_value))

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(model_dir=str(tmp_path), save_checkpoints_steps=2)
    session = LocalSession(dataclasses.replace(session_model(config),
                                               saving_listeners=[Listener()]))
    assert session.start(3) == 0
    for _ in range(3):
        session.after_step(session.apply({"w": np.ones((3, 1))}))
    session.close(done=True)
    first = str(tmp_path / "model.ckpt-1")
    assert calls == [("before", 1, None), ("after", 1, first), ("before", 3, first),
                     ("after", 3, str(tmp_path / "model.ckpt-3")), ("end", 3)]


def test_listener_defaults_do_nothing():
    listener = CheckpointSaverListener()
    listener.begin()
    listener.before_save(None, 1)
    assert not listener.after_save(None, 1)
    listener.end(None, 1)


def test_save_timer_counts_from_a_save_outside_the_schedule():
    timer = SaveTimer(10, None)
    assert _due_steps(timer, [1, 5]) == [1]
    timer.saved(7)  # e.g. an explicit save
    assert not timer.due(7) and not timer.due(16)
    assert _due_steps(timer, [17, 20, 27]) == [17, 27]


def test_save_timer_by_seconds_never_saves_the_same_step_twice():
    clock = FakeClock()
    timer = SaveTimer(None, 10, clock=clock)
    assert timer.due(3)
    timer.saved(3)
    clock.now += 60
    assert not timer.due(3) and timer.due(4)


def test_local_session_stops_when_a_listener_asks(tmp_path, monkeypatch):
    from kubelearn.estimators.local_session import LocalSession

    class Stopper(CheckpointSaverListener):
        def after_save(self, session, global_step_value):
            return global_step_value >= 3

    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(model_dir=str(tmp_path), save_checkpoints_steps=2)
    session = LocalSession(dataclasses.replace(session_model(config), saving_listeners=[Stopper()]))
    session.start(3)
    requested = []
    for _ in range(4):
        session.after_step(session.apply({"w": np.ones((3, 1))}))
        requested.append(session.stop_requested)
    assert requested == [False, False, True, True]
