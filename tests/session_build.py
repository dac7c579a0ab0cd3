"""A build (Go binaries, images) run at most once per pytest session, right after collection
when the selected tests need it, so a cold build counts against no test's timeout, with its
progress on the terminal even under output capture."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Generic, TextIO, TypeVar

import pytest

T = TypeVar("T")


@contextlib.contextmanager
def terminal_output(config: pytest.Config) -> Iterator[None]:
    """Let the block write to the real stderr even while pytest captures output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


class BuiltOnce(Generic[T]):
    """What ``build(progress)`` returns, built once; a failed build is raised, with its
    output, to every test that asks, rather than built again by each."""

    def __init__(self, build: Callable[[TextIO], T]) -> None:
        self._build = build
        self._result: T | BaseException | None = None
        self._done = False

    def get(self, config: pytest.Config) -> T:
        if not self._done:
            with terminal_output(config):
                try:
                    self._result = self._build(sys.stderr)
                except Exception as exc:
                    self._result = exc
            self._done = True
        if isinstance(self._result, BaseException):
            raise self._result
        return self._result  # type: ignore[return-value]

    def before_tests(self, session: pytest.Session, fixture: str) -> None:
        """From ``pytest_collection_finish``: builds now when a selected test uses
        ``fixture``. A failure is reported by the fixture, per test."""
        if session.config.option.collectonly:
            return
        if any(fixture in getattr(item, "fixturenames", ()) for item in session.items):
            with contextlib.suppress(Exception):
                self.get(session.config)
