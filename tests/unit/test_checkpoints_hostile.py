"""Checkpoints kubelearn did not write: an index entry outside model_dir, or a crafted
``.npz``, is a clear error naming the file, never a silent load or cast."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn import checkpoints


def _index(model_dir: Path, entry: str) -> None:
    (model_dir / "checkpoint").write_text(
        f'model_checkpoint_path: "{entry}"\nall_model_checkpoint_paths: "{entry}"\n')


@pytest.mark.parametrize("entry", ["../elsewhere/model.ckpt-35", "/tmp/model.ckpt-35",
                                   "sub/../../elsewhere/model.ckpt-35"])
def test_index_entries_outside_model_dir_are_refused(tmp_path, entry):
    model_dir, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    model_dir.mkdir()
    elsewhere.mkdir()
    checkpoints.save(str(elsewhere), {"w": np.ones(2, np.float32)}, 35)
    _index(model_dir, entry)
    with pytest.raises(checkpoints.CheckpointError, match="outside the model directory"):
        checkpoints.latest_checkpoint(str(model_dir))


def test_a_symlink_out_of_model_dir_is_refused(tmp_path):
    model_dir, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    model_dir.mkdir()
    checkpoints.save(str(elsewhere), {"w": np.ones(2, np.float32)}, 35)
    (model_dir / "link").symlink_to(elsewhere)
    _index(model_dir, "link/model.ckpt-35")
    with pytest.raises(checkpoints.CheckpointError, match="outside"):
        checkpoints.latest_checkpoint(str(model_dir))


def test_entries_inside_model_dir_still_load(tmp_path):
    path = checkpoints.save(str(tmp_path), {"w": np.ones(2, np.float32)}, 7)
    assert checkpoints.latest_checkpoint(str(tmp_path)) == path
    variables, step = checkpoints.load(path)
    assert step == 7 and variables["w"].dtype == np.float32


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"w": np.ones(2, np.complex64), "global_step": np.int64(1)}, "dtype complex64"),
        ({"w": np.array(["a", "b"]), "global_step": np.int64(1)}, "dtype <U1"),
        ({"w": np.ones(2, np.float16), "global_step": np.int64(1)}, "dtype float16"),
        ({"w": np.ones(2, np.float32), "global_step": np.int64(-3)}, "negative"),
        ({"w": np.ones(2, np.float32), "global_step": np.float64(3.5)}, "global_step"),
        ({"w": np.ones(2, np.float32), "global_step": np.arange(3)}, "global_step"),
        ({"w": np.ones(2, np.float32), "global_step": np.uint64(2**64 - 1)}, "dtype uint64"),
    ],
)
def test_crafted_npz_is_refused_naming_the_file(tmp_path, arrays, match):
    path = _npz(tmp_path / "model.ckpt-1.npz", **arrays)
    with pytest.raises(checkpoints.CheckpointError, match=match) as info:
        checkpoints.load(path)
    assert path in str(info.value)


def test_truncated_npz_is_refused_naming_the_file(tmp_path):
    path = _npz(tmp_path / "model.ckpt-1.npz", w=np.ones(1000, np.float32),
                global_step=np.int64(1))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.ckpt-1\.npz"):
        checkpoints.load(path)


def test_a_header_declaring_more_than_the_data_is_refused(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)})
    path = tmp_path / "model.ckpt-1.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("w.npy", buffer.getvalue() + b"\0" * 16)
    with pytest.raises(checkpoints.CheckpointError, match="declares"):
        checkpoints.load(str(path))


def test_a_checkpoint_linked_to_one_outside_model_dir_is_refused(tmp_path):
    model_dir, elsewhere = tmp_path / "model", tmp_path / "elsewhere"
    model_dir.mkdir()
    path = checkpoints.save(str(elsewhere), {"w": np.ones(2, np.float32)}, 35)
    (model_dir / "model.ckpt-35.npz").symlink_to(path + ".npz")
    _index(model_dir, "model.ckpt-35")
    with pytest.raises(checkpoints.CheckpointError, match="symbolic link out of the model"):
        checkpoints.latest_checkpoint(str(model_dir))
    with pytest.raises(checkpoints.CheckpointError, match="symbolic link"):
        checkpoints.load(str(model_dir / "model.ckpt-35"))


@pytest.mark.timeout(30)  # a FIFO opened for reading without O_NONBLOCK blocks: a hang
def test_a_fifo_as_index_or_checkpoint_is_refused_at_once(tmp_path):
    os.mkfifo(tmp_path / "checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="FIFO"):
        checkpoints.latest_checkpoint(str(tmp_path))
    os.mkfifo(tmp_path / "model.ckpt-3.npz")
    with pytest.raises(checkpoints.CheckpointError, match="FIFO"):
        checkpoints.load(str(tmp_path / "model.ckpt-3"))


@pytest.mark.parametrize(("data", "match"), [
    (b"\xff\xfe\0" + bytes(range(256)), "not UTF-8"),
    (b'model_checkpoint_path: "model.ckpt-1"\0\n', "NUL"),
    (b"#" * (checkpoints.MAX_INDEX_BYTES + 1), "larger than"),
])
def test_an_index_that_is_not_text_is_one_line_naming_it(tmp_path, data, match):
    (tmp_path / "checkpoint").write_bytes(data)
    with pytest.raises(checkpoints.CheckpointError, match=match) as info:
        checkpoints.latest_checkpoint(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "checkpoint") in message and "\n" not in message


@given(st.lists(st.binary(max_size=40) | st.sampled_from([
    b'all_model_checkpoint_paths: "model.ckpt-1"', b'model_checkpoint_path: "../x"',
    b'all_model_checkpoint_paths: "/etc/passwd"', b'all_model_checkpoint_paths: "sub/x-2"']),
    max_size=5))
def test_any_index_gives_paths_inside_model_dir_or_one_error(lines):
    with tempfile.TemporaryDirectory() as model_dir:
        checkpoints.save(model_dir, {"w": np.ones(1, np.float32)}, 1)
        Path(model_dir, "checkpoint").write_bytes(b"\n".join(lines))
        try:
            paths = checkpoints.checkpoint_paths(model_dir)
        except checkpoints.CheckpointError as exc:
            assert "\n" not in str(exc)
            return
        root = os.path.realpath(model_dir) + os.sep
        assert all(os.path.realpath(p + ".npz").startswith(root) for p in paths)
