"""Ends the runs of a process when the process ends.

An uncaught exception (``sys.excepthook``, or ``threading.excepthook`` for another thread)
marks every live run of this process Failed, recording the error; the hooks that were
installed before ours still run. At a normal interpreter exit (``atexit``) runs that were
never finished are finished as Complete. A process killed by a signal runs none of this and
its runs stay Running.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import traceback
from types import TracebackType
from typing import Protocol


class _Endable(Protocol):
    pid: int

    def finish(self) -> None: ...

    def _fail(self, error: str) -> None: ...


_live: dict[int, _Endable] = {}
_lock = threading.Lock()
_installed = False
_prev_excepthook = sys.excepthook
_prev_threading_excepthook = threading.excepthook


def register(run: _Endable) -> None:
    _install()
    with _lock:
        _live[id(run)] = run


def unregister(run: _Endable) -> None:
    with _lock:
        _live.pop(id(run), None)


def _ours() -> list[_Endable]:
    pid = os.getpid()
    with _lock:
        return [run for run in _live.values() if run.pid == pid]


def _describe(exc_type: type[BaseException], exc: BaseException | None, where: str) -> str:
    text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
    return f"{text} ({where})" if where else text


def _fail_all(error: str) -> None:
    for run in _ours():
        with contextlib.suppress(Exception):  # never hide the original error behind ours
            run._fail(error)


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    _fail_all(_describe(exc_type, exc, ""))
    _prev_excepthook(exc_type, exc, tb)


def _threading_excepthook(args: threading.ExceptHookArgs) -> None:
    if not issubclass(args.exc_type, SystemExit):
        name = args.thread.name if args.thread is not None else "a thread"
        _fail_all(_describe(args.exc_type, args.exc_value, f"in thread {name}"))
    _prev_threading_excepthook(args)


def _at_exit() -> None:
    for run in _ours():
        with contextlib.suppress(Exception):
            run.finish()


def _install() -> None:
    global _installed, _prev_excepthook, _prev_threading_excepthook
    with _lock:
        if _installed:
            return
        _prev_excepthook = sys.excepthook
        _prev_threading_excepthook = threading.excepthook
        sys.excepthook = _excepthook
        threading.excepthook = _threading_excepthook
        atexit.register(_at_exit)
        _installed = True
