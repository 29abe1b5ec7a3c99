"""``extraction.dtype: auto``: the predictor_eval extraction chooses float16 or bfloat16 from its first
batch, records the choice, and every other store reads it through ``pndecomp.config.storage_dtype``."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from safetensors import safe_open
from snakemake.utils import validate
from tiny import write_config

from pndecomp import config as pnconfig
from pndecomp import extract, lm, model_files, storage
from pndecomp.stages import prepare as prepare_stages

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
FLOAT16_LIMIT = torch.finfo(torch.float16).max / extract.AUTO_DTYPE_MARGIN  # 16376


def stored_dtype(path) -> torch.dtype:
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(next(iter(handle.keys()))).dtype


@pytest.fixture
def model(tiny_model_dir):
    return lm.load_model(model_files.ModelSource(str(tiny_model_dir)))


def extract_auto(model, tokens, out_dir, surprisal: bool = False):
    paths = {layer: str(out_dir / f"layer-{layer}.safetensors") for layer in (0, 2)}
    choice = extract.extract_hidden_states(
        model, tokens, [0, 2], paths, surprisal_path=str(out_dir / "surprisal.safetensors") if surprisal else None,
        batch_size=2, device=torch.device("cpu"), storage_dtype=None, metadata={"seed": 0})
    return choice, paths


def test_choice_rule_is_float16_below_its_max_over_the_margin():
    def choose(value):
        return extract.choose_storage_dtype({0: torch.tensor([[1.0]]), 5: torch.tensor([[-value]])})

    assert choose(FLOAT16_LIMIT * 0.99)["dtype"] == "float16"
    above = choose(FLOAT16_LIMIT * 1.01)  # fits float16 itself, not with the margin
    assert above["dtype"] == "bfloat16"
    assert above["max_abs_hidden"] == {"0": 1.0, "5": pytest.approx(FLOAT16_LIMIT * 1.01)}
    assert above["margin"] == 2 and above["float16_max"] == 65504 and above["windows"] == 1
    assert choose(float("nan"))["dtype"] == "bfloat16"


def test_auto_stores_small_states_in_float16_and_records_why(model, tmp_path):
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (5, 16))
    choice, paths = extract_auto(model, tokens, tmp_path, surprisal=True)
    assert choice["dtype"] == "float16" and set(choice["max_abs_hidden"]) == {"0", "2"}
    assert 0 < max(choice["max_abs_hidden"].values()) < 100  # a random tiny model's states
    for layer, path in paths.items():
        assert stored_dtype(path) == torch.float16
        metadata = storage.load_metadata(path)
        assert metadata["layer"] == layer and "storage_dtype_choice" not in metadata  # recorded by the stage
    assert stored_dtype(tmp_path / "surprisal.safetensors") == torch.float32


def test_auto_stores_bfloat16_when_the_first_batch_nears_float16s_range(model, tmp_path):
    """States of ~4e4 fit float16 (max 65504) but not with the margin of 2: bfloat16."""
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.mul_(4e4 / embedding.abs().max())
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (5, 16))
    choice, paths = extract_auto(model, tokens, tmp_path)
    assert choice["dtype"] == "bfloat16"
    assert FLOAT16_LIMIT < max(choice["max_abs_hidden"].values()) < torch.finfo(torch.float16).max
    for path in paths.values():
        assert stored_dtype(path) == torch.bfloat16


def test_a_later_batch_that_overflows_the_choice_still_fails(model, tmp_path):
    tokens = np.full((4, 16), 5, dtype=np.int64)
    tokens[3, 4] = 7  # only in the second batch (batch_size 2): the first one chooses float16
    with torch.no_grad():
        model.get_input_embeddings().weight[7] *= 1e8
    with pytest.raises(extract.NonFiniteHiddenState, match=r"window 3, position 5 when stored as torch\.float16"):
        extract_auto(model, tokens, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_storage_dtype_is_the_configured_one_or_the_recorded_choice(tmp_path):
    choice = tmp_path / "storage_dtype.json"
    storage.write_json({"dtype": "bfloat16"}, choice)
    assert pnconfig.storage_dtype({"extraction": {"dtype": "float32"}}, None) == torch.float32
    assert pnconfig.storage_dtype({"extraction": {"dtype": "float16"}}, str(choice)) == torch.float16
    assert pnconfig.storage_dtype({"extraction": {"dtype": "auto"}}, str(choice)) == torch.bfloat16
    with pytest.raises(pnconfig.ConfigError, match=r"extraction\.dtype is 'auto'.*storage_dtype\.json"):
        pnconfig.storage_dtype({"extraction": {"dtype": "auto"}}, None)


def test_eval_extraction_chooses_and_train_extraction_reads_the_choice(tmp_path, tiny_model_dir, tiny_corpus):
    """The stage: auto is the schema default; the eval job writes the choice, the train job stores in it
    (here a choice edited to bfloat16, which the train job's own states would not have led to)."""
    config = yaml.safe_load(write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus,
                                         layers=[0, "final"]).read_text())
    validate(config, SCHEMA)
    assert config["extraction"]["dtype"] == "auto"
    windows = tmp_path / "windows.parquet"
    tokens = np.random.default_rng(1).integers(0, 200, (6, config["windows"]["length"]))
    pd.DataFrame({"tokens": list(tokens)}).to_parquet(windows)
    eval_paths = {layer: str(tmp_path / f"eval-{layer}.safetensors") for layer in ("0", "final")}
    choice_path = tmp_path / "storage_dtype.json"
    prepare_stages.extract_activations(config, None, str(windows), eval_paths, str(tmp_path / "surprisal.safetensors"),
                               out_storage_dtype=str(choice_path))
    choice = storage.read_json(choice_path)
    assert choice["dtype"] == "float16" and set(choice["max_abs_hidden"]) == {"0", "final"}
    assert choice["metadata"]["seed"] == config["seed"] and "packages" in choice["metadata"]
    assert all(stored_dtype(path) == torch.float16 for path in eval_paths.values())

    storage.write_json({**choice, "dtype": "bfloat16"}, choice_path)
    train_path = str(tmp_path / "train-0.safetensors")
    prepare_stages.extract_activations(config, None, str(windows), {"0": train_path}, None, str(choice_path))
    assert stored_dtype(train_path) == torch.bfloat16
    with pytest.raises(pnconfig.ConfigError, match="extraction.dtype is 'auto'"):
        prepare_stages.extract_activations(config, None, str(windows), {"0": train_path}, None)


def eval_extraction_feeds(workdir, tiny_model_dir, tiny_corpus, dtype: str) -> set[str]:
    """The rules whose jobs the eval extraction job feeds directly, from ``snakemake --dag``."""
    workdir.mkdir()
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus, **{"extraction.dtype": dtype})
    dot = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                          str(workdir), "--dag"], capture_output=True, text=True, check=True).stdout
    labels = dict(re.findall(r'\t(\d+)\[label = "(\w+)', dot))
    (source,) = [node for node, rule in labels.items() if rule == "extract_eval_activations"]
    return {labels[target] for target in re.findall(rf"\t{source} -> (\d+)", dot)}


def test_auto_makes_the_other_stores_wait_for_the_eval_extraction(tmp_path, tiny_model_dir, tiny_corpus):
    """With auto the choice file feeds the train and val extractions, the training and the probe features
    too (decomposition waits for the eval extraction anyway); an explicit dtype leaves the DAG as it was."""
    explicit = eval_extraction_feeds(tmp_path / "float16", tiny_model_dir, tiny_corpus, "float16")
    auto = eval_extraction_feeds(tmp_path / "auto", tiny_model_dir, tiny_corpus, "auto")
    assert "decompose_eval" in explicit and "train_predictor" not in explicit  # training reads predictor_val
    assert auto - explicit == {"extract_train_activations", "extract_val_activations", "train_predictor",
                               "probe_features"}
    assert explicit <= auto


def test_probe_features_stream_to_the_file_that_whole_tensors_make(model, tmp_path):
    """extract_probe_features writes each batch's rows as it goes (memory: one batch): the file is byte for
    byte the one save_tensors makes of the whole h, h_mean, ĥ and r (names, float32, metadata unchanged)."""
    from pndecomp.predictor import build_predictor
    from pndecomp.predictor_kinds import AttentionConfig

    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, size=(5, 12))
    torch.manual_seed(0)
    predictor = build_predictor(AttentionConfig(d_model=model.config.hidden_size, n_heads=2, d_head=8)).eval()
    metadata = {"seed": 0, "model": {"id": "tiny"}}
    out = tmp_path / "layer-2.safetensors"
    extract.extract_probe_features(model, tokens, {2: predictor}, {2: str(out)}, batch_size=2,
                                   device=torch.device("cpu"), storage_dtype=torch.float16, metadata=metadata)
    with torch.no_grad():  # the same batches, so that the same kernels run
        capture = lm.ResidualCapture(model, [2])
        h = torch.cat([capture.run(torch.from_numpy(tokens[start:start + 2]))[2] for start in range(0, 5, 2)])
        h = h.to(torch.float16).float()
        hhat = torch.cat([predictor(h[start:start + 2, :-1])[:, -1] for start in range(0, 5, 2)])
    whole = tmp_path / "whole.safetensors"
    storage.save_tensors({"h": h[:, -1], "h_mean": h[:, :-1].mean(dim=1), "hhat": hhat, "r": h[:, -1] - hhat}, whole,
                         {**metadata, "layer": 2, "convention": model_files.LAYER_CONVENTION, "position": "T (last)"})
    assert out.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("storage_dtype", [torch.float16, torch.bfloat16])
def test_probe_features_from_shared_states_are_those_of_the_lm_pass(model, tmp_path, storage_dtype):
    """probes.shared_states: the probe windows' states stored by extract_hidden_states, then each predictor's
    features read from them, give the file the fused LM pass gives, byte for byte (two layers, a last
    batch shorter than the others)."""
    from pndecomp.predictor import build_predictor
    from pndecomp.predictor_kinds import AttentionConfig

    tokens = np.random.default_rng(2).integers(0, model.config.vocab_size, size=(5, 12))
    torch.manual_seed(0)
    predictors = {layer: build_predictor(AttentionConfig(d_model=model.config.hidden_size, n_heads=2, d_head=8)).eval()
                  for layer in (1, 2)}
    metadata = {"seed": 0, "model": {"id": "tiny"}}
    cpu = torch.device("cpu")
    fused = {layer: str(tmp_path / f"fused-{layer}.safetensors") for layer in predictors}
    extract.extract_probe_features(model, tokens, predictors, fused, batch_size=2, device=cpu,
                                   storage_dtype=storage_dtype, metadata=metadata)
    states = {layer: str(tmp_path / f"states-{layer}.safetensors") for layer in predictors}
    extract.extract_hidden_states(model, tokens, list(predictors), states, surprisal_path=None, batch_size=2,
                                  device=cpu, storage_dtype=storage_dtype, metadata=metadata)
    shared = {layer: str(tmp_path / f"shared-{layer}.safetensors") for layer in predictors}
    extract.probe_features_from_states(states, predictors, shared, batch_size=2, device=cpu, metadata=metadata)
    for layer in predictors:
        assert Path(shared[layer]).read_bytes() == Path(fused[layer]).read_bytes(), layer


def test_states_written_behind_the_forward_are_those_of_one_forward_byte_for_byte(model, tmp_path):
    """The writer thread (storage.WriteBehind) changes when the bytes reach the disk, not which: every layer's
    file equals save_tensors' of the LM's own output_hidden_states rounded to float16 (same metadata), and the
    surprisal is the float32 log-softmax of its logits, over five batches of which the last is short."""
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(9, 16))
    paths = {layer: tmp_path / f"layer-{layer}.safetensors" for layer in (0, 2)}
    extract.extract_hidden_states(model, tokens, [0, 2], {k: str(v) for k, v in paths.items()},
                                  surprisal_path=str(tmp_path / "surprisal.safetensors"), batch_size=2,
                                  device=torch.device("cpu"), storage_dtype=torch.float16, metadata={"seed": 0})
    with torch.no_grad():
        output = model(torch.from_numpy(tokens), output_hidden_states=True)
    for layer, path in paths.items():
        whole = tmp_path / f"whole-{layer}.safetensors"
        storage.save_tensors({"hidden": output.hidden_states[layer + 1].to(torch.float16)}, whole,
                             storage.load_metadata(path))
        assert path.read_bytes() == whole.read_bytes(), layer
    with safe_open(str(tmp_path / "surprisal.safetensors"), framework="pt") as handle:
        stored = handle.get_tensor("surprisal")
    expected = -torch.log_softmax(output.logits.double(), -1)[:, :-1].gather(
        -1, torch.from_numpy(tokens)[:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(stored.double(), expected, rtol=1e-4, atol=1e-4)
