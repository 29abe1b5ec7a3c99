"""The config checked against its JSON schema (workflow/schemas/config.schema.yaml): the schema's
defaults filled in, and every violation reported at once, each naming its key path and what the
schema allows there::

    train.steps: 0 is less than the minimum of 1 (allowed: integer, ≥ 1)
    unknown key `train.step`; did you mean `train.steps`?

Standard library, PyYAML and jsonschema only (no torch): Snakemake runs it while it builds the DAG.
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Iterator, Mapping, Sequence

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from .config_doc import allowed
from .overrides import coerce_to_schema


class ConfigError(ValueError):
    """A config value that cannot work; the message says which key, what value, and what would."""


def _filling_defaults(validator_class):
    """``validator_class`` that first gives an object each missing property that has a default (a copy),
    as ``snakemake.utils.validate`` does (https://python-jsonschema.readthedocs.io/en/latest/faq/)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_then_check})


_Validator = _filling_defaults(Draft202012Validator)


def check(config: dict, schema: Mapping) -> None:
    """Type ``--config`` strings by the schema (pndecomp.overrides), fill in its defaults and check
    ``config`` against it, in place; a ConfigError lists every violation."""
    config.update(coerce_to_schema(config, schema))
    validate(config, schema)


def validate(config: dict, schema: Mapping) -> None:
    """Fill in the schema's defaults, in place, and raise a ConfigError listing every violation."""
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda error: key_path(error.absolute_path))
    if errors:
        problems = dict.fromkeys(problem for error in errors for problem in _explain(error))
        raise ConfigError("the config does not fit workflow/schemas/config.schema.yaml (docs/config.md lists "
                          "every key):\n" + "\n".join(f"  {problem}" for problem in problems))


def key_path(path: Sequence) -> str:
    """A config location as users write it: ``train.steps``, ``layers[1]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _joined(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _explain(error: ValidationError) -> Iterator[str]:
    path = key_path(error.absolute_path)
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = list(error.schema.get("properties", {}))
        for key in error.instance:
            if key not in known:
                near = difflib.get_close_matches(str(key), known, n=1)
                hint = (f"did you mean `{_joined(path, near[0])}`?" if near
                        else f"known keys here: {', '.join(known)}")
                yield f"unknown key `{_joined(path, key)}`; {hint}"
    elif error.validator == "required":
        for key in error.validator_value:
            if key not in error.instance:
                yield f"`{_joined(path, key)}` is required and not set"
    else:
        yield f"{path or 'the config'}: {error.message} (allowed: {allowed(error.schema)})"
