"""Which parameter server holds which variable: greedy by size, like TF's replica device
setter with its greedy load-balancing strategy. The global step lives on ps 0."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def assign(shapes: Mapping[str, tuple[int, ...]], num_ps: int, itemsize: int = 4
           ) -> dict[str, int]:
    """Each variable, in creation order, goes to the least loaded ps (lowest index on ties)."""
    if num_ps <= 0:
        raise ValueError("a parameter-server placement needs at least one ps task")
    load = [0] * num_ps
    placement: dict[str, int] = {}
    for name, shape in shapes.items():
        target = min(range(num_ps), key=lambda i: (load[i], i))
        placement[name] = target
        load[target] += int(np.prod(shape, dtype=np.int64)) * itemsize
    return placement


def shards(placement: Mapping[str, int], num_ps: int) -> list[list[str]]:
    out: list[list[str]] = [[] for _ in range(num_ps)]
    for name, ps in placement.items():
        out[ps].append(name)
    return out
