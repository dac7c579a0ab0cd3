"""Bounded, safe reading of outside input: files, YAML and JSON text.

Standard library and PyYAML only (no numpy), so every component that reads a manifest, a
run file or an environment variable can use it. What it guarantees:

* a path that is not a regular file (a directory, a device, a FIFO) is refused before it is
  opened for reading, and at most ``MAX_FILE_BYTES`` are read;
* bytes that are not UTF-8 text are refused;
* YAML aliases are never expanded: the document's size counted with every alias expanded
  (its nodes, its scalars' bytes and its nesting depth) is checked on the node graph, where
  shared nodes cost nothing, before any Python object is built; a recursive alias is refused;
* YAML gives the values JSON has, as the API server receives them from kubectl: a timestamp
  stays the text it is, and ``!!binary``, ``!!set`` and ``!!omap`` are refused;
* JSON nesting is bounded before the parser sees the text.

Every refusal is an :class:`InputError` (a ``ValueError``) whose one-line message names
the source.
"""

from __future__ import annotations

import json
import os
import stat
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


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            kind = "a directory" if os.path.isdir(path) else "not a regular file"
            raise InputError(f"{path}: is {kind}")
        with open(path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise InputError(f"{path}: is not a regular file")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InputError(f"{path}: larger than {limit} bytes")
    return data


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
        raise InputError(f"{source}: not valid YAML: {_one_line(exc)}") from None
    loader.source = source
    documents = []
    try:
        while loader.check_node():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML: {_one_line(exc)}") from None
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
