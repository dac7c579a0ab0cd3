"""The bound on what a parameter server holds, kept where ZeroMQ cannot keep it.

ZeroMQ drops a peer whose frame is too long (``MAXMSGSIZE``) and queues a bounded number of
messages per peer (``RCVHWM``), but it keeps every frame of a message until the last one
arrives, however many there are. A peer without the experiment's token never gets that far
(it is dropped at the handshake); one that holds it could still make the ps grow until the
kernel kills it, and the variables with it. So the ps measures the bytes allocated in its
process, and past its bound it drops every connection: ZeroMQ frees what they held, the
peers connect again and resend their requests (a client does after its request time-out),
and training goes on.

The bound is ``KUBELEARN_PS_MEMORY_LIMIT`` (bytes, or with a ``Ki``/``Mi``/``Gi`` suffix);
by default 90% of the container's memory limit, or half of the machine's memory when the
container has none: close to where the kernel would kill the ps, so that in a healthy job
it never acts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import time
from collections.abc import Callable, Mapping

from kubelearn_spec.contract import ENV_PS_MEMORY_LIMIT

#: Share of the container's memory limit (or, without one, of the machine's memory).
CONTAINER_SHARE = 0.9
MACHINE_SHARE = 0.5
#: How often the ps measures what it holds.
CHECK_SECS = 0.025
#: The smallest bound one may set: below it the ps could not hold its own runtime.
MIN_LIMIT = 64 << 20

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max",  # cgroup v2
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
_QUANTITY = re.compile(r"([0-9]{1,20})(Ki|Mi|Gi|Ti)?")
_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def parse_limit(text: str) -> int:
    """Bytes from ``text``: digits, optionally with a binary suffix (``512Mi``).

    Raises:
      ValueError: naming the variable, when it does not parse or is below MIN_LIMIT.
    """
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{ENV_PS_MEMORY_LIMIT} must be bytes, optionally with Ki, Mi, Gi "
                         f"or Ti, got {text[:40]!r}")
    value = int(match[1]) * _UNITS[match[2]]
    if value < MIN_LIMIT:
        raise ValueError(f"{ENV_PS_MEMORY_LIMIT} must be at least {MIN_LIMIT >> 20}Mi, got "
                         f"{text[:40]!r}")
    return value


def container_limit() -> int | None:
    """The memory limit of this process's cgroup, or None when it has none."""
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as handle:
                text = handle.read(64).strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 says "no limit" with a huge number
            return int(text)
        return None
    return None


def limit_from_env(environ: Mapping[str, str] | None = None) -> int:
    """The ps's bound: the variable when set, else a share of the container's limit, else of
    the machine's memory."""
    text = (os.environ if environ is None else environ).get(ENV_PS_MEMORY_LIMIT, "").strip()
    if text:
        return parse_limit(text)
    limit = container_limit()
    if limit is not None:
        return max(MIN_LIMIT, int(limit * CONTAINER_SHARE))
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(MIN_LIMIT, int(machine * MACHINE_SHARE))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None
    return libc


_LIBC = _libc()


def _resident() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def allocated() -> int:
    """Bytes the process holds: with glibc, what malloc has handed out and not got back
    (ZeroMQ's buffers, numpy's arrays), so memory freed but kept by the allocator does not
    count; elsewhere, the resident set."""
    if _LIBC is None:
        return _resident()
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


def give_back() -> None:
    """Returns freed memory to the system (so the container's usage drops as well)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class Watch:
    """Measures, at most every CHECK_SECS, whether the process holds more than ``limit``."""

    def __init__(self, limit: int, measure: Callable[[], int] = allocated,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._measure, self._clock = measure, clock
        self._next = 0.0

    def over(self) -> int | None:
        """The bytes held when they are over the limit (measured now), else None."""
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + CHECK_SECS
        held = self._measure()
        return held if held > self.limit else None
