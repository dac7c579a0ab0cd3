"""Checks a manifest against :data:`.schema.ROOT` (or the Sweep's
:data:`.sweep_schema.ROOT`) the way the API server checks the CRD.

The same keywords (type, required, enum, minimum, maximum, minLength, maxLength,
maxProperties, minItems, maxItems, items, list-type set and map, unknown fields) and the
same rules, each error naming the field path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from . import names
from .schema import ROOT, Rule
from .sweep_schema import ROOT as SWEEP_ROOT


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


def kind_of(value: Any) -> str:
    """The JSON type of a value: object, array, string, boolean, integer, number or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    for kind in ("object", "array", "string", "integer", "number"):
        if _TYPES[kind][1](value):
            return kind
    return type(value).__name__


def finite(value: Any) -> bool:
    """Whether a number is one JSON can carry: not NaN or infinite, and an integer no
    larger than a double holds (YAML has ``.inf`` and integers of any size; the API server
    takes neither)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


_KIND_NAMES = {"object": "an object", "array": "a list", "string": "a string",
               "boolean": "a boolean", "number": "a number", "null": "null"}


def _join(path: str, key: str) -> str:
    key = key or '""'  # an empty key still names a field
    return f"{path}.{key}" if path else key


class _Unknown:
    """The previous value of an object already stored, which the caller does not know."""

    def __repr__(self) -> str:
        return "UNKNOWN"


#: ``old`` for an object read back from the API server: its transition rules were checked
#: by the server when it was written, against the value it replaced.
UNKNOWN: Any = _Unknown()


def _old_child(old: Any, key: str | int) -> Any:
    if old is UNKNOWN:
        return UNKNOWN
    if isinstance(key, str) and isinstance(old, Mapping):
        return old.get(key)
    return None


def _rule(rule: Rule, value: Mapping[str, Any] | Any, path: str, at: str,
          old: Any = None) -> None:
    """A rule names its field relative to the node it is attached to (``at``, in the
    schema's own coordinates), as the CRD's ``fieldPath`` does: the error's path is that
    field under the value's ``path``, e.g. ``spec.parameters[1].max``."""
    if rule.transition:
        if old is UNKNOWN:
            return
        holds = rule.holds(value, old)
    else:
        holds = rule.holds(value)
    if not holds:
        relative = rule_field(rule, at)
        message = rule.describe(value) if rule.describe is not None else rule.message
        raise SpecError(path + relative if path else relative.lstrip("."), message)


def rule_field(rule: Rule, at: str) -> str:
    """``rule.path`` relative to ``at`` (``""`` when the rule names the node itself), as
    ``.field`` or ``[...]``: the CRD's fieldPath."""
    if rule.path == at:
        return ""
    if at and not (rule.path.startswith(at + ".") or rule.path.startswith(at + "[")):
        raise ValueError(f"rule for {rule.path} is attached at {at}")
    relative = rule.path[len(at):]
    return relative if at else "." + relative


def check(node: Mapping[str, Any], value: Any, path: str, at: str | None = None,
          old: Any = None) -> None:
    """Raises :class:`SpecError` for the first field of ``value`` that ``node`` refuses.

    ``old`` is the stored value it replaces, for transition rules: None on create,
    :data:`UNKNOWN` for an object read back from the API server.

    ``path`` is where ``value`` is (``spec.parameters[0]``), ``at`` where ``node`` is in
    the schema its rules were written for (``spec.parameters[*]``; default: ``path``). A
    node with ``_home`` is a schema reused elsewhere: its rules name fields as if it sat at
    ``_home`` (the Experiment's spec is ``spec`` inside a Sweep's ``spec.experiment`` too).
    """
    at = node.get("_home", path if at is None else at)
    kind = node.get("type")
    if kind is not None:
        described, fits = _TYPES[kind]
        if not fits(value):
            raise SpecError(path, f"must be {described}, got {_short(value)}")
    actual = kind_of(value)
    if actual in ("integer", "number") and not finite(value):
        raise SpecError(path, f"must be a finite number, got {_short(value)}")
    kinds = node.get("_kinds")
    if kinds is not None and actual.replace("integer", "number") not in kinds:
        *first, last = [_KIND_NAMES[k] for k in kinds]
        allowed = f"{', '.join(first)} or {last}" if first else last
        raise SpecError(path, f"must be {allowed}, not {_KIND_NAMES.get(actual, actual)}")
    # Each bound applies to the values it fits, as in the API server's schemas (an untyped
    # node may hold strings, numbers and lists).
    if "enum" in node and value not in node["enum"]:
        allowed = ", ".join(repr(v) if v == "" else v for v in node["enum"])
        raise SpecError(path, f"must be one of {allowed}; got {_short(value)}")
    if actual in ("integer", "number"):
        if "minimum" in node and value < node["minimum"]:
            raise SpecError(path, f"must be >= {node['minimum']}, got {value}")
        if "maximum" in node and value > node["maximum"]:
            raise SpecError(path, f"must be <= {node['maximum']}, got {value}")
    if actual == "string":
        if "minLength" in node and len(value) < node["minLength"]:
            raise SpecError(path, "must not be empty")
        if "maxLength" in node and len(value) > node["maxLength"]:
            raise SpecError(path, f"must be at most {node['maxLength']} characters long")
    declared = kind is not None or kinds is not None
    if actual == "object" and declared:
        _check_object(node, value, path, at, old)
    if actual == "array" and declared:
        _check_array(node, value, path, at, old)
    for rule in node.get("_rules", ()):
        _rule(rule, value, path, at, old)


def _short(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut: a value in an error may be as large as its input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_array(node: Mapping[str, Any], value: list[Any], path: str, at: str,
                 old: Any) -> None:
    if "minItems" in node and len(value) < node["minItems"]:
        raise SpecError(path, f"must have at least {node['minItems']} item(s)")
    if "maxItems" in node and len(value) > node["maxItems"]:
        raise SpecError(path, f"must have at most {node['maxItems']} items")
    list_type = node.get("x-kubernetes-list-type")
    keys = node.get("x-kubernetes-list-map-keys", ())
    for index, item in enumerate(value):
        check(node.get("items", {}), item, f"{path}[{index}]", f"{at}[*]",
              _old_child(old, index))
        if list_type == "set" and item in value[:index]:
            raise SpecError(f"{path}[{index}]", f"Duplicate value: {item!r}")
        if list_type == "map" and any(all(other.get(k) == item.get(k) for k in keys)
                                      for other in value[:index]):
            given = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            raise SpecError(f"{path}[{index}]", f"Duplicate value: {given}")


def _check_object(node: Mapping[str, Any], value: Mapping[str, Any], path: str,
                  at: str, old: Any) -> None:
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
                if "_keys" in node and (problem := node["_keys"](str(key))) is not None:
                    raise SpecError(_join(path, str(key)[:100]), problem)
                check(node["additionalProperties"], item, _join(path, str(key)),
                      _join(at, "*"), _old_child(old, key))
            elif not open_:
                known = ", ".join(properties)
                raise SpecError(_join(path, str(key)), f"unknown field (known: {known})")
            continue
        check(sub, item, _join(path, key), _join(at, key), _old_child(old, key))


def prune(node: Mapping[str, Any], value: Any) -> Any:
    """``value`` without the null fields the API server prunes (those the schema declares)."""
    if isinstance(value, list) and "items" in node:
        return [prune(node["items"], item) for item in value]
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


def check_experiment(body: Mapping[str, Any], old: Any = None) -> dict[str, Any]:
    """Checks an Experiment object (its ``metadata.name`` and ``spec``); returns it pruned.

    ``old``: the stored Experiment it replaces (None: a create; :data:`UNKNOWN`: the object
    is read back from the API server, which checked its transition rules)."""
    pruned = prune(ROOT, body)
    check(ROOT, pruned, "", old=old)
    return pruned


def check_sweep(body: Mapping[str, Any]) -> dict[str, Any]:
    """Checks a Sweep object (its ``metadata.name`` and ``spec``); returns it pruned."""
    pruned = prune(SWEEP_ROOT, body)
    check(SWEEP_ROOT, pruned, "")
    return pruned


def manifest_namespace(manifest: Any, kind: str) -> str:
    """Checks what a whole manifest (the YAML a user would ``kubectl apply``) must have
    before its schema: a mapping of ``kind`` with a name; returns its namespace.

    Raises:
        SpecError: naming the offending field.
    """
    if not isinstance(manifest, Mapping):
        article = "an" if kind[0] in "AEIOU" else "a"
        raise SpecError("manifest", f"must be a YAML mapping ({article} {kind} object)")
    for key, want in (("apiVersion", names.API_VERSION), ("kind", kind)):
        if manifest.get(key) != want:
            raise SpecError(key, f"must be {want}, got {manifest.get(key)!r}")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, Mapping):
        raise SpecError("metadata", "must be a mapping with a name")
    if "name" not in metadata:
        raise SpecError("metadata.name", "Required value")
    return str(metadata.get("namespace") or "default")

