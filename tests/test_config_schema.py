"""Schema checks of the config (pndecomp.config_schema): defaults filled as Snakemake's validate fills
them, and every violation named by its key path with what the schema allows there."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate as snakemake_validate

from pndecomp.config_schema import ConfigError, check, key_path, validate
from pndecomp.overrides import load_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
BASE = {"experiment": "x", "layers": [0, 2]}


def error_of(config: dict) -> str:
    with pytest.raises(ConfigError) as error:
        validate(copy.deepcopy(config), SCHEMA)
    return str(error.value)


def test_defaults_are_filled_as_snakemake_fills_them():
    for config in (yaml.safe_load((REPO / "config.yaml").read_text()), BASE,
                   {**BASE, "models": {"a": {"id": "embedded"}}, "predictors": ["attn1", "mlp_k4"]}):
        ours, theirs = copy.deepcopy(config), copy.deepcopy(config)
        validate(ours, SCHEMA)
        snakemake_validate(theirs, str(SCHEMA_PATH))
        assert ours == theirs


def test_filled_defaults_are_copies_of_the_schema():
    first, second = copy.deepcopy(BASE), copy.deepcopy(BASE)
    validate(first, SCHEMA)
    validate(second, SCHEMA)
    first["interventions"]["alphas"].append(5.0)
    assert second["interventions"]["alphas"] == [0.0, 0.1, 0.3]


def test_range_error_names_key_path_and_allowed_values():
    message = error_of({**BASE, "train": {"steps": 0}})
    assert "train.steps: 0 is less than the minimum of 1 (allowed: integer, ≥ 1)" in message


def test_enum_error_lists_the_values():
    message = error_of({**BASE, "extraction": {"dtype": "float8"}})
    assert "extraction.dtype: 'float8' is not one of" in message
    assert '(allowed: one of "auto", "float16", "bfloat16", "float32")' in message


def test_unknown_key_suggests_the_nearest_known_one():
    assert "unknown key `train.step`; did you mean `train.steps`?" in error_of({**BASE, "train": {"step": 10}})
    assert "unknown key `trian`; did you mean `train`?" in error_of({**BASE, "trian": {}})
    message = error_of({**BASE, "train": {"zzz": 1}})
    assert "unknown key `train.zzz`; known keys here: data, steps, batch_size" in message


def test_list_items_pattern_and_required_keys():
    assert ("layers[1]: 'last' is not valid under any of the given schemas (allowed: integer (≥ 0) or number "
            '(≥ 0, ≤ 1) or one of "embed", "final")') in error_of({**BASE, "layers": [0, "last"]})
    assert "device: 'gpu' does not match" in error_of({**BASE, "device": "gpu"})
    assert "`experiment` is required and not set" in error_of({"layers": [0]})
    assert "models: 'bad name' does not match" in error_of({**BASE, "models": {"bad name": {}}})


def test_every_violation_is_listed_at_once():
    message = error_of({**BASE, "train": {"steps": 0, "step": 3}, "seed": -1})
    for part in ("seed: -1 is less than the minimum of 0", "train.steps: 0", "unknown key `train.step`"):
        assert part in message, message


def test_check_types_command_line_strings_first():
    config = {**BASE, "train": {"steps": "5"}, "predictor": '{"d_head": 32}'}
    check(config, SCHEMA)
    assert config["train"]["steps"] == 5 and config["predictor"]["d_head"] == 32
    assert config["train"]["lr"] == 3.0e-4  # a default


def test_key_path():
    assert key_path(["probes", "caps", "domain", "probe_train"]) == "probes.caps.domain.probe_train"
    assert key_path(["layers", 1]) == "layers[1]"
    assert key_path([]) == ""
