"""Command-line config overrides typed by the config schema, before the schema validates them.

``snakemake --config KEY=VALUE`` types only a top-level scalar (int, float, ``True``/``False``);
a dict or list value is read with YAML's BaseLoader, so every scalar inside it arrives as a
string: ``predictor='{"d_head": 32}'`` gives ``{"d_head": "32"}`` and ``layers='[0,7]'`` gives
``["0", "7"]``. :func:`coerce_to_schema` walks the config alongside the schema and converts such
strings to the type the schema declares there. A string that converts to no allowed type is left
as it is, so the validation that follows rejects it and names the key.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import yaml

_MISSING = object()
_NULLS = ("null", "Null", "NULL", "~")


def load_schema(path: str | Path) -> dict:
    """The JSON schema (written in YAML or JSON) at ``path``."""
    with open(path) as handle:  # libyaml's loader where PyYAML has it: ten times faster on the schema
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def coerce_to_schema(config: Mapping, schema: Mapping) -> dict:
    """A copy of ``config`` with string values converted to the types ``schema`` declares for them.

    Values that already have an allowed type (a string where strings are allowed, a string equal
    to a ``const``/``enum`` member) are kept unchanged, and so is a config without overrides; the
    one exception is YAML's null (``null``, ``~``) where the schema allows null, which becomes None.
    """
    return _coerce(config, schema)


def _branches(schema: Mapping) -> list[Mapping]:
    """``schema`` and, recursively, the alternatives of its ``anyOf``/``oneOf``."""
    found = [schema]
    for key in ("anyOf", "oneOf"):
        for branch in schema.get(key, []):
            if isinstance(branch, Mapping):
                found += _branches(branch)
    return found


def _allowed(branches: list[Mapping]) -> tuple[set[str], list]:
    """The type names the branches declare, and their ``const``/``enum`` values."""
    types: set[str] = set()
    literals: list = []
    for branch in branches:
        declared = branch.get("type", [])
        types.update([declared] if isinstance(declared, str) else declared)
        if "const" in branch:
            literals.append(branch["const"])
        literals += list(branch.get("enum", []))
    return types, literals


def _is_literal(value, literals: list) -> bool:
    # type() as well as ==, since True == 1 and 1 == 1.0 in Python but not in JSON schema.
    return any(type(value) is type(literal) and value == literal for literal in literals)


def _typed(value, types: set[str], literals: list):
    """``value`` as one of the allowed types, or _MISSING when it is none of them."""
    if _is_literal(value, literals):
        return value
    if isinstance(value, bool):
        return value if "boolean" in types else _MISSING
    if isinstance(value, int):
        return value if types & {"integer", "number"} else _MISSING
    if isinstance(value, float):
        if "integer" in types and value.is_integer():
            return int(value)
        return value if "number" in types and math.isfinite(value) else _MISSING
    if value is None:
        return value if "null" in types else _MISSING
    if isinstance(value, Mapping):
        return value if "object" in types else _MISSING
    if isinstance(value, list):
        return value if "array" in types else _MISSING
    return _MISSING


def _from_string(text: str, types: set[str], literals: list):
    """The string ``text`` parsed as YAML (JSON is YAML) into an allowed type, else ``text`` itself."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = _MISSING
    typed = _MISSING if parsed is _MISSING else _typed(parsed, types, literals)
    if typed is _MISSING and types & {"number", "integer"}:
        # PyYAML follows YAML 1.1, where "1e-3" (no dot) is a string rather than a float.
        try:
            typed = _typed(float(text), types, literals)
        except ValueError:
            pass
    return text if typed is _MISSING else typed


def _coerce(value, schema):
    if not isinstance(schema, Mapping):
        return value
    branches = _branches(schema)
    types, literals = _allowed(branches)
    if isinstance(value, str):
        if "null" in types and value in _NULLS:
            return None  # even where a string is allowed: Snakemake hands ``null`` over as "null"
        if "string" in types or _is_literal(value, literals) or not (types or literals):
            return value
        value = _from_string(value, types, literals)
        if isinstance(value, str):
            return value
    if isinstance(value, Mapping):
        return {key: _coerce(item, _property_schema(branches, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_coerce(item, _item_schema(branches, index)) for index, item in enumerate(value)]
    return value


def _property_schema(branches: list[Mapping], key: str):
    for branch in branches:
        if key in branch.get("properties", {}):
            return branch["properties"][key]
    for branch in branches:
        if isinstance(branch.get("additionalProperties"), Mapping):
            return branch["additionalProperties"]
    return None


def _item_schema(branches: list[Mapping], index: int):
    for branch in branches:
        prefix = branch.get("prefixItems", [])
        if index < len(prefix):
            return prefix[index]
        if isinstance(branch.get("items"), Mapping):
            return branch["items"]
    return None
