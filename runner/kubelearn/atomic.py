"""Files replaced atomically: written to a temporary name, synced, then renamed into place,
so a reader (or a process restarted after a kill) sees the old file or the new one, never a
torn one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Makes a rename in ``directory`` durable (best effort where directories can't sync)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write(path: str | os.PathLike[str], fill: Callable[[BinaryIO], object], *,
          durable: bool = True) -> None:
    """Replaces ``path`` with what ``fill`` writes into the binary handle it is given.

    ``durable=False`` skips the two fsyncs, for files that are rewritten often and whose
    loss in a machine crash costs nothing (progress reports): a reader still sees the old
    file or the new one, never a torn one, since the rename is what replaces it."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def write_text(path: str | os.PathLike[str], text: str, *, durable: bool = True) -> None:
    """Replaces ``path`` with ``text`` (UTF-8)."""
    data = text.encode("utf-8")
    write(path, lambda handle: handle.write(data), durable=durable)
