"""Where the model directory lives: a local path, or a URL read and written through fsspec.

Every reader and writer of the model directory (checkpoints and their ``checkpoint`` index,
``training_done``, exports, evaluation results, ``progress.json``, the runs of
:mod:`kubelearn.em`, TensorBoard event files) goes through this module, with a *location*:
a path or a URL.

* A **path** keeps the local semantics: a file is replaced through a temporary file, fsync
  and ``os.replace`` (:mod:`kubelearn.atomic`), so a reader sees the old file or the new one.
  What is read there must be a regular file, opened without blocking (another pod sharing
  the directory may have put a FIFO or a device under a name kubelearn reads), and a line
  is appended only to a regular file, never through a symbolic link.
  A ``file://`` URL is the path it names (``file:///abs/path`` is ``/abs/path``, see
  :func:`local_path`): the commands turn one into its path as they read it.
* A **URL** (``s3://bucket/prefix``, or another protocol fsspec knows whose package is
  installed: ``gs://`` with gcsfs, ``memory://``, ...) is mapped to a filesystem with
  ``fsspec.core.url_to_fs``. There a whole object is written with one PUT (``pipe_file``;
  a large one as a multipart upload, which also appears only when complete), so a reader
  sees the whole object or none, never a torn one. Object stores have no directories, no
  rename and no append: :func:`makedirs` does nothing, :mod:`kubelearn.export` marks a
  finished export with an object written last, and :func:`append_line` rewrites the object.

s3fs takes its credentials and endpoint from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible store other than AWS,
``AWS_DEFAULT_REGION``), as a pod gets them from a Secret through ``envFrom``; botocore reads
``AWS_ENDPOINT_URL`` itself (``AWS_ENDPOINT_URL_S3`` for S3 alone). fsspec's own variables,
e.g. ``FSSPEC_S3_ENDPOINT_URL``, work too.

Errors of a remote filesystem other than ``OSError`` (a botocore error, a timeout) are
raised as ``OSError`` naming the location, so callers handle both kinds of storage alike.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from kubelearn import atomic, bounded_input
from kubelearn_spec.contract import model_dir_scheme
from kubelearn_spec.schema import CREDENTIALS_IN_URL, has_userinfo


class ModelDirError(ValueError):
    """A model directory URL that cannot be used here: an unknown scheme, or a known one
    whose filesystem package is not installed. The message is one line."""


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a path."""
    return model_dir_scheme(os.fspath(location)) is not None


def local_path(location: str) -> str:
    """The path a ``file://`` URL names on this machine: ``file:///abs/path`` and
    ``file://localhost/abs/path`` are ``/abs/path`` (the rest of the URL as it is, as
    fsspec takes it, without percent-decoding). Any other location is returned as it is.

    Raises:
      ModelDirError: for a ``file://`` URL naming another host, or no absolute path.
    """
    location = os.fspath(location)
    if model_dir_scheme(location) != "file":
        return location
    host, slash, path = location.split("://", 1)[1].partition("/")
    if host.lower() not in ("", "localhost") or not slash:
        raise ModelDirError("a file:// URL must name an absolute path on this machine, as "
                            "file:///abs/path does (no host)")
    return "/" + path


def _filesystem(location: str) -> tuple[Any, str]:
    """``(filesystem, path)`` of a URL; ``(None, path)`` for a path or a ``file://`` URL.

    Raises:
      ModelDirError: for an unknown scheme or a missing filesystem package.
    """
    location = os.fspath(location)
    scheme = model_dir_scheme(location)
    if scheme is None:
        return None, location
    if has_userinfo(location):
        raise ModelDirError(CREDENTIALS_IN_URL)
    if scheme == "file":
        return None, local_path(location)
    import fsspec.core
    from fsspec.implementations.local import LocalFileSystem

    try:
        filesystem, path = fsspec.core.url_to_fs(location)
    except ImportError as exc:
        package = _package_of(scheme)
        raise ModelDirError(
            f"the {scheme}:// filesystem needs the package {package}, which is not installed"
            f" ({_one_line(exc)})" if package else
            f"the {scheme}:// filesystem needs a package that is not installed "
            f"({_one_line(exc)})") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise ModelDirError(f"unknown URL scheme {scheme}://: a model directory is a path "
                                f"or a URL of a filesystem fsspec knows, such as "
                                f"s3://bucket/prefix") from None
        raise ModelDirError(f"cannot use {scheme}://: {_one_line(exc)}") from None
    except Exception as exc:  # an implementation that refuses its options
        raise ModelDirError(f"cannot use {scheme}://: {type(exc).__name__}: "
                            f"{_one_line(exc)}") from None
    if isinstance(filesystem, LocalFileSystem):
        return None, path
    return filesystem, path


def _package_of(scheme: str) -> str | None:
    from fsspec.registry import known_implementations

    spec = known_implementations.get(scheme) or {}
    module = str(spec.get("class", "")).split(".", 1)[0]
    return module or None


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def check(location: str, source: str) -> None:
    """Fails fast on a model directory this process cannot use; ``source`` names where it
    came from (``spec.modelDir``, ``--model-dir``) in the message.

    Raises:
      ModelDirError: one line, naming ``source`` and the location.
    """
    try:
        _filesystem(location)
    except ModelDirError as exc:
        raise ModelDirError(f"{source} {os.fspath(location)[:300]!r}: {exc}") from None


# Connection errors are retried this long before a replica gives up: the store may be a
# Service that starts with the experiment.
PROBE_PATIENCE_SECONDS = 60.0


def _malformed_request(exc: BaseException) -> bool:
    """Whether the store's client refused the request itself, before sending it: botocore's
    ParamValidationError (an invalid bucket name, say). No retry can make it valid."""
    botocore = sys.modules.get("botocore.exceptions")  # loaded if it raised this
    return botocore is not None and isinstance(exc, botocore.ParamValidationError)


def probe(location: str, source: str, patience: float = PROBE_PATIENCE_SECONDS) -> None:
    """Writes and removes a small object under a remote ``location``, so that a missing
    bucket, credentials that cannot write or a location the store's client refuses (an
    invalid bucket name) fail the replica at its start, in one line, rather than at its
    first checkpoint. Nothing for a path. A store that cannot be reached is tried again for
    ``patience`` seconds; a refusal is not.

    Raises:
      ModelDirError: one line, naming ``source``, the location and what the store said.
    """
    filesystem, path = _filesystem(location)
    if filesystem is None:
        return
    name = f"{path.rstrip('/')}/.kubelearn-probe-{os.getpid()}-{os.urandom(4).hex()}"
    where = f"{source} {os.fspath(location)[:300]!r}"
    deadline = time.monotonic() + patience
    while True:
        try:
            filesystem.pipe_file(name, b"")
            filesystem.rm_file(name)
            return
        except FileNotFoundError as exc:
            raise ModelDirError(f"{where}: the bucket does not exist ({_one_line(exc)})"
                                ) from None
        except PermissionError as exc:
            raise ModelDirError(f"{where}: access denied; check the credentials "
                                f"({_one_line(exc)})") from None
        except Exception as exc:
            if _malformed_request(exc):
                raise ModelDirError(f"{where}: not a valid location for this store "
                                    f"({_one_line(exc)})") from None
            if time.monotonic() >= deadline:
                raise ModelDirError(f"{where}: cannot write there: {type(exc).__name__}: "
                                    f"{_one_line(exc)}") from None
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def is_remote(location: str) -> bool:
    """Whether ``location`` is on a filesystem other than the local one (an object store)."""
    return _filesystem(location)[0] is not None


@contextlib.contextmanager
def _remote_errors(location: str) -> Iterator[None]:
    try:
        yield
    except OSError:
        raise
    except Exception as exc:
        raise OSError(f"{location}: {type(exc).__name__}: {_one_line(exc, 500)}") from exc


# -- names ---------------------------------------------------------------------------------
def join(base: str, *parts: str) -> str:
    """``base`` joined with ``parts``: ``os.path.join`` for a path, '/' for a URL."""
    base = os.fspath(base)
    if not is_url(base):
        return os.path.join(base, *parts)
    pieces = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([base.rstrip("/"), *pieces]) if pieces else base


def basename(location: str) -> str:
    location = os.fspath(location)
    if not is_url(location):
        return os.path.basename(location)
    return location.rstrip("/").rsplit("/", 1)[-1]


# -- reading ---------------------------------------------------------------------------------
def exists(location: str) -> bool:
    """Whether a file or directory (on an object store: an object or a prefix) is there."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        return os.path.exists(path)
    with _remote_errors(location):
        # A listing cached by an earlier call must not hide what another process wrote.
        filesystem.invalidate_cache(path)
        return bool(filesystem.exists(path))


def listdir(location: str) -> list[str]:
    """Names in a directory (on an object store: under a prefix), as ``os.listdir``.

    Raises:
      FileNotFoundError: when there is no such directory (no object under the prefix).
    """
    filesystem, path = _filesystem(location)
    if filesystem is None:
        return os.listdir(path)
    with _remote_errors(location):
        filesystem.invalidate_cache(path)
        entries = filesystem.ls(path, detail=False)
    own = path.rstrip("/")
    names = {str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries if str(e).rstrip("/") != own}
    return sorted(n for n in names if n)


def read_bytes(location: str, limit: int | None = None) -> bytes:
    """The whole file or object. A path must be a regular file (opened without blocking:
    a FIFO or a device is refused at once, see :func:`kubelearn.bounded_input.open_regular`).

    Raises:
      FileNotFoundError: when it is missing.
      ValueError: when it is longer than ``limit`` bytes, or a path is not a regular file
        (:class:`kubelearn.bounded_input.InputError`, naming it).
    """
    filesystem, path = _filesystem(location)
    if filesystem is None:
        return bounded_input.read_regular(path, limit)
    with _remote_errors(location):
        data = (filesystem.cat_file(path) if limit is None
                else filesystem.cat_file(path, start=0, end=limit + 1))
    if limit is not None and len(data) > limit:
        raise ValueError(f"{location}: longer than {limit} bytes")
    return bytes(data)


def read_text(location: str, limit: int | None = None) -> str:
    """The UTF-8 text of a file or object, as :func:`read_bytes` reads it.

    Raises:
      ValueError: also for bytes that are not UTF-8 text (naming the location).
    """
    return bounded_input.decode(read_bytes(location, limit), location)


def read_tail(location: str, nbytes: int) -> tuple[int, bytes]:
    """``(size, last nbytes bytes)`` of a file or object (a path: a regular file, as
    :func:`read_bytes` requires).

    Raises:
      FileNotFoundError: when it is missing.
      ValueError: when a path is not a regular file.
    """
    filesystem, path = _filesystem(location)
    if filesystem is None:
        with os.fdopen(bounded_input.open_regular(path), "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - nbytes))
            return size, handle.read(nbytes)
    with _remote_errors(location):
        filesystem.invalidate_cache(path)  # the size of now, not of an earlier listing
        size = int(filesystem.size(path))
        data = filesystem.cat_file(path, start=max(0, size - nbytes), end=size) if size else b""
    return size, bytes(data)


# -- writing ---------------------------------------------------------------------------------
def makedirs(location: str) -> None:
    """``os.makedirs(exist_ok=True)`` for a path; nothing on an object store, which has no
    directories (a prefix exists once an object is under it)."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        os.makedirs(path, exist_ok=True)


def write(location: str, fill: Callable[[BinaryIO], object], *, durable: bool = True
          ) -> None:
    """Replaces the file or object with what ``fill`` writes into a binary handle: through
    a temporary file and a rename for a path, one PUT of the whole object for a URL. A
    reader sees the old content or the new, never a part of it.

    ``durable=False`` lets a path skip its fsyncs (see :func:`kubelearn.atomic.write`); an
    object is written the same either way."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        atomic.write(path, fill, durable=durable)
        return
    buffer = io.BytesIO()
    fill(buffer)
    with _remote_errors(location):
        filesystem.pipe_file(path, buffer.getvalue())


def write_bytes(location: str, data: bytes, *, durable: bool = True) -> None:
    write(location, lambda handle: handle.write(data), durable=durable)


def write_text(location: str, text: str, *, durable: bool = True) -> None:
    write_bytes(location, text.encode("utf-8"), durable=durable)


def append_line(location: str, line: str) -> None:
    """Adds ``line`` (without its newline) at the end of a text file of lines (JSONL).

    A path is opened for appending: a regular file (created when missing), never a
    symbolic link, a FIFO or a device, which are refused with a ValueError
    (:class:`kubelearn.bounded_input.InputError`) naming the location.

    An object store cannot append, so the object is read, the line added, and the whole
    object written back with one PUT: a reader sees every line or all but the new one, never
    a torn line, and a writer that is killed loses at most the line it was adding. This
    costs a read and a write of the whole object per line, which suits what uses it (a line
    per evaluation). Each such file has one writer at a time (the chief writes ``eval/``,
    the evaluator ``eval_continuous/``); two processes appending to the same object at once
    could lose a line (the last writer wins). A file with a line per training step would
    instead be staged locally and uploaded whole (see :mod:`kubelearn.em.run`).
    """
    filesystem, path = _filesystem(location)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    if filesystem is None:
        # Never through a symbolic link, never into a FIFO or a device (which would block
        # the writer or take the line elsewhere): a regular file, or a new one.
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW
                 | getattr(os, "O_CLOEXEC", 0))
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # a symbolic link; a FIFO
                kind = "a symbolic link" if exc.errno == errno.ELOOP else "a FIFO"
                raise bounded_input.InputError(f"{location}: is {kind}, not a regular file"
                                               ) from None
            raise
        with os.fdopen(fd, "ab") as handle:
            bounded_input.check_regular(location, os.fstat(fd).st_mode)
            handle.write(data)
        return
    with _remote_errors(location):
        try:
            old = bytes(filesystem.cat_file(path))
        except FileNotFoundError:
            old = b""
        if old and not old.endswith(b"\n"):
            old += b"\n"  # a torn last line must not swallow the new one
        filesystem.pipe_file(path, old + data)


def upload_file(local_path: str, location: str) -> None:
    """Copies a local file to ``location`` whole (one PUT on an object store)."""
    with open(local_path, "rb") as handle:
        data = handle.read()
    write_bytes(location, data)


def download_tree(location: str, local_dir: str, max_bytes: int = 1 << 30) -> int:
    """Copies every object under a remote ``location`` to ``local_dir``, keeping the names
    below the prefix; returns how many files were copied. Keys are outside input: one with an
    empty, ``.`` or ``..`` part, or a NUL, is skipped, so nothing lands outside ``local_dir``.

    Raises:
      ValueError: when ``location`` is a path, or the objects add up to more than
        ``max_bytes``.
      FileNotFoundError: when nothing is under ``location``.
    """
    filesystem, path = _filesystem(location)
    if filesystem is None:
        raise ValueError(f"{location}: not a URL of a remote filesystem")
    root = path.rstrip("/") + "/"
    with _remote_errors(location):
        filesystem.invalidate_cache(path)
        found = filesystem.find(path.rstrip("/"), detail=True)
    files = {key: info for key, info in found.items()
             if str(key).startswith(root) and info.get("type") != "directory"}
    if not files:
        raise FileNotFoundError(f"{location}: nothing there")
    total = sum(int(info.get("size") or 0) for info in files.values())
    if total > max_bytes:
        raise ValueError(f"{location}: {total} bytes, more than the {max_bytes} allowed")
    copied = 0
    # The deepest keys first, so that a key that is also a prefix of others (S3 allows it)
    # finds its directory made and is skipped.
    for key in sorted(files, key=lambda k: (-str(k).count("/"), str(k))):
        parts = str(key)[len(root):].split("/")
        if any(part in ("", ".", "..") or "\0" in part for part in parts):
            continue
        dest = os.path.join(local_dir, *parts)
        if os.path.isdir(dest):  # a key that is also a prefix of others: keep the prefix
            continue
        with _remote_errors(location):
            data = filesystem.cat_file(str(key))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as handle:
            handle.write(data)
        copied += 1
    return copied


def remove(location: str) -> None:
    """Removes a file or object; nothing when it is not there."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    with _remote_errors(location), contextlib.suppress(FileNotFoundError):
        filesystem.rm_file(path)


def remove_tree(location: str) -> None:
    """Removes a directory (on an object store: every object under the prefix) and what is
    in it; nothing when it is not there."""
    filesystem, path = _filesystem(location)
    if filesystem is None:
        shutil.rmtree(path, ignore_errors=True)
        return
    with _remote_errors(location), contextlib.suppress(FileNotFoundError):
        filesystem.invalidate_cache(path)
        # The objects found, not rm(recursive=True), which removes a bucket given its root.
        found = filesystem.find(path.rstrip("/"))
        if found:
            filesystem.rm(found)
