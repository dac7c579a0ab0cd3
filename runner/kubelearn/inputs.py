"""Input functions: callables that return an iterator of ``(features, labels)`` batches.

An input function may also return a single ``(features, labels)`` pair, which is then
repeated for every step, the way a constant tensor would be in TensorFlow.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

Features = np.ndarray | Mapping[str, np.ndarray]
Batch = tuple[Features, np.ndarray | None]
InputFn = Callable[[], Any]


def _length(x: Features) -> int:
    if isinstance(x, Mapping):
        lengths = {name: len(value) for name, value in x.items()}
        if not lengths:
            raise ValueError("x must contain at least one feature")
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Length of tensors in x is mismatched: {lengths}")
        return next(iter(lengths.values()))
    return len(x)


def _take(x: Features, index: np.ndarray | slice) -> Features:
    if isinstance(x, Mapping):
        return {name: value[index] for name, value in x.items()}
    return x[index]


def numpy_input_fn(
    x: Features,
    y: np.ndarray | None = None,
    batch_size: int = 128,
    num_epochs: int | None = 1,
    shuffle: bool | None = None,
    queue_capacity: int = 1000,
    num_threads: int = 1,
    seed: int | None = None,
) -> Callable[[], Iterator[Batch]]:
    """Returns an input function that feeds ``x`` and ``y`` in batches.

    Args:
      x: an ndarray ``[examples, dim]`` or a dict of them.
      y: labels with as many rows as ``x``, or None.
      batch_size: examples per batch; the last batch of an epoch may be smaller.
      num_epochs: passes over the data; None repeats forever.
      shuffle: whether to shuffle each epoch; must be given explicitly.
      queue_capacity, num_threads: accepted for compatibility; batches are produced lazily.
      seed: seed of the shuffle.

    Raises:
      ValueError: when ``shuffle`` is not a bool, sizes mismatch, or counts are not positive.
    """
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be provided explicitly as a bool, got {shuffle!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if num_epochs is not None and num_epochs <= 0:
        raise ValueError(f"num_epochs must be > 0 or None, got {num_epochs}")
    n = _length(x)
    if y is not None and len(y) != n:
        raise ValueError(f"Length of tensors in x and y is mismatched: {n} != {len(y)}")
    if n == 0:
        raise ValueError("x has no examples")

    def input_fn() -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        epochs = itertools.count() if num_epochs is None else range(num_epochs)
        # Whether x is a dict is decided once, not per batch.
        take = functools.partial(_take, x) if isinstance(x, Mapping) else x.__getitem__
        for _ in epochs:
            if not shuffle:  # slices are views: no copy per batch
                for start in range(0, n, batch_size):
                    part = slice(start, start + batch_size)
                    yield take(part), (None if y is None else y[part])
                continue
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                yield take(index), (None if y is None else y[index])

    return input_fn


def batches(input_fn: InputFn) -> Iterator[Batch]:
    """Calls ``input_fn`` and returns an iterator over its batches."""
    result = input_fn()
    if isinstance(result, tuple) and len(result) == 2 and isinstance(
        result[0], (np.ndarray, Mapping)
    ):
        return itertools.repeat(result)
    try:
        return iter(result)
    except TypeError:
        raise TypeError(
            "input_fn must return an iterator of (features, labels) or one (features, labels) "
            f"pair, got {type(result).__name__}"
        ) from None
