"""EventWriter: real TensorBoard event files, read back with tensorboardX's protobufs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from kubelearn.em.tensorboard import EventWriter

RUNNER = str(Path(__file__).resolve().parents[2] / "runner")


def read_events(logdir: Path) -> list[event_pb2.Event]:
    """Parse TFRecord framing: u64 length, u32 crc, payload, u32 crc."""
    events = []
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(payload)
            events.append(event)
    return events


def scalars(logdir: Path) -> list[tuple[str, int, float]]:
    return [
        (value.tag, event.step, value.simple_value)
        for event in read_events(logdir)
        for value in event.summary.value
    ]


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


def test_without_tensorboardx_it_is_a_noop_with_one_warning(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import logging, sys
        sys.modules["tensorboardX"] = None  # makes the import fail
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        from kubelearn.em.tensorboard import EventWriter
        for _ in range(3):
            w = EventWriter({str(tmp_path)!r})
            w.scalar("loss", 1.0, 1); w.scalars("eval", {{"loss": 1.0}}, 1)
            w.flush(); w.close()
        print(w.enabled)
    """)
    env = dict(os.environ, PYTHONPATH=RUNNER)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "tensorboardX is not installed" in warnings[0]
    assert list(tmp_path.iterdir()) == []


def test_em_imports_without_optional_packages() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["tensorboardX"] = None
        sys.modules["matplotlib"] = None
        import kubelearn.em, kubelearn.em.cli, kubelearn.em.tensorboard
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=RUNNER)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"



def test_two_writers_in_one_directory_keep_their_own_files(tmp_path: Path) -> None:
    first, second = EventWriter(tmp_path), EventWriter(tmp_path)
    first.scalar("a", 1.0, 1)
    second.scalar("b", 2.0, 1)
    first.close()
    second.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    assert sorted(scalars(tmp_path)) == [("a", 1, 1.0), ("b", 1, 2.0)]


def test_events_survive_an_exit_without_close(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        from kubelearn.em.tensorboard import EventWriter
        w = EventWriter({str(tmp_path)!r}, flush_secs=3600)
        for step in range(100):
            w.scalar("loss", step / 100, step)
    """)
    env = dict(os.environ, PYTHONPATH=RUNNER)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [s for _, s, _ in scalars(tmp_path)] == list(range(100))
