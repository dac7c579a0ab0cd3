"""Crash-safe file primitives for run directories.

Metadata is rewritten whole through a temporary file and ``os.replace`` so a reader (or a
crash) only ever sees the old or the new version. Metric records are appended as one JSON
line per ``os.write`` call on an ``O_APPEND`` descriptor, so a killed process leaves at most
one torn last line, which :func:`read_jsonl` skips.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kubelearn import atomic, bounded_input

log = logging.getLogger(__name__)

# Non-finite floats are numbers but strict JSON cannot hold them: they are written as these
# strings and turned back into floats by the reader.
_NONFINITE_TO_STR = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_STR_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


fsync_dir = atomic.fsync_dir


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` so that no reader sees a partial file."""
    atomic.write_text(path, text)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )


def write_yaml(path: str | os.PathLike[str], data: Any) -> None:
    atomic_write_text(path, dump_yaml(data))


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The YAML document in ``path``, read within bounds (no alias expansion, a size
    limit). FileNotFoundError when it is missing; a ValueError naming the file for
    anything that is not one readable YAML document."""
    os.stat(path)  # a missing file stays FileNotFoundError
    return bounded_input.read_yaml(path)


def encode_number(value: float | int) -> float | int | str:
    """JSON-safe form of a metric value (non-finite floats become strings)."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NONFINITE_TO_STR[repr(value)]
    return value


def decode_number(value: Any) -> Any:
    if isinstance(value, str) and value in _STR_TO_NONFINITE:
        return _STR_TO_NONFINITE[value]
    return value


class JsonlAppender:
    """Appends JSON records to a file, one whole line per ``os.write``.

    ``fsync_secs`` is the durability policy: 0 syncs after every line, a positive number
    syncs at most that often (and on :meth:`sync`/:meth:`close`), a negative number only
    on :meth:`sync`/:meth:`close`. Lines reach the kernel at once either way, so a killed
    process loses nothing; the policy only matters when the machine itself goes down.
    """

    def __init__(self, path: str | os.PathLike[str], fsync_secs: float = 1.0) -> None:
        self.path = Path(path)
        existed = self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:
            fsync_dir(self.path.parent)
        self._fsync_secs = fsync_secs
        self._last_sync = time.monotonic()
        self._dirty = False
        # A torn line left by an earlier crash must not swallow the next record.
        if existed and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._write_all(b"\n")

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n"
        self._write_all(line.encode("utf-8"))
        self._dirty = True
        now = time.monotonic()
        if self._fsync_secs == 0 or (
            self._fsync_secs > 0 and now - self._last_sync >= self._fsync_secs
        ):
            self.sync()

    def sync(self) -> None:
        if self._fd >= 0 and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1


def _finite_only(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: the writer never writes such a literal
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _int_in_float_range(text: str) -> int:
    value = int(text)  # more than 4300 digits: ValueError (Python's own limit)
    if abs(value) > sys.float_info.max:  # 10**400: no float holds it, as 1e400
        raise ValueError(f"number {text[:40]}... is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not a metric value")


MAX_JSONL_BYTES = 256 << 20


def parse_jsonl_line(raw: bytes, source: str) -> dict[str, Any] | None:
    """The record on one JSONL line; None for a line that is not a JSON object, nests too
    deeply, or holds a number no float can hold (``1e400``, ``10**400``)."""
    try:
        bounded_input.check_json_depth(raw, source)
        record = json.loads(raw, parse_float=_finite_only, parse_int=_int_in_float_range,
                            parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def iter_jsonl(data: bytes, source: str, skipped: list[int] | None = None
               ) -> Iterator[dict[str, Any]]:
    """The records of the complete lines of ``data``, one line at a time (no list of all
    lines is made). The piece after the last newline is a torn record (a crash mid-write)
    and is left out. The numbers of unreadable lines are added to ``skipped``, or logged
    one by one when it is None."""
    start, number = 0, 0
    while (end := data.find(b"\n", start)) >= 0:
        raw = data[start:end]
        start, number = end + 1, number + 1
        if not raw.strip():
            continue
        record = parse_jsonl_line(raw, f"{source}:{number}")
        if record is not None:
            yield record
        elif skipped is not None:
            skipped.append(number)
        else:
            log.warning("%s:%d: skipping an unreadable line", source, number)
    if data[start:].strip():
        log.debug("%s: skipping an incomplete last line", source)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file (at most ``MAX_JSONL_BYTES``), skipping a torn or
    unreadable line as :func:`iter_jsonl` does."""
    yield from iter_jsonl(bounded_input.read_bytes(path, MAX_JSONL_BYTES), str(path))
