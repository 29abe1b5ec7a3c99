"""docs/config.md, generated from the config schema: every key with its type, default, limits and description.

    python -m pndecomp.config_doc           # writes docs/config.md from workflow/schemas/config.schema.yaml
    python -m pndecomp.config_doc --check   # exits 1 when docs/config.md differs from what the schema gives

Pure standard library + PyYAML (no torch): the documentation test runs it in milliseconds. A key is a
dotted path of the schema's ``properties`` (``train.steps``); a mapping whose keys the user chooses
(``additionalProperties`` with ``properties`` of its own, e.g. ``models``) contributes a placeholder
component (``models.<name>.id``).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
OUTPUT = ROOT / "docs" / "config.md"

#: The placeholder of a user-named mapping's keys, by the mapping's dotted path; others get "<name>".
PLACEHOLDERS = {"probes.caps": "<task>"}


@dataclass(frozen=True)
class Key:
    """One schema key: its dotted path and its schema node."""

    path: str
    node: Mapping
    required: bool = False


def load_schema(path: str | Path = SCHEMA) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def schema_keys(node: Mapping, prefix: str = "") -> Iterator[Key]:
    """Every key below ``node`` in document order, parents before their children."""
    required = set(node.get("required", ()))
    for name, child in (node.get("properties") or {}).items():
        path = f"{prefix}{name}"
        yield Key(path, child, name in required)
        yield from schema_keys(child, f"{path}.")
        extra = child.get("additionalProperties")
        if isinstance(extra, Mapping) and extra.get("properties"):
            yield from schema_keys(extra, f"{path}.{PLACEHOLDERS.get(path, '<name>')}.")


def undocumented(schema: Mapping) -> list[str]:
    """Dotted paths of the keys without a non-empty description."""
    return [key.path for key in schema_keys(schema) if not str(key.node.get("description", "")).strip()]


def _value(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _type(node: Mapping) -> str:
    if "enum" in node:
        return "one of " + ", ".join(_value(v) for v in node["enum"])
    if "anyOf" in node:
        return " or ".join(_type(option) + (f" ({_limits(option)})" if _limits(option) else "")
                           for option in node["anyOf"])
    kinds = node.get("type", "any")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    text = " or ".join(kinds)
    items = node.get("items")
    if "array" in kinds and isinstance(items, Mapping):
        text += f" (items: {_type(items)}{_limits(items, prefix=', ')})"
    return text


def _limits(node: Mapping, prefix: str = "") -> str:
    """Minimum, maximum, pattern and size limits of a node, as one phrase."""
    parts = []
    for word, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if word in node:
            parts.append(f"{symbol} {_value(node[word])}")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    if "minItems" in node:
        parts.append(f"at least {node['minItems']} item{'s' if node['minItems'] != 1 else ''}")
    if node.get("uniqueItems"):
        parts.append("unique items")
    if "propertyNames" in node and "pattern" in node["propertyNames"]:
        parts.append(f"keys match `{node['propertyNames']['pattern']}`")
    return prefix + ", ".join(parts) if parts else ""


def allowed(node: Mapping) -> str:
    """What a schema node allows, as one phrase: its type and its limits (the type and limits columns)."""
    return ", ".join(part for part in (_type(node), _limits(node)) if part and part != "any") or "any value"


def _pipes(text: str) -> str:
    """A Markdown table cell of code and symbols: one line, pipes escaped (inside code spans too)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _cell(text: str) -> str:
    """A Markdown table cell of prose: as :func:`_pipes`, and <placeholders> shown, not read as HTML tags."""
    return _pipes(text).replace("<", "&lt;").replace(">", "&gt;")


def _default(key: Key) -> str:
    if "default" in key.node:
        return f"`{_value(key.node['default'])}`"
    return "required" if key.required else "—"


def render(schema: Mapping, schema_name: str = "workflow/schemas/config.schema.yaml") -> str:
    """The whole of docs/config.md: one table per top-level section."""
    keys = list(schema_keys(schema))
    lines = [
        "# Configuration keys",
        "",
        f"Generated from `{schema_name}` by `python -m pndecomp.config_doc`; do not edit by hand",
        "(`tests/test_docs.py` fails when this file and the schema differ). A config file states only what",
        "differs from the defaults below: `config.yaml`, the embedded default, is the config when no",
        "`--configfile` is given; a file given with `--configfile` starts from these defaults, or from the file",
        "it `extends`. `<name>` and `<task>` stand for keys you choose. [usage.md](usage.md#using-it)",
        "explains how configs compose and how to override a key on the command line; [method.md](method.md)",
        "what the keys mean for the method.",
        "",
        _cell(schema.get("description", "")),
        "",
    ]
    top = [key.path for key in keys if "." not in key.path]
    nested = {path for path in top if any(key.path.startswith(f"{path}.") for key in keys)}
    groups = {"": [key for key in keys if key.path in top and key.path not in nested]}
    for path in top:
        if path in nested:
            groups[path] = [key for key in keys if key.path == path or key.path.startswith(f"{path}.")]
    for section, members in groups.items():
        lines += [f"## `{section}`" if section else "## Top-level keys", ""]
        lines += ["| key | type | default | limits | description |", "| --- | --- | --- | --- | --- |"]
        for key in members:
            lines.append(f"| `{key.path}` | {_pipes(_type(key.node))} | {_pipes(_default(key))} | "
                         f"{_pipes(_limits(key.node))} | {_cell(key.node.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schema", default=str(SCHEMA), help="the config schema (default: %(default)s)")
    parser.add_argument("--output", default=str(OUTPUT), help="the Markdown file (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the file is stale")
    args = parser.parse_args(argv)
    schema = load_schema(args.schema)
    missing = undocumented(schema)
    if missing:
        print(f"schema keys without a description: {', '.join(missing)}", file=sys.stderr)
        return 1
    text = render(schema)
    output = Path(args.output)
    if args.check:
        if not output.exists() or output.read_text(encoding="utf-8") != text:
            print(f"{output} is stale: run python -m pndecomp.config_doc", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output} ({sum(1 for _ in schema_keys(schema))} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
