"""Validation of what users hand to a Run: names, log types, metrics, hyper-parameters.

Every bad value raises ``ValueError`` naming the argument or key at fault, because a typo in
a training script should stop it at the first ``log`` call, not corrupt the record.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

LOG_TYPES = ("train", "val", "test")
LOG_TYPE_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validate": "val",
    "validation": "val",
    "evaluate": "val",
    "test": "test",
    "testing": "test",
}
CONFLICT_STRATEGIES = ("skip", "error", "new", "replace")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: Any) -> str:
    """A run name ends up in a directory name, so it is kept to a portable alphabet."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"name {name!r} is not a valid run name: use 1-128 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def check_log_type(type_: Any) -> str:
    key = type_.lower() if isinstance(type_, str) else type_
    if key not in LOG_TYPE_ALIASES:
        raise ValueError(
            f"unknown log type {type_!r}: expected one of {', '.join(LOG_TYPE_ALIASES)}"
        )
    return LOG_TYPE_ALIASES[key]


def check_conflict_strategy(strategy: Any) -> str:
    if strategy not in CONFLICT_STRATEGIES:
        raise ValueError(
            f"conflict_strategy {strategy!r} is not one of {', '.join(CONFLICT_STRATEGIES)}"
        )
    return strategy


def check_bool(arg: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{arg} must be true or false, got {value!r}")
    return bool(value)


def check_str(arg: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{arg} must be a string, got {value!r}")
    return value


def check_labels(labels: Any) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        raise ValueError(f"labels must be a list of strings, got {labels!r}")
    bad = [label for label in labels if not isinstance(label, str) or not label]
    if bad:
        raise ValueError(f"labels must be non-empty strings, got {bad!r}")
    return list(labels)


def check_step(arg: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{arg} must be an integer or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{arg} must not be negative, got {value!r}")
    return int(value)


#: The largest process id any platform kubelearn runs on hands out: Linux's PID_MAX_LIMIT
#: (``/proc/sys/kernel/pid_max`` can be raised to it, no further); far inside a C int.
PID_MAX = 1 << 22


def is_pid(value: Any) -> bool:
    """Whether ``value`` can be a process id: an int (not a bool) from 1 to ``PID_MAX``, so
    that ``os.kill`` can be asked about it (a pid of 2**66 would overflow a C int)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= PID_MAX


def as_number(value: Any) -> int | float | None:
    """The plain Python number ``value`` stands for, or None when it is not a real number."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return None


def check_metrics(metrics: Any) -> dict[str, int | float]:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping of names to numbers, got {metrics!r}")
    if not metrics:
        raise ValueError("metrics must hold at least one name")
    out: dict[str, int | float] = {}
    bad: list[str] = []
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metric name {key!r} must be a non-empty string")
        number = as_number(value)
        if number is None:
            bad.append(f"{key}={value!r}")
        else:
            out[key] = number
    if bad:
        raise ValueError(f"metrics that are not numbers: {', '.join(bad)}")
    return out


def plain_hparams(hparams: Any) -> dict[str, Any]:
    """Hyper-parameters as YAML-safe builtins; accepts a mapping or an object with values()."""
    if hparams is None:
        return {}
    if not isinstance(hparams, Mapping) and callable(getattr(hparams, "values", None)):
        hparams = hparams.values()
    if not isinstance(hparams, Mapping):
        raise ValueError(f"hparams must be a mapping of names to values, got {hparams!r}")
    return {_key(k, "hparams"): plain_value(v, f"hparams[{k!r}]") for k, v in hparams.items()}


def _key(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise ValueError(f"{where}: key {key!r} must be a string")
    return key


def plain_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return plain_value(value.tolist(), where)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {_key(k, where): plain_value(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ValueError(f"{where} = {value!r} cannot be stored: use numbers, strings, lists, dicts")
