"""Finding the processes a test started, by their environment (the runner's processes carry
their experiment's model dir, role and so on)."""

from __future__ import annotations

import os
from pathlib import Path


def pids_with_env(*prefixes: str) -> list[int]:
    """Processes that have, for every prefix, an environment entry starting with it
    (e.g. ``KUBELEARN_MODEL_DIR=/tmp/kubelearn/<ns>/``)."""
    wanted = [p.encode() for p in prefixes]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if all(any(e.startswith(w) for e in environ) for w in wanted):
            found.append(int(entry))
    return found
