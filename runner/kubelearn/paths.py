"""Paths inside a base directory: what a command reads or writes under the directory it was
given stays there.

A name taken from a file (a sweep's name, a trial's, a run's id) must be one path component
of its grammar (:func:`component`) before it is joined to anything. A path under the base is
resolved (``os.path.realpath``: ``..`` and every symlink) and must still be inside the base's
own real path (:func:`resolve`), so a link out of the directory is refused, not followed. A
file is then opened ``O_NOFOLLOW | O_NONBLOCK`` (a link swapped in meanwhile is refused; a
FIFO does not block), must be a regular file, and is read within a byte limit. A file is
written by renaming a finished temporary file onto its name (:func:`replacing`), which
replaces a symlink there instead of writing through it.

Refusals are :class:`~kubelearn.bounded_input.InputError` (a ``ValueError``) naming the path;
a missing file stays ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

from kubelearn import bounded_input
from kubelearn.bounded_input import InputError


class OutsideBase(InputError):
    """A path that resolves outside the directory it must stay in."""


def component(name: object, pattern: str, what: str, max_length: int = 255) -> str:
    """``name`` when it is a single path component fully matching ``pattern`` (and at most
    ``max_length`` characters).

    Raises:
      InputError: naming ``what`` and the (shortened) name otherwise.
    """
    if (not isinstance(name, str) or not name or len(name) > max_length
            or name in (".", "..") or "/" in name or "\0" in name
            or (os.altsep and os.altsep in name) or not re.fullmatch(pattern, name)):
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise InputError(f"{what} {shown} is not a valid name (one path component "
                         f"matching {pattern}, at most {max_length} characters)")
    return name


def resolve(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> str:
    """The real path of ``path`` (relative to the working directory, as ``open`` takes it),
    which must be ``base`` or under it once both are resolved.

    Raises:
      OutsideBase: naming ``path`` and ``base``.
    """
    root = os.path.realpath(base)
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise OutsideBase(f"{os.fspath(path)}: leads outside {os.fspath(base)} (to {real}); "
                          "not followed")
    return real


def _open_regular(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> int:
    real = resolve(base, path)
    try:
        return bounded_input.open_regular(real, follow_symlinks=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{os.fspath(path)}: no such file") from None
    except InputError as exc:
        raise InputError(str(exc).replace(real, os.fspath(path), 1)) from None
    except OSError as exc:
        raise InputError(f"{os.fspath(path)}: cannot be read: {exc.strerror or exc}") from None


def read_bytes(base: str | os.PathLike[str], path: str | os.PathLike[str], limit: int
               ) -> bytes:
    """The bytes of the regular file ``path`` inside ``base``: at most ``limit`` bytes are
    held (``limit`` + 1 are read to tell a longer file).

    Raises:
      FileNotFoundError: when it is missing.
      InputError: outside ``base``, not a regular file, unreadable, or longer than ``limit``.
    """
    fd = _open_regular(base, path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise InputError(f"{os.fspath(path)}: larger than {limit} bytes")
    return data


def read_tail(base: str | os.PathLike[str], path: str | os.PathLike[str], nbytes: int
              ) -> tuple[int, bytes]:
    """``(size, the last nbytes bytes)`` of the regular file ``path`` inside ``base``: at
    most ``nbytes`` are read, however large the file.

    Raises:
      FileNotFoundError: when it is missing.
      InputError: outside ``base``, not a regular file, or unreadable.
    """
    fd = _open_regular(base, path)
    with os.fdopen(fd, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - nbytes))
        return size, handle.read(nbytes)


def is_dir(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory inside ``base`` (a link out of it is not).

    Raises:
      OutsideBase: when it resolves outside ``base``.
    """
    return os.path.isdir(resolve(base, path))


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], mode: int = 0o644) -> Iterator[str]:
    """A temporary name next to ``path`` to write the new file to; renamed onto ``path``
    when the block ends without an error (removed when it fails), so a symlink at ``path``
    is replaced, never written through, and a reader sees the old file or the new one."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                               prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
