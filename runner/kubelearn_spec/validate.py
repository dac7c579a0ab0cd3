"""Checks a manifest against :data:`.schema.ROOT` the way the API server checks the CRD.

The same keywords (type, required, enum, minimum, maximum, minLength, maxLength,
maxProperties, minItems, maxItems, items, list-type set, unknown fields) and the same rules,
each error naming the field path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .schema import ROOT, Rule


class SpecError(ValueError):
    """An Experiment that cannot run; the message starts with the field path at fault."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


_TYPES = {
    "object": ("an object", lambda v: isinstance(v, Mapping)),
    "array": ("a list", lambda v: isinstance(v, list)),
    "string": ("a string", lambda v: isinstance(v, str)),
    "boolean": ("true or false", lambda v: isinstance(v, bool)),
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number",
               lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _rule(rule: Rule, value: Mapping[str, Any] | Any) -> None:
    if not rule.holds(value):
        raise SpecError(rule.path, rule.message)


def check(node: Mapping[str, Any], value: Any, path: str) -> None:
    """Raises :class:`SpecError` for the first field of ``value`` that ``node`` refuses."""
    kind = node.get("type")
    if kind is not None:
        described, fits = _TYPES[kind]
        if not fits(value):
            raise SpecError(path, f"must be {described}, got {value!r}")
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(repr(v) if v == "" else v for v in node["enum"])
        raise SpecError(path, f"must be one of {allowed}; got {value!r}")
    if "minimum" in node and value < node["minimum"]:
        raise SpecError(path, f"must be >= {node['minimum']}, got {value}")
    if "maximum" in node and value > node["maximum"]:
        raise SpecError(path, f"must be <= {node['maximum']}, got {value}")
    if "minLength" in node and len(value) < node["minLength"]:
        raise SpecError(path, "must not be empty")
    if "maxLength" in node and len(value) > node["maxLength"]:
        raise SpecError(path, f"must be at most {node['maxLength']} characters long")
    if kind == "object":
        _check_object(node, value, path)
    if kind == "array":
        if "minItems" in node and len(value) < node["minItems"]:
            raise SpecError(path, f"must have at least {node['minItems']} item(s)")
        if "maxItems" in node and len(value) > node["maxItems"]:
            raise SpecError(path, f"must have at most {node['maxItems']} items")
        for index, item in enumerate(value):
            check(node.get("items", {}), item, f"{path}[{index}]")
            if node.get("x-kubernetes-list-type") == "set" and item in value[:index]:
                raise SpecError(f"{path}[{index}]", f"Duplicate value: {item!r}")
    for rule in node.get("_rules", ()):
        _rule(rule, value)


def _check_object(node: Mapping[str, Any], value: Mapping[str, Any], path: str) -> None:
    if "maxProperties" in node and len(value) > node["maxProperties"]:
        raise SpecError(path, f"must have at most {node['maxProperties']} entries")
    for key in node.get("required", ()):
        if key not in value:
            raise SpecError(_join(path, key), "Required value")
    properties = node.get("properties", {})
    open_ = node.get("_open") or node.get("x-kubernetes-preserve-unknown-fields")
    for key, item in value.items():
        sub = properties.get(key)
        if sub is None:
            if "additionalProperties" in node:
                check(node["additionalProperties"], item, _join(path, str(key)))
            elif not open_:
                known = ", ".join(properties)
                raise SpecError(_join(path, str(key)), f"unknown field (known: {known})")
            continue
        check(sub, item, _join(path, key))


def prune(node: Mapping[str, Any], value: Any) -> Any:
    """``value`` without the null fields the API server prunes (those the schema declares)."""
    if not isinstance(value, Mapping) or node.get("x-kubernetes-preserve-unknown-fields"):
        return value
    properties = node.get("properties", {})
    extra = node.get("additionalProperties")
    result = {}
    for key, item in value.items():
        sub = properties.get(key, extra)
        if item is None and sub is not None:
            continue
        result[key] = prune(sub, item) if sub is not None else item
    return result


def check_experiment(body: Mapping[str, Any]) -> dict[str, Any]:
    """Checks an Experiment object (its ``metadata.name`` and ``spec``); returns it pruned."""
    pruned = prune(ROOT, body)
    check(ROOT, pruned, "")
    return pruned
