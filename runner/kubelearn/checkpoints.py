"""Checkpoints in ``model_dir``: ``model.ckpt-<step>.npz`` files plus a ``checkpoint`` index.

Every file is written to a temporary name and renamed into place, so a process killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. Arrays
are loaded with ``allow_pickle=False``: a checkpoint can never execute code.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from kubelearn import atomic

INDEX_NAME = "checkpoint"
PREFIX = "model.ckpt"
GLOBAL_STEP = "global_step"
_LINE_RE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths):\s*"(.*)"\s*$')
_STEP_RE = re.compile(r"-(\d+)(?:\.npz)?$")
#: What a checkpoint may hold: the dtypes the variables and optimiser slots have.
ALLOWED_DTYPES = frozenset({"float32", "float64", "int64"})
MAX_DIMS = 32
#: Bytes of all arrays of one checkpoint, as their headers declare them, checked before
#: any array is read (a crafted header cannot make the loader allocate more).
MAX_CHECKPOINT_BYTES = 1 << 36


class CheckpointError(ValueError):
    """A checkpoint file or index that kubelearn did not write; the message names it."""


def _inside(model_dir: str, entry: str, index: str) -> str:
    """The path of index ``entry``, which must resolve inside ``model_dir``."""
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(model_dir, entry))
    if os.path.isabs(entry) or not path.startswith(root.rstrip(os.sep) + os.sep):
        raise CheckpointError(f"{index}: entry {entry!r} is outside the model directory "
                              f"{model_dir}")
    return os.path.join(model_dir, entry)


def checkpoint_paths(model_dir: str | None) -> list[str]:
    """Paths of the checkpoints listed in the index, oldest first."""
    if not model_dir:
        return []
    index = os.path.join(model_dir, INDEX_NAME)
    try:
        with open(index, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    paths: list[str] = []
    for line in lines:
        match = _LINE_RE.fullmatch(line.strip())
        if match:
            path = _inside(model_dir, match.group(2), index)
            if match.group(1) == "all_model_checkpoint_paths":
                paths.append(path)
    return [p for p in paths if os.path.exists(p + ".npz")]


def latest_checkpoint(model_dir: str | None) -> str | None:
    """Path prefix (without ``.npz``) of the newest checkpoint, or None."""
    paths = checkpoint_paths(model_dir)
    return paths[-1] if paths else None


def step_of(path: str) -> int:
    """The global step encoded in a checkpoint path."""
    match = _STEP_RE.search(path)
    if not match:
        raise ValueError(f"Not a checkpoint path: {path}")
    return int(match.group(1))


def save(
    model_dir: str,
    variables: Mapping[str, np.ndarray],
    global_step: int,
    keep_checkpoint_max: int | None = 5,
) -> str:
    """Writes a checkpoint and updates the index; returns the checkpoint's path prefix."""
    os.makedirs(model_dir, exist_ok=True)
    prefix = os.path.join(model_dir, f"{PREFIX}-{int(global_step)}")
    arrays = {name: np.asarray(value) for name, value in variables.items()}
    arrays[GLOBAL_STEP] = np.asarray(int(global_step), dtype=np.int64)
    atomic.write(prefix + ".npz", lambda handle: np.savez(handle, **arrays))
    names = [os.path.basename(p) for p in checkpoint_paths(model_dir)]
    name = os.path.basename(prefix)
    names = [n for n in names if n != name] + [name]
    removed: list[str] = []
    if keep_checkpoint_max:
        removed = names[:-keep_checkpoint_max]
        names = names[-keep_checkpoint_max:]
    text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
        f'all_model_checkpoint_paths: "{n}"\n' for n in names
    )
    atomic.write_text(os.path.join(model_dir, INDEX_NAME), text)
    for old in removed:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(model_dir, old + ".npz"))
    return prefix


def _check_headers(file: str) -> None:
    """Checks every array's declared dtype and shape before a byte of data is read."""
    total = 0
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.name not in ALLOWED_DTYPES:
                raise CheckpointError(f"{file}: {name} has dtype {dtype}; a checkpoint holds "
                                      f"only {', '.join(sorted(ALLOWED_DTYPES))}")
            if len(shape) > MAX_DIMS:
                raise CheckpointError(f"{file}: {name} has {len(shape)} dimensions")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > info.file_size:
                raise CheckpointError(f"{file}: {name} declares {nbytes} bytes but holds "
                                      f"{info.file_size}")
            total += nbytes
    if total > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{file}: declares {total} bytes of arrays, more than "
                              f"{MAX_CHECKPOINT_BYTES}")


def _step(file: str, value: np.ndarray) -> int:
    if value.shape != () or value.dtype.name != "int64":
        raise CheckpointError(f"{file}: {GLOBAL_STEP} must be one int64, got "
                              f"{value.dtype} {list(value.shape)}")
    step = int(value)
    if step < 0:
        raise CheckpointError(f"{file}: {GLOBAL_STEP} is negative ({step})")
    return step


def load(path: str) -> tuple[dict[str, np.ndarray], int]:
    """Reads a checkpoint; returns its variables and global step.

    Raises:
      CheckpointError: naming the file, for anything kubelearn would not have written: a
        truncated or foreign file, a dtype other than float32/float64/int64, a declared
        shape its data does not fill, a global step that is not one non-negative int64.
    """
    file = path if path.endswith(".npz") else path + ".npz"
    try:
        _check_headers(file)
        with np.load(file, allow_pickle=False) as data:
            variables = {name: data[name] for name in data.files if name != GLOBAL_STEP}
            step = (_step(file, data[GLOBAL_STEP]) if GLOBAL_STEP in data.files
                    else step_of(path))
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
            zipfile.LargeZipFile, NotImplementedError) as exc:
        raise CheckpointError(f"{file}: not a readable checkpoint: {exc}") from None
    return variables, step


def latest_global_step(model_dir: str | None) -> int:
    """Global step of the newest checkpoint, 0 when there is none."""
    path = latest_checkpoint(model_dir)
    return step_of(path) if path else 0


DONE_NAME = "training_done"


def mark_training_done(model_dir: str, global_step: int) -> None:
    """Records that training finished at ``global_step`` (evaluators stop after it)."""
    os.makedirs(model_dir, exist_ok=True)
    atomic.write_text(os.path.join(model_dir, DONE_NAME), f"{int(global_step)}\n")


def training_done(model_dir: str | None, target_step: int | None = None) -> bool:
    """Whether training recorded its end, at ``target_step`` or later when one is given
    (a marker left by an earlier, shorter run does not count)."""
    if not model_dir:
        return False
    try:
        with open(os.path.join(model_dir, DONE_NAME), encoding="utf-8") as handle:
            step = int(handle.read().strip() or 0)
    except (OSError, ValueError):
        return False
    return target_step is None or step >= target_step
