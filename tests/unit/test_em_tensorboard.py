"""EventWriter: real TensorBoard event files, read back with tensorboardX's protobufs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubelearn.em.tensorboard import EventWriter
from tests.support import read_events, scalars


def test_scalars_are_written_as_tensorboard_events(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        assert writer.enabled
        writer.scalar("loss", 2.5, 1)
        writer.scalar("loss", 1.25, 2)
        writer.scalars("eval", {"loss": 1.5, "accuracy": 0.75}, 2)
        writer.scalars("", {"global_step/sec": 10}, 2)
    events = read_events(tmp_path)
    assert events[0].file_version == "brain.Event:2"
    assert scalars(tmp_path) == [
        ("loss", 1, 2.5),
        ("loss", 2, 1.25),
        ("eval/loss", 2, 1.5),
        ("eval/accuracy", 2, 0.75),
        ("global_step/sec", 2, 10.0),
    ]


def test_train_and_eval_directories_share_tags(tmp_path: Path) -> None:
    train, evaluation = EventWriter(tmp_path), EventWriter(tmp_path / "eval")
    for step in (10, 20):
        train.scalar("loss", 1.0 / step, step)
    evaluation.scalar("loss", 0.2, 20)
    train.flush()
    evaluation.flush()
    assert [(t, s) for t, s, _ in scalars(tmp_path)] == [("loss", 10), ("loss", 20)]
    assert scalars(tmp_path / "eval") == [("loss", 20, pytest.approx(0.2))]
    train.close()
    evaluation.close()
    train.close()  # closing twice is harmless


def test_non_numbers_raise_value_error(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    with pytest.raises(ValueError, match="'loss'"):
        writer.scalar("loss", "high", 1)
    with pytest.raises(ValueError, match="acc=None"):
        writer.scalars("eval", {"loss": 1.0, "acc": None}, 1)
    writer.close()


def test_two_writers_in_one_directory_keep_their_own_files(tmp_path: Path) -> None:
    first, second = EventWriter(tmp_path), EventWriter(tmp_path)
    first.scalar("a", 1.0, 1)
    second.scalar("b", 2.0, 1)
    first.close()
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert sorted(scalars(tmp_path)) == [("a", 1, 1.0), ("b", 1, 2.0)]
