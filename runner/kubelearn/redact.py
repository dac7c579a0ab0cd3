"""Credentials never printed: the user-info of every URL in what the CLI writes is removed.

A model directory may be given as ``s3://KEY:SECRET@bucket/prefix``; fsspec accepts that,
and every message that names the directory would show the secret. The ``kubelearn`` command
writes through :class:`RedactingStream`, so no message, log line or replica output it prints
(``kubelearn local`` relays its replicas' output) carries one.
"""

from __future__ import annotations

import re
from typing import Any, TextIO

#: A URL's scheme and "//", then user-info up to "@" (no "/", whitespace or quote in it).
_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"<>]+@")


def redact(text: str) -> str:
    """``text`` with every URL's user-info removed (``s3://k:s@b/p`` -> ``s3://b/p``)."""
    return _USERINFO.sub(r"\1", text) if "@" in text else text


class RedactingStream:
    """A text stream that writes to ``stream`` with :func:`redact` applied."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
