"""Hyper-parameters with the grammar and type rules of ``tf.contrib.training.HParams``.

Types are fixed when a hyper-parameter is added; later values are cast only where the
cast loses nothing (an int may set a float, never a float an int; a bool only from a bool).
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping
from typing import Any

# name, optional [index], '=', then a scalar or a bracketed list, then ',' or the end.
_PARAM_RE = re.compile(
    r"""
    (?P<name>[a-zA-Z][\w\.]*)
    (\[\s*(?P<index>\d+)\s*\])?
    \s*=\s*
    ((?P<val>[^,\[]*)
     |
     \[(?P<vals>[^\]]*)\])
    ($|,\s*)""",
    re.VERBOSE,
)


def _parse_fail(name: str, var_type: type, value: Any, values: str) -> None:
    raise ValueError(
        f"Could not parse hparam '{name}' of type '{var_type.__name__}' "
        f"with value '{value}' in {values}"
    )


def _reuse_fail(name: str, values: str) -> None:
    raise ValueError(f"Multiple assignments to variable '{name}' in {values}")


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_scalar(value: str, var_type: type) -> Any:
    if var_type is bool:
        return _parse_bool(value)
    if var_type is str:
        return value
    return var_type(value.strip())


def infer_value(text: str) -> Any:
    """Parses one literal when no type is known yet: int, float, bool, else str."""
    stripped = text.strip()
    for cast in (int, float):
        try:
            return cast(stripped)
        except ValueError:
            pass
    if stripped.lower() in ("true", "false"):
        return stripped.lower() == "true"
    return stripped


def parse_values(values: str, type_map: Mapping[str, type],
                 ignore_unknown: bool = False) -> dict[str, Any]:
    """Parses ``"a=1,b=[2,3],c=x"`` into a dict, casting each value to ``type_map[name]``.

    ``ignore_unknown=True`` skips names that ``type_map`` lacks instead of raising.

    Raises:
      ValueError: on malformed text, unknown names, values of the wrong type, a list
        assigned to a list index, or the same name assigned twice.
    """
    results: dict[str, Any] = {}
    indexed: dict[str, dict[int, Any]] = {}
    pos = 0
    while pos < len(values):
        match = _PARAM_RE.match(values, pos)
        if not match:
            raise ValueError(f"Malformed hyperparameter value: {values[pos:]}")
        pos = match.end()
        name = match.group("name")
        if name not in type_map:
            if ignore_unknown:
                continue
            raise ValueError(f"Unknown hyperparameter type for {name}")
        var_type = type_map[name]
        index = match.group("index")
        if match.group("vals") is not None:
            if index is not None:
                raise ValueError("Assignment of a list to a list index.")
            if name in results or name in indexed:
                _reuse_fail(name, values)
            items = [v for v in match.group("vals").split(",") if v.strip()]
            try:
                results[name] = [_parse_scalar(item.strip(), var_type) for item in items]
            except ValueError:
                _parse_fail(name, var_type, match.group("vals"), values)
            continue
        raw = match.group("val")
        try:
            parsed = _parse_scalar(raw, var_type)
        except ValueError:
            _parse_fail(name, var_type, raw, values)
        if index is not None:
            if name in results:
                _reuse_fail(name, values)
            slots = indexed.setdefault(name, {})
            if int(index) in slots:
                _reuse_fail(f"{name}[{index}]", values)
            slots[int(index)] = parsed
        else:
            if name in results or name in indexed:
                _reuse_fail(name, values)
            results[name] = parsed
    for name, slots in indexed.items():
        results[name] = slots
    return results


def _cast(name: str, param_type: type, value: Any) -> Any:
    fail = f"Could not cast hparam '{name}' of type '{param_type.__name__}' from value {value!r}"
    if isinstance(value, param_type) and not (param_type is int and isinstance(value, bool)):
        return value
    if param_type is type(None):
        return value
    if issubclass(param_type, (str, bytes)) and not isinstance(value, (str, bytes)):
        raise ValueError(fail)
    if issubclass(param_type, bool) != isinstance(value, bool):
        raise ValueError(fail)
    if issubclass(param_type, numbers.Integral) and not isinstance(value, numbers.Integral):
        raise ValueError(fail)
    if issubclass(param_type, numbers.Number) and not isinstance(value, numbers.Number):
        raise ValueError(fail)
    return param_type(value)


class HParams:
    """A set of named, typed hyper-parameters.

    ``HParams(learning_rate=0.1, hidden=[64, 32])`` gives attribute access
    (``hparams.learning_rate``); :meth:`parse` overrides values from a string.
    """

    _RESERVED = frozenset(
        {"add_hparam", "del_hparam", "set_hparam", "parse", "parse_json", "override_from_dict",
         "values", "to_json", "get", "from_text"}
    )

    def __init__(self, hparam_def: Any = None, model_structure: Any = None, **kwargs: Any):
        if hparam_def is not None:
            raise ValueError("hparam_def protos are not supported; pass keyword arguments")
        self._hparam_types: dict[str, tuple[type, bool]] = {}
        self._model_structure = model_structure
        for name, value in kwargs.items():
            self.add_hparam(name, value)

    @classmethod
    def from_text(cls, text: str) -> HParams:
        """Builds HParams from ``"a=1,b=[2,3]"`` or a JSON object, inferring the types."""
        stripped = text.strip()
        if not stripped:
            return cls()
        if stripped.startswith("{"):
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise ValueError(f"Malformed hyperparameter JSON: {exc}") from None
            if not isinstance(data, dict):
                raise ValueError("Hyperparameter JSON must be an object")
            return cls(**data)
        inferred: dict[str, Any] = {}
        pos = 0
        while pos < len(stripped):
            match = _PARAM_RE.match(stripped, pos)
            if not match or match.group("index") is not None:
                raise ValueError(f"Malformed hyperparameter value: {stripped[pos:]}")
            pos = match.end()
            name = match.group("name")
            if name in inferred:
                _reuse_fail(name, stripped)
            if match.group("vals") is not None:
                items = [v for v in match.group("vals").split(",") if v.strip()]
                value: Any = [infer_value(item) for item in items]
                if any(isinstance(v, float) for v in value):
                    value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                             for v in value]
                if len({type(v) for v in value}) > 1:
                    raise ValueError(f"Mixed types in list hyperparameter '{name}': {value}")
            else:
                value = infer_value(match.group("val"))
            inferred[name] = value
        return cls(**inferred)

    def add_hparam(self, name: str, value: Any) -> None:
        """Adds a new hyper-parameter; its type is fixed by ``value``."""
        if name.startswith("_") or name in self._RESERVED or getattr(self, name, None) is not None:
            raise ValueError(f"Hyperparameter name is reserved: {name}")
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"Multi-valued hyperparameters cannot be empty: {name}")
            self._hparam_types[name] = (type(value[0]), True)
            value = list(value)
        else:
            self._hparam_types[name] = (type(value), False)
        setattr(self, name, value)

    def set_hparam(self, name: str, value: Any) -> None:
        """Sets an existing hyper-parameter; an unknown name raises ``KeyError``."""
        param_type, is_list = self._hparam_types[name]
        if isinstance(value, (list, tuple)):
            if not is_list:
                raise ValueError(f"Must not pass a list for single-valued parameter: {name}")
            setattr(self, name, [_cast(name, param_type, v) for v in value])
        else:
            if is_list:
                raise ValueError(f"Must pass a list for multi-valued parameter: {name}.")
            setattr(self, name, _cast(name, param_type, value))

    def del_hparam(self, name: str) -> None:
        if name in self._hparam_types:
            delattr(self, name)
            del self._hparam_types[name]

    def parse(self, values: str) -> HParams:
        """Overrides values from ``"name=value,list=[1,2]"``; returns self.

        Raises:
          ValueError: on an unknown name, a value of the wrong type, malformed text or
            the same name assigned twice.
        """
        type_map = {name: t for name, (t, _) in self._hparam_types.items()}
        parsed = parse_values(values, type_map)
        for name, value in parsed.items():
            if isinstance(value, dict):  # indexed assignments into a list
                _, is_list = self._hparam_types[name]
                if not is_list:
                    raise ValueError(f"Must not index into single-valued parameter: {name}")
                current = list(getattr(self, name))
                for index, item in value.items():
                    if index >= len(current):
                        raise ValueError(f"Index {index} out of range for hparam '{name}'")
                    current[index] = item
                parsed[name] = current
        return self.override_from_dict(parsed)

    def override_from_dict(self, values_dict: Mapping[str, Any]) -> HParams:
        for name, value in values_dict.items():
            try:
                self.set_hparam(name, value)
            except KeyError:
                raise ValueError(f"Unknown hyperparameter: {name}") from None
        return self

    def set_model_structure(self, model_structure: Any) -> None:
        self._model_structure = model_structure

    def get_model_structure(self) -> Any:
        return self._model_structure

    def to_json(self, indent: int | None = None, separators: Any = None,
                sort_keys: bool = False) -> str:
        return json.dumps(self.values(), indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def parse_json(self, values_json: str) -> HParams:
        values_map = json.loads(values_json)
        if not isinstance(values_map, dict):
            raise ValueError("Hyperparameter JSON must be an object")
        return self.override_from_dict(values_map)

    def values(self) -> dict[str, Any]:
        """Returns the hyper-parameters as a plain dict."""
        return {name: getattr(self, name) for name in self._hparam_types}

    def get(self, key: str, default: Any = None) -> Any:
        """Returns ``key``'s value, or ``default`` when absent (type-checked like TF)."""
        if key in self._hparam_types:
            if default is not None:
                param_type, is_list = self._hparam_types[key]
                fail = (f"Hparam '{key}' of type '{param_type.__name__}' is incompatible "
                        f"with default={default!r}")
                if is_list != isinstance(default, (list, tuple)):
                    raise ValueError(fail)
                try:
                    _cast(key, param_type, default[0] if is_list and default else default)
                except ValueError:
                    raise ValueError(fail) from None
            return getattr(self, key)
        return default

    def __contains__(self, key: str) -> bool:
        return key in self._hparam_types

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HParams) and self.values() == other.values()

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        """``name=value,...``, in the grammar that :meth:`parse` reads back."""
        return ",".join(f"{name}={_format_value(value)}" for name, value in self.values().items())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({sorted(self.values().items())})"


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)
