"""Bounded, safe reading of outside input: files, YAML and JSON text.

Standard library and PyYAML only (no numpy), so every component that reads a manifest, a
run file or an environment variable can use it. What it guarantees:

* a path that is not a regular file (a directory, a device, a FIFO) is refused, and at most
  ``MAX_FILE_BYTES`` are read: the file is opened without blocking (a FIFO put where a file
  was expected can never hold a reader up) and checked on its descriptor before a byte is
  read; a symbolic link is refused where the caller asks for it (``follow_symlinks=False``);
* bytes that are not UTF-8 text are refused;
* YAML aliases are never expanded: the document's size counted with every alias expanded
  (its nodes, its scalars' bytes and its nesting depth) is checked on the node graph, where
  shared nodes cost nothing, before any Python object is built; a recursive alias is refused;
* YAML gives the values JSON has, as the API server receives them from kubectl: a timestamp
  stays the text it is, and ``!!binary``, ``!!set`` and ``!!omap`` are refused;
* JSON nesting is bounded before the parser sees the text.

Every refusal is an :class:`InputError` (a ``ValueError``) whose one-line message names
the source and never quotes what the input holds. :class:`Complaints` says once what is
wrong with a file that is read again and again.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
from collections.abc import Callable
from typing import Any

import yaml

MAX_FILE_BYTES = 4 << 20
MAX_DEPTH = 64
#: Nodes of a YAML document with every alias expanded.
MAX_NODES = 200_000
#: Bytes of a YAML document's scalars with every alias expanded.
MAX_EXPANDED_BYTES = 4 * MAX_FILE_BYTES
#: Tags whose values JSON (and so the API server) does not have.
NON_JSON_TAGS = ("tag:yaml.org,2002:binary", "tag:yaml.org,2002:set",
                 "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs")

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class InputError(ValueError):
    """Input refused before it is used; the message names its source."""


def read_text(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``, at most ``limit`` bytes."""
    return decode(read_bytes(path, limit), str(path))


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES, *,
               follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; every failure,
    a missing file included, is an InputError naming ``path``."""
    try:
        return read_regular(path, limit, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None


def open_regular(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> int:
    """A descriptor of the regular file ``path``, open for reading.

    What is not a regular file is refused on a ``stat`` before it is opened, and again on
    the descriptor (it may have been replaced in between); the open itself never blocks
    (``O_NONBLOCK``: a FIFO opens at once, and is then refused). ``follow_symlinks=False``
    refuses a symbolic link as the last part of ``path`` (``O_NOFOLLOW``).

    Raises:
      FileNotFoundError: when nothing is there (and other OSErrors of the open as they are).
      InputError: naming ``path``, for what is not a regular file.
    """
    check_regular(path, (os.stat if follow_symlinks else os.lstat)(path).st_mode)
    flags = (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
             | getattr(os, "O_CLOEXEC", 0) | (0 if follow_symlinks else os.O_NOFOLLOW))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise InputError(f"{path}: is a symbolic link") from None
        raise
    try:
        check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: str | os.PathLike[str], mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = ("a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode)
            else "a FIFO, not a regular file" if stat.S_ISFIFO(mode)
            else "not a regular file")
    raise InputError(f"{path}: is {kind}")


def read_regular(path: str | os.PathLike[str], limit: int | None = MAX_FILE_BYTES, *,
                 follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), at most ``limit``
    of them (None: the whole file).

    Raises:
      FileNotFoundError: when nothing is there (and other OSErrors as they are).
      InputError: naming ``path``, for what is not a regular file or holds more than
        ``limit`` bytes.
    """
    fd = open_regular(path, follow_symlinks=follow_symlinks)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(-1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        raise InputError(f"{path}: larger than {limit} bytes")
    return data


class Complaints:
    """Says once what is wrong with a source of outside input that is read again and again
    (a file polled every second): :meth:`bad` passes its message to ``say`` the first time,
    and again only after :meth:`good` said the source was fine (or gone) in between."""

    def __init__(self, say: Callable[[str], object]):
        self._say = say
        self._bad: set[str] = set()
        self._lock = threading.Lock()

    def bad(self, source: str, message: str) -> None:
        with self._lock:
            new = source not in self._bad
            self._bad.add(source)
        if new:
            self._say(message)

    def good(self, source: str) -> None:
        with self._lock:
            self._bad.discard(source)


def decode(data: bytes, source: str) -> str:
    """``data`` as text; refuses bytes that are not UTF-8 or hold NUL characters."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (byte {exc.start} is invalid)") from None
    if "\0" in text:
        raise InputError(f"{source}: binary data (a NUL byte), not text")
    return text


def check_json_depth(text: str | bytes, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuses JSON text nesting deeper than ``limit`` (brackets inside strings count too:
    a safe over-estimate no real input comes near)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    depth = 0
    for byte in data.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            raise InputError(f"{source}: nested deeper than {limit} levels")


def load_json(text: str | bytes, source: str, limit: int = MAX_DEPTH) -> Any:
    """Parses JSON with bounded nesting; InputError naming ``source`` for anything wrong."""
    check_json_depth(text, source, limit)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{source}: not valid JSON: {_one_line(exc)}") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


#: What a YAML error may quote of the text: a token's name (``'<block end>'``) or a character
#: or two (``'\t'``); anything longer in quotes is the input's own text.
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _unquoted(problem: str) -> str:
    def keep(match: re.Match[str]) -> str:
        text = match.group(1) if match.group(1) is not None else match.group(2)
        short = len(text) <= 2 or (text.startswith("<") and text.endswith(">")
                                   and text[1:-1].replace(" ", "").isalpha())
        return match.group(0) if short else "'...'"

    return _QUOTED.sub(keep, " ".join(problem.split()))[:200]


def yaml_error(source: str, exc: yaml.YAMLError) -> InputError:
    """What is wrong with YAML text, naming ``source`` and the position only: PyYAML's own
    message quotes the offending line (its snippet), which may be a secret when the file
    is not what it should be (a link to a credentials file)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _unquoted(exc.problem or exc.context or "")
        return InputError(f"{source}: not valid YAML{where}"
                          + (f": {problem}" if problem else ""))
    if isinstance(exc, yaml.reader.ReaderError):
        return InputError(f"{source}: not valid YAML: a character YAML does not allow at "
                          f"position {exc.position}")
    return InputError(f"{source}: not valid YAML ({type(exc).__name__})")


def _measure(node: yaml.Node, source: str) -> None:
    """Checks the expanded size and depth of a node graph without expanding it."""
    # id(node) -> (expanded nodes, expanded scalar bytes, depth)
    sizes: dict[int, tuple[int, int, int]] = {}
    active: set[int] = set()

    def visit(item: yaml.Node, level: int) -> tuple[int, int, int]:
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise InputError(f"{source}: recursive YAML alias")
        if level > MAX_DEPTH:
            raise InputError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        if item.tag in NON_JSON_TAGS:
            raise InputError(f"{source}: YAML tag !!{item.tag.rsplit(':', 1)[-1]} is not "
                             "supported: a manifest holds JSON values")
        active.add(key)
        count, size, depth = 1, 0, 1
        if isinstance(item, yaml.SequenceNode):
            children = list(item.value)
        elif isinstance(item, yaml.MappingNode):
            children = [part for pair in item.value for part in pair]
        else:
            children = []
            size = len(item.value)
        for child in children:
            child_count, child_size, child_depth = visit(child, level + 1)
            count += child_count
            size += child_size
            depth = max(depth, child_depth + 1)
            if count > MAX_NODES:
                raise InputError(f"{source}: more than {MAX_NODES} YAML nodes with aliases "
                                 f"expanded (an alias bomb?)")
            if size > MAX_EXPANDED_BYTES:
                raise InputError(f"{source}: more than {MAX_EXPANDED_BYTES} bytes of YAML "
                                 "values with aliases expanded (an alias bomb?)")
        active.discard(key)
        sizes[key] = (count, size, depth)
        return count, size, depth

    visit(node, 0)


class _Loader(yaml.SafeLoader):
    """SafeLoader that checks each document's node graph before constructing it, and keeps
    a timestamp as its text (kubectl sends it to the API server as a string)."""

    source = "<input>"

    def construct_yaml_timestamp(self, node: yaml.Node) -> Any:  # type: ignore[override]
        return self.construct_scalar(node)

    def get_data(self) -> Any:  # type: ignore[override]
        node = self.get_node()
        if node is None:
            return None
        _measure(node, self.source)
        return self.construct_document(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def load_yaml_all(text: str, source: str) -> list[Any]:
    """The documents of YAML ``text`` (None documents dropped), bounded as described above.

    Raises:
      InputError: naming ``source``, for invalid YAML or input beyond the bounds.
    """
    try:
        loader = _Loader(text)  # refuses unprintable characters at once
    except yaml.YAMLError as exc:
        raise yaml_error(source, exc) from None
    loader.source = source
    documents = []
    try:
        while loader.check_node():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as exc:
        raise yaml_error(source, exc) from None
    except RecursionError:
        raise InputError(f"{source}: nested too deeply") from None
    except ValueError as exc:  # a scalar no Python value holds: an integer of 5000 digits
        raise InputError(f"{source}: a value cannot be read: {_one_line(exc)}") from None
    finally:
        loader.dispose()
    return documents


def load_yaml(text: str, source: str) -> Any:
    """The single document of YAML ``text`` (None when empty), bounded like load_yaml_all."""
    documents = load_yaml_all(text, source)
    if len(documents) > 1:
        raise InputError(f"{source}: holds {len(documents)} YAML documents, expected one")
    return documents[0] if documents else None


def read_yaml_all(path: str | os.PathLike[str]) -> list[Any]:
    """The documents of the YAML file ``path``, read and parsed within the bounds."""
    return load_yaml_all(read_text(path), str(path))


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The single document of the YAML file ``path``, read and parsed within the bounds."""
    return load_yaml(read_text(path), str(path))
