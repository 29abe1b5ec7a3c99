"""`--config KEY=VALUE` overrides typed by the config schema (pndecomp.overrides), and through the CLI."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.cli import parse_config
from tiny import write_config

from pndecomp.config_schema import ConfigError, validate
from pndecomp.overrides import coerce_to_schema, load_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
BASE = {"experiment": "x", "layers": [0, 2]}


def cli(*entries: str) -> dict:
    """The config Snakemake builds from ``--config ENTRY ...``, on top of BASE, then coerced."""
    config = {**copy.deepcopy(BASE), **parse_config(list(entries))}
    return coerce_to_schema(config, SCHEMA)


def valid(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA)
    return config


def test_snakemake_hands_nested_values_over_as_strings():
    # The premise: without coercion these fail the schema.
    assert parse_config(['predictor={"d_head": 32}', "layers=[0,7]"]) == {
        "predictor": {"d_head": "32"}, "layers": ["0", "7"]}


@pytest.mark.parametrize("entry, expected", [
    ("layers=[0, 7]", [0, 7]),
    ("layers=[0,embed]", [0, "embed"]),
    ("layers=[embed]", ["embed"]),
])
def test_layers(entry, expected):
    assert valid(cli(entry))["layers"] == expected


def test_nested_integer_float_boolean_null():
    config = valid(cli('predictor={"d_head": 32, "n_heads": null, "rotary": "true", "width_multiplier": "2.5"}',
                       'train={"lr": 1e-3, "weight_decay": "0.001", "grad_clip": 2}',
                       "windows={split_fractions: {predictor_train: .5, predictor_val: 0.05, predictor_eval: 1e-1,"
                       " probe_train: 0.2, probe_val: 0.1, probe_test: 0.1}}"))
    predictor, train = config["predictor"], config["train"]
    assert predictor["d_head"] == 32 and type(predictor["d_head"]) is int
    assert predictor["n_heads"] is None
    assert predictor["rotary"] is True
    assert predictor["width_multiplier"] == 2.5
    assert train["lr"] == pytest.approx(1e-3) and type(train["lr"]) is float
    assert train["weight_decay"] == pytest.approx(0.001)
    assert train["grad_clip"] == 2
    assert config["windows"]["split_fractions"]["predictor_eval"] == pytest.approx(0.1)


def test_strings_and_lists_of_numbers():
    config = valid(cli('corpus={"max_documents": "100", "hf": {"name": "null", "streaming": "false"}}',
                       "probes={c_grid: [1e-2, 1], tasks: [domain]}",
                       "model={revision: main}"))
    assert config["corpus"]["max_documents"] == 100
    assert config["corpus"]["hf"]["name"] is None  # null where a string is allowed too
    assert config["corpus"]["hf"]["streaming"] is False
    assert config["probes"]["c_grid"] == [pytest.approx(0.01), 1]
    assert config["probes"]["tasks"] == ["domain"]
    assert config["model"]["revision"] == "main"


def test_top_level_values():
    # Snakemake types a top-level scalar itself, except lower-case booleans and null.
    config = coerce_to_schema({**BASE, "seed": "3", "device": "cpu"}, SCHEMA)
    assert config["seed"] == 3 and config["device"] == "cpu"
    assert coerce_to_schema({**BASE, "experiment": "123"}, SCHEMA)["experiment"] == "123"


def test_typed_config_unchanged():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert coerce_to_schema(config, SCHEMA) == config
    tiny = {"experiment": "t", "layers": [0, "embed"], "model": {"id": "embedded", "revision": None},
            "train": {"lr": 0.001, "steps": 5}, "predictor": {"rotary": False, "width_multiplier": 4}}
    coerced = coerce_to_schema(tiny, SCHEMA)
    assert coerced == tiny
    assert type(coerced["predictor"]["width_multiplier"]) is int  # an int is already a number


def test_additional_properties_and_unconstrained_values():
    schema = {"type": "object", "properties": {"free": {}},
              "additionalProperties": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    config = {"free": "7", "task_a": '{"n": "5"}', "task_b": {"n": "6", "other": "x"}}
    assert coerce_to_schema(config, schema) == {"free": "7", "task_a": {"n": 5}, "task_b": {"n": 6, "other": "x"}}


def test_input_not_mutated():
    config = {**BASE, "predictor": {"d_head": "32"}}
    coerce_to_schema(config, SCHEMA)
    assert config["predictor"]["d_head"] == "32"


@pytest.mark.parametrize("entry, where, complaint", [
    ('predictor={"d_head": "many"}', "predictor.d_head", "'many' is not of type 'integer'"),
    ('predictor={"d_head": 1.5}', "predictor.d_head", "'1.5' is not of type 'integer'"),
    ('predictor={"rotary": "maybe"}', "predictor.rotary", "'maybe' is not of type 'boolean'"),
    ('train={"lr": nan}', "train.lr", "'nan' is not of type 'number'"),
    ("layers=[0, first]", "layers[1]", "'first' is not valid under any of the given schemas"),
    ("layers=[0, -1]", "layers[1]", "-1 is not valid under any of the given schemas"),
])
def test_unparseable_value_fails_validation_naming_key(entry, where, complaint):
    with pytest.raises(ConfigError) as error:
        valid(cli(entry))
    assert f"{where}: {complaint}" in str(error.value)


# --- through the snakemake CLI ------------------------------------------------------------


def dry_run(workdir: Path, *config: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--config", *config]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_overrides(tmp_path, tiny_model_dir, tiny_corpus):
    write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus)

    result = dry_run(tmp_path, "layers=[0,2]", 'predictor={"d_head": 4}', 'train={"lr": 1e-3}')
    assert result.returncode == 0, result.stdout + result.stderr
    assert "layer-2" in result.stdout and "layer-3" not in result.stdout

    result = dry_run(tmp_path, "layers=[0,2]", 'predictor={"d_head": "many"}')
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "d_head" in message and "'many' is not of type 'integer'" in message
