"""How config files compose (pndecomp.config_files): the embedded default alone without --configfile,
a --configfile on the schema's defaults (plus what it `extends:`), and the experiment guard that keeps
results of different models, corpora and layer sets apart; then both through the snakemake CLI."""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config
from snakemake.utils import validate as snakemake_validate
from tiny import write_config

from pndecomp.config_doc import schema_keys
from pndecomp.config_files import (
    check_experiment,
    compose,
    identity,
    load,
    merge,
    resolved_path,
    write_resolved,
)
from pndecomp.config_schema import ConfigError, check
from pndecomp.overrides import load_schema

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = load_schema(SCHEMA_PATH)
# The configs that build on the embedded default; configs/paper.yaml stands alone.
ON_THE_DEFAULT = ["configs/predictor-study.yaml", "configs/model-study.yaml", "configs/controls/random-init.yaml"]


def resolved(configfiles: list, overrides: dict | None = None) -> dict:
    config, _ = compose(configfiles, overrides)
    check(config, SCHEMA)
    return config


def merged_over_the_default(path: Path, leave_out: str | None = None) -> dict:
    """What Snakemake made of ``--configfile path`` before: path (without the `extends:` line it has now, and
    without the section ``leave_out``) merged over config.yaml, then the schema."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    mine = yaml.safe_load(path.read_text())
    mine.pop("extends", None)
    mine.pop(leave_out, None)
    update_config(config, mine)
    snakemake_validate(config, str(SCHEMA_PATH))
    return config


def get(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


# ---------------------------------------------------------------- composition


def test_a_three_line_config_takes_the_schema_defaults_for_everything_else(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the embedded default's config.yaml is right here, and must not leak in
    mine = tmp_path / "mine.yaml"
    mine.write_text("experiment: mine\nmodel: {id: EleutherAI/pythia-160m}\nlayers: [0, 6, 11]\n")
    config = resolved([mine])
    assert config["experiment"] == "mine" and config["layers"] == [0, 6, 11]
    assert config["model"]["id"] == "EleutherAI/pythia-160m"
    set_here = {"experiment", "layers", "model", "model.id"}
    defaults = [key for key in schema_keys(SCHEMA) if "default" in key.node and key.path not in set_here
                and "<" not in key.path]
    assert len(defaults) > 80
    for key in defaults:
        expected = key.node["default"]
        if isinstance(expected, dict):  # a section: its own keys' defaults are checked one by one
            continue
        assert get(config, key.path) == expected, key.path
    # the embedded default's CPU sizing, for the record: none of it
    assert config["model"]["dtype"] == "auto" and config["extraction"]["dtype"] == "auto"
    assert config["train"]["steps"] == 30000


def test_without_configfile_the_embedded_default_exactly(monkeypatch):
    monkeypatch.chdir(REPO)
    old = yaml.safe_load((REPO / "config.yaml").read_text())
    snakemake_validate(old, str(SCHEMA_PATH))
    config, files = compose([])
    assert files == [REPO / "config.yaml"]
    check(config, SCHEMA)
    assert config == old


@pytest.mark.parametrize("name", ON_THE_DEFAULT)
def test_studies_on_the_default_resolve_as_before(name, monkeypatch, tmp_path):
    """Each extends ../config.yaml (relative to itself, so from any working directory), and resolves to
    exactly what Snakemake's merge over config.yaml gave before."""
    monkeypatch.chdir(tmp_path)
    path = REPO / name
    assert yaml.safe_load(path.read_text())["extends"].endswith("config.yaml")
    config = resolved([path])
    assert config == merged_over_the_default(path)
    assert compose([path])[1] == [REPO / "config.yaml", path]


def test_paper_config_stands_alone_and_states_its_intervention_sizes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    path = REPO / "configs" / "paper.yaml"
    raw = yaml.safe_load(path.read_text())
    assert "extends" not in raw
    assert set(raw["interventions"]) == set(SCHEMA["properties"]["interventions"]["properties"]) - {"enabled"}
    config = resolved([path])
    # Merged over config.yaml, without its interventions section, it would give the same settings but for
    # the interventions (the default's CPU-sized ones), the unused embedded corpus's section and the default's
    # example texts (inspect: pages of the embedded model, not a setting of the method).
    before = merged_over_the_default(path, leave_out="interventions")
    for section in set(config) | set(before):
        if section not in ("interventions", "corpus", "inspect"):
            assert config[section] == before[section], section
    assert {k: v for k, v in config["corpus"].items() if k != "embedded"} == \
           {k: v for k, v in before["corpus"].items() if k != "embedded"}
    assert config["interventions"] == {"enabled": True, **raw["interventions"]}
    assert config["interventions"]["patching_windows"] > before["interventions"]["patching_windows"]


def test_extends_is_relative_to_the_file_and_chains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "root.yaml").write_text("experiment: root\nlayers: [0]\ntrain: {steps: 5, lr: 0.1}\n")
    (tmp_path / "base" / "middle.yaml").write_text("extends: root.yaml\ntrain: {steps: 7}\nlayers: [1, 2]\n")
    (tmp_path / "top.yaml").write_text("extends: base/middle.yaml\nexperiment: top\n")
    config, files = compose([tmp_path / "top.yaml"])
    assert config == {"experiment": "top", "layers": [1, 2], "train": {"steps": 7, "lr": 0.1}}
    assert files == [tmp_path / "base" / "root.yaml", tmp_path / "base" / "middle.yaml", tmp_path / "top.yaml"]
    # --config on top, nested keys merged
    config, _ = compose([tmp_path / "top.yaml"], {"train": {"lr": "0.5"}, "seed": 3})
    assert config["train"] == {"steps": 7, "lr": "0.5"} and config["seed"] == 3


def test_several_configfiles_merge_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("experiment: a\nlayers: [0]\ntrain: {steps: 5}\n")
    (tmp_path / "b.yaml").write_text("experiment: b\ntrain: {lr: 0.1}\n")
    config, _ = compose([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert config == {"experiment": "b", "layers": [0], "train": {"steps": 5, "lr": 0.1}}


def test_bad_extends_and_missing_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere\.yaml does not exist \(.*nowhere\.yaml <- .*c\.yaml\)"):
        load(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(ConfigError, match="give the path of one config file"):
        load(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("- a list\n")
    (tmp_path / "f.yaml").write_text("experiment: f\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        load(tmp_path / "e.yaml")
    with pytest.raises(ConfigError, match="only a config file can extend"):
        compose([tmp_path / "f.yaml"], {"extends": "a.yaml"})
    monkeypatch.chdir(tmp_path)  # no config.yaml here
    with pytest.raises(ConfigError, match="no config: neither --configfile nor config.yaml"):
        compose([])


@pytest.mark.parametrize("base, update", [
    ({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}, "d": None}),
    ({"a": [1, 2]}, {"a": {"x": 1}}),
    ({"a": {"x": 1}}, {"a": None}),
    ({"p": {"attn1": None}}, {"p": {"attn1": {"d_head": 4}, "mlp": None}}),
])
def test_merge_is_snakemakes(base, update):
    expected = copy.deepcopy(base)
    update_config(expected, copy.deepcopy(update))
    assert merge(base, update) == expected


def test_merge_leaves_its_inputs_alone():
    base, update = {"a": {"b": [1]}}, {"a": {"c": 2}}
    merged = merge(base, update)
    merged["a"]["b"].append(3)
    assert base == {"a": {"b": [1]}} and update == {"a": {"c": 2}}


# ---------------------------------------------------------------- the experiment guard


def tiny_resolved(**changes) -> dict:
    config = {"experiment": "guarded", "model": {"id": "/models/a"}, "layers": [0, 2]}
    config = merge(config, changes)
    check(config, SCHEMA)
    return config


def test_a_run_records_its_config_and_the_same_experiment_may_change_other_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = tiny_resolved()
    check_experiment(first)  # nothing recorded yet
    write_resolved(first, resolved_path("guarded"))
    assert yaml.safe_load(resolved_path("guarded").read_text()) == first
    check_experiment(tiny_resolved(train={"steps": 10}, model={"dtype": "float32"}))


@pytest.mark.parametrize("change, named", [
    ({"model": {"id": "/models/b"}}, "model.id: '/models/a' → '/models/b'"),
    ({"model": {"revision": "step1000"}}, "model.revision: None → 'step1000'"),
    ({"model": {"random_init": True}}, "model.random_init: False → True"),
    ({"layers": [0, 2, 3]}, "layers: [0, 2] → [0, 2, 3]"),
    ({"corpus": {"source": "files", "files": {"paths": ["x.jsonl"]}}}, "corpus: {'source': 'embedded'"),
    ({"corpus": {"embedded": {"max_files_per_domain": 3}}}, "'max_files_per_domain': 400}} → "),
    ({"models": {"m": {"id": "/models/a"}}}, "models: None → 'a model study'"),
])
def test_same_experiment_with_another_model_corpus_or_layers_is_refused(change, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_resolved(tiny_resolved(), resolved_path("guarded"))
    with pytest.raises(ConfigError) as error:
        check_experiment(tiny_resolved(**change))
    message = str(error.value)
    assert "experiment 'guarded' already holds results of another run" in message
    assert named in message, message
    assert "set another `experiment:` name, or delete results/guarded/" in message


def test_a_study_keeps_model_identities_in_its_models_directories():
    study = tiny_resolved(models={"a": {"id": "/models/a"}})
    assert identity(study) == identity(tiny_resolved(models={"a": {"id": "/models/a"}, "b": {"id": "/models/b"}}))
    assert "model.id" not in identity(study)


# ---------------------------------------------------------------- through the snakemake CLI


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1",
                           "--directory", str(workdir), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_records_the_config_and_refuses_another_model_under_its_experiment(tmp_path, tiny_model_dir, tiny_corpus):
    workdir = tmp_path / "work"
    workdir.mkdir()
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus)
    recorded = workdir / "results" / "tiny" / "config.yaml"
    result = snakemake(workdir, "results/tiny/config.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = yaml.safe_load(recorded.read_text())
    assert config["layers"] == [0, 2, 3] and config["train"]["weight_decay"] == 0.01  # a schema default

    # --configfile: on the schema's defaults, plus what it extends (here the tiny config); --config on top
    other_model = shutil.copytree(tiny_model_dir, tmp_path / "other-model")
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"extends: work/config.yaml\nmodel: {{id: {other_model}}}\n")
    result = snakemake(workdir, "-n", "--configfile", str(mine), "--config", "train={steps: 30}")
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "experiment 'tiny' already holds results of another run" in log, log[-3000:]
    assert f"model.id: '{tiny_model_dir}' → '{other_model}'" in log, log[-3000:]
    assert yaml.safe_load(recorded.read_text()) == config

    # the same model with another training length: allowed, and the record follows
    result = snakemake(workdir, "results/tiny/config.yaml", "--config", "train={steps: 30}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert yaml.safe_load(recorded.read_text())["train"]["steps"] == 30
