"""Checkpoints kubelearn did not write: an index entry outside model_dir, or a crafted
``.npz``, is a clear error naming the file, never a silent load or cast."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

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
