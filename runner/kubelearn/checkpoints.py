"""Checkpoints in ``model_dir``: ``model.ckpt-<step>.npz`` files plus a ``checkpoint`` index.

Every file is written to a temporary name and renamed into place, so a process killed at
any moment leaves either the previous checkpoint or the new one, never a torn file. Arrays
are loaded with ``allow_pickle=False``: a checkpoint can never execute code.

What is read is checked as outside input (the model directory may be shared with other
pods): the index is UTF-8 text of at most MAX_INDEX_BYTES whose entries stay inside the
model directory, and a checkpoint is a regular file there, never a symbolic link (to a
checkpoint elsewhere, say) nor a FIFO. Anything else is a :class:`CheckpointError`, one
line naming the file.

``model_dir`` may also be a URL (``s3://bucket/prefix``, see :mod:`kubelearn.fs`): there
each file is one object written with one PUT, complete or absent. Either way a checkpoint
is written, and its write has returned, before the index naming it is written, and a
checkpoint is removed only after an index that no longer names it: a reader never finds the
index naming a checkpoint it cannot read.
"""

from __future__ import annotations

import io
import math
import os
import posixpath
import re
import zipfile
from collections.abc import Mapping
from typing import IO

import numpy as np

from kubelearn import bounded_input, fs

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
#: Bytes of the ``checkpoint`` index read (kubelearn writes a line per kept checkpoint).
MAX_INDEX_BYTES = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint file or index that kubelearn did not write; the message names it."""


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _inside(model_dir: str, entry: str, index: str) -> str:
    """The path of index ``entry``, which must resolve inside ``model_dir``."""
    if fs.is_url(model_dir):
        normal = posixpath.normpath(entry)
        if (entry.startswith("/") or "\\" in entry or fs.is_url(entry) or normal == "."
                or normal == ".." or normal.startswith("../")):
            raise CheckpointError(f"{index}: entry {entry!r} is outside the model directory "
                                  f"{model_dir}")
        return fs.join(model_dir, normal)
    root = os.path.realpath(model_dir).rstrip(os.sep) + os.sep
    path = os.path.realpath(os.path.join(model_dir, entry))
    if os.path.isabs(entry) or not path.startswith(root):
        raise CheckpointError(f"{index}: entry {entry!r} is outside the model directory "
                              f"{model_dir}")
    # The file itself too: a checkpoint that is a link to one elsewhere is outside.
    if not os.path.realpath(os.path.join(model_dir, entry + ".npz")).startswith(root):
        raise CheckpointError(f"{index}: entry {entry!r}: its .npz is a symbolic link out of "
                              f"the model directory {model_dir}")
    return os.path.join(model_dir, entry)


def checkpoint_paths(model_dir: str | None) -> list[str]:
    """Paths of the checkpoints listed in the index, oldest first."""
    if not model_dir:
        return []
    index = fs.join(model_dir, INDEX_NAME)
    try:
        lines = fs.read_text(index, MAX_INDEX_BYTES).splitlines()
    except FileNotFoundError:
        return []
    except ValueError as exc:  # not a regular file, too long, not text
        raise CheckpointError(f"not a checkpoint index: {_one_line(exc)}") from None
    paths: list[str] = []
    for line in lines:
        match = _LINE_RE.fullmatch(line.strip())
        if match:
            path = _inside(model_dir, match.group(2), index)
            if match.group(1) == "all_model_checkpoint_paths":
                paths.append(path)
    return [p for p in paths if fs.exists(p + ".npz")]


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
    """Writes a checkpoint and updates the index; returns the checkpoint's path prefix.

    The order is what readers rely on: the checkpoint (whole), then the index naming it,
    then the removal of the checkpoints the index no longer names.
    """
    fs.makedirs(model_dir)
    prefix = fs.join(model_dir, f"{PREFIX}-{int(global_step)}")
    arrays = {name: np.asarray(value) for name, value in variables.items()}
    arrays[GLOBAL_STEP] = np.asarray(int(global_step), dtype=np.int64)
    fs.write(prefix + ".npz", lambda handle: np.savez(handle, **arrays))
    names = [fs.basename(p) for p in checkpoint_paths(model_dir)]
    name = fs.basename(prefix)
    names = [n for n in names if n != name] + [name]
    removed: list[str] = []
    if keep_checkpoint_max:
        removed = names[:-keep_checkpoint_max]
        names = names[-keep_checkpoint_max:]
    text = f'model_checkpoint_path: "{names[-1]}"\n' + "".join(
        f'all_model_checkpoint_paths: "{n}"\n' for n in names
    )
    fs.write_text(fs.join(model_dir, INDEX_NAME), text)
    for old in removed:
        fs.remove(fs.join(model_dir, old + ".npz"))
    return prefix


def _check_headers(file: str, data: IO[bytes]) -> None:
    """Checks every array's declared dtype and shape before a byte of data is read.

    ``data`` is the open checkpoint ``file``."""
    total = 0
    with zipfile.ZipFile(data) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")[:100]
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
    source: IO[bytes]
    if fs.is_remote(file):
        # The object's bytes, read once into memory (an error of the store, such as a
        # missing object, is raised as it is): the header check and the load read the same
        # bytes, and np.load gets a seekable file.
        source = io.BytesIO(fs.read_bytes(file))
    else:
        try:
            fd = bounded_input.open_regular(fs.local_path(file), follow_symlinks=False)
        except bounded_input.InputError as exc:
            raise CheckpointError(f"{exc}: a checkpoint must be a regular file") from None
        source = os.fdopen(fd, "rb")
    with source:
        return _load(file, path, source)


def _load(file: str, path: str, source: IO[bytes]) -> tuple[dict[str, np.ndarray], int]:
    try:
        _check_headers(file, source)
        source.seek(0)
        with np.load(source, allow_pickle=False) as data:
            variables = {name: data[name] for name in data.files if name != GLOBAL_STEP}
            step = (_step(file, data[GLOBAL_STEP]) if GLOBAL_STEP in data.files
                    else step_of(path))
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise CheckpointError(f"{file}: not a readable checkpoint: {_one_line(exc)}"
                              ) from None
    except (ValueError, KeyError, NotImplementedError) as exc:
        # numpy's own messages quote the header they could not parse: the type alone.
        raise CheckpointError(f"{file}: not a readable checkpoint ({type(exc).__name__} "
                              f"reading an array header)") from None
    return variables, step


def latest_global_step(model_dir: str | None) -> int:
    """Global step of the newest checkpoint, 0 when there is none."""
    path = latest_checkpoint(model_dir)
    return step_of(path) if path else 0


DONE_NAME = "training_done"


def mark_training_done(model_dir: str, global_step: int) -> None:
    """Records that training finished at ``global_step`` (evaluators stop after it)."""
    fs.makedirs(model_dir)
    fs.write_text(fs.join(model_dir, DONE_NAME), f"{int(global_step)}\n")


def training_done(model_dir: str | None, target_step: int | None = None) -> bool:
    """Whether training recorded its end, at ``target_step`` or later when one is given
    (a marker left by an earlier, shorter run does not count)."""
    if not model_dir:
        return False
    try:
        step = int(fs.read_text(fs.join(model_dir, DONE_NAME), limit=1024).strip() or 0)
    except (OSError, ValueError):
        return False
    return target_step is None or step >= target_step
