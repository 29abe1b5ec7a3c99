"""Stream-mode training (the paper config's mode) on the tiny random model: the token store and its window
pool, batches drawn from the pool, one LM pass for all layers, the guards, and cache mode beside it."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from snakemake.utils import validate
from tiny import write_config

from pndecomp import config as pnconfig
from pndecomp import corpus, lm, storage, token_store
from pndecomp.extract import NonFiniteHiddenState
from pndecomp.predictor import load_predictor
from pndecomp.splits import split_of
from pndecomp.stages import common as common_stages
from pndecomp.stages import prepare as prepare_stages
from pndecomp.stages import train as train_stages
from pndecomp.train import StreamPoolTooSmall, batch_indices

LAYERS = ["1", "2"]


def tiny_config(root, tiny_model_dir, tiny_corpus, **overrides):
    """A validated tiny config (defaults filled as Snakemake does) in stream mode."""
    config = yaml.safe_load(write_config(
        root / "config.yaml", tiny_model_dir, tiny_corpus,
        **{"layers": [int(layer) for layer in LAYERS], "train.steps": 40, "train.eval_every": 10,
           "train.data": "stream", "extraction.dtype": "float16", **overrides}).read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """The tiny config, its windows and token store, eval activations of both layers and train activations of
    layer 2."""
    root = tmp_path_factory.mktemp("stream")
    config = tiny_config(root, tiny_model_dir, tiny_corpus)
    windows = {name: str(root / f"{name}.parquet")
               for name in ("predictor_train", "predictor_val", "predictor_eval", "probe")}
    store = str(root / "predictor_train_tokens")
    prepare_stages.make_windows(config, None, None,
                        {**windows, "summary": str(root / "summary.json"), "predictor_train_tokens": store})
    val_paths = {layer: str(root / f"predictor_val-layer-{layer}.safetensors") for layer in LAYERS}
    prepare_stages.extract_activations(config, None, windows["predictor_val"], val_paths, None)
    train_activations = str(root / "predictor_train-layer-2.safetensors")
    prepare_stages.extract_activations(config, None, windows["predictor_train"], {"2": train_activations}, None)
    return {"root": root, "config": config, "windows": windows, "store": store, "val": val_paths,
            "train_activations": train_activations}


def files_of(root, name, layer):
    return train_stages.PredictorFiles(str(root / f"predictor_val-layer-{layer}.safetensors"),
                                 str(root / f"{name}-{layer}.safetensors"), str(root / f"{name}-{layer}-curve.parquet"),
                                 str(root / f"{name}-{layer}.resume.pt"), str(root / f"{name}-{layer}-cost.json"))


def train_one(prepared, name, layer, config=None, train_data=None):
    config = config or prepared["config"]
    files = files_of(prepared["root"], name, layer)
    train_stages.train_predictor(config, None, layer, train_data or prepared["store"], files.val_hidden, files.weights,
                           files.curve, files.resume, files.cost)
    return files


# ---------------------------------------------------------------- the token store and its pool

def write_store(path, documents, *, window_length, bos_token_id=None, vocab_size=1000):
    with token_store.TokenStoreWriter(path, vocab_size=vocab_size, window_length=window_length,
                                      bos_token_id=bos_token_id) as writer:
        for doc_id, ids in documents.items():
            writer.add(doc_id, ids)
        summary = writer.summary()
    return summary, token_store.open_pool(path)


def test_pool_is_every_non_overlapping_slot_of_every_document(tmp_path):
    documents = {"a": list(range(100, 105)), "b": list(range(200, 212)), "c": [300, 301, 302]}
    summary, pool = write_store(tmp_path / "plain", documents, window_length=4)
    assert summary == {"documents": 3, "document_tokens": 20, "windows": 1 + 3 + 0, "tokens": 16}
    assert len(pool) == 4 and pool.tokens.dtype == np.uint16
    assert pool.windows_of([0, 1, 3]).tolist() == [[100, 101, 102, 103], [200, 201, 202, 203],
                                                   [208, 209, 210, 211]]
    assert pool.windows_of([2]).dtype == np.int64
    assert [pool.window_id(i) for i in range(4)] == ["a@0", "b@0", "b@4", "b@8"]

    # With a BOS every window is BOS + T - 1 document tokens: slots of 3 tokens.
    summary, pool = write_store(tmp_path / "bos", documents, window_length=4, bos_token_id=7)
    assert summary["windows"] == 1 + 4 + 1 == len(pool)
    assert pool.windows_of([0, 4, 5]).tolist() == [[7, 100, 101, 102], [7, 209, 210, 211], [7, 300, 301, 302]]
    assert [pool.window_id(i) for i in range(6)] == ["a@0", "b@0", "b@3", "b@6", "b@9", "c@0"]


def test_store_uses_uint32_beyond_uint16_and_refuses_ids_outside_the_vocabulary(tmp_path):
    _, pool = write_store(tmp_path / "wide", {"a": [70_000, 1, 2]}, window_length=3, vocab_size=80_000)
    assert pool.tokens.dtype == np.uint32 and pool.windows_of([0]).tolist() == [[70_000, 1, 2]]
    with pytest.raises(ValueError, match=r"document 'a': token ids outside \[0, 10\)"):
        write_store(tmp_path / "bad", {"a": [3, 10]}, window_length=2, vocab_size=10)
    assert not (tmp_path / "bad").exists() and list(tmp_path.iterdir()) == [tmp_path / "wide"]


def test_store_holds_every_predictor_train_document_as_tokenized(prepared):
    config, pool = prepared["config"], token_store.open_pool(prepared["store"])
    tokenizer = lm.load_tokenizer(common_stages.model_source(config))
    fractions, seed = config["windows"]["split_fractions"], config["seed"]
    length = config["windows"]["length"]
    tokenized = {doc.doc_id: tokenizer(doc.text, add_special_tokens=False)["input_ids"]
                 for doc in corpus.iter_documents(pnconfig.corpus_for_reading(config, None))
                 if split_of(doc.group, fractions, seed) == "predictor_train"}
    expected = {doc_id: ids for doc_id, ids in tokenized.items() if len(ids) >= length}
    assert list(pool.documents["doc_id"]) == list(expected)
    for index in range(len(pool)):
        doc_id, start = pool.window_id(index).rsplit("@", 1)
        assert pool.windows_of([index])[0].tolist() == expected[doc_id][int(start):int(start) + length]
    assert len(pool) == sum(len(ids) // length for ids in expected.values())
    summary = storage.read_json(prepared["root"] / "summary.json")["stream_pool"]
    assert summary["windows"] == len(pool) and summary["tokens"] == len(pool) * length
    # The cached predictor_train windows come from the same documents.
    assert set(pd.read_parquet(prepared["windows"]["predictor_train"])["doc_id"]) <= set(expected)


def test_batches_are_distinct_pool_windows_and_depend_only_on_the_seed(prepared):
    pool, batch = token_store.open_pool(prepared["store"]), prepared["config"]["train"]["batch_size"]
    steps = len(pool) // batch  # every step of one pass

    def drawn(seed):
        return torch.cat([batch_indices(len(pool), batch, seed, step) for step in range(steps)])

    indices = drawn(0)
    assert len(set(indices.tolist())) == steps * batch  # no window twice within a pass
    windows = pool.windows_of(indices.numpy())
    assert len({tuple(window) for window in windows.tolist()}) == steps * batch
    assert torch.equal(drawn(0), indices) and not torch.equal(drawn(1), indices)


# ---------------------------------------------------------------- streamed batches and training

def test_streamed_states_equal_what_extraction_stores_for_the_same_windows(prepared):
    """One LM pass gives every layer's states of the step's pool windows, rounded as extraction rounds them."""
    config, root = prepared["config"], prepared["root"]
    pool, train_cfg = token_store.open_pool(prepared["store"]), pnconfig.train_config(prepared["config"])
    next_batch = common_stages.streamed_batches(config, None, LAYERS, pool, train_cfg)
    step = 3
    indices = batch_indices(len(pool), train_cfg.batch_size, train_cfg.seed, step)
    windows_path = root / "step-3-windows.parquet"
    pd.DataFrame({"tokens": list(pool.windows_of(indices.numpy()))}).to_parquet(windows_path)
    extracted = {layer: str(root / f"step-3-layer-{layer}.safetensors") for layer in LAYERS}
    prepare_stages.extract_activations(config, None, str(windows_path), extracted, None)
    batch = next_batch(step)
    assert list(batch) == LAYERS
    for layer in LAYERS:
        torch.testing.assert_close(batch[layer], common_stages.read_hidden(extracted[layer]), rtol=0, atol=0)


def test_non_finite_hidden_state_names_layer_step_and_window(prepared, monkeypatch):
    config, pool = prepared["config"], token_store.open_pool(prepared["store"])
    real = common_stages.frozen_lm_states

    def with_a_nan(*args, **kwargs):
        states_of = real(*args, **kwargs)

        def poisoned(ids):
            states = states_of(ids)
            states[2][5, 7, 0] = float("nan")
            return states
        return poisoned

    monkeypatch.setattr(common_stages, "frozen_lm_states", with_a_nan)
    train_cfg = pnconfig.train_config(config)
    next_batch = common_stages.streamed_batches(config, None, LAYERS, pool, train_cfg)
    index = int(batch_indices(len(pool), train_cfg.batch_size, train_cfg.seed, 4)[5])
    with pytest.raises(NonFiniteHiddenState) as raised:
        next_batch(4)
    assert str(raised.value).startswith(f"layer 2, step 5: non-finite hidden state in window {pool.window_id(index)} "
                                        f"(pool window {index}), position 8")


def test_stream_mode_learns_and_writes_what_cache_mode_writes(prepared):
    streamed = train_one(prepared, "stream", "2")
    cached = train_one(prepared, "cache", "2", {**prepared["config"], "train": {**prepared["config"]["train"],
                                                                               "data": "cache"}},
                       prepared["train_activations"])
    curve = pd.read_parquet(streamed.curve)
    assert list(curve["step"]) == [10, 20, 30, 40]
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    assert curve["val_mse"].iloc[-1] < curve["val_mse"].iloc[0]
    batch, length = prepared["config"]["train"]["batch_size"], prepared["config"]["windows"]["length"]
    assert list(curve["windows_seen"]) == [batch * step for step in curve["step"]]  # 320 <= the pool: all distinct
    assert list(curve["tokens_seen"]) == [length * n for n in curve["windows_seen"]]

    cache_curve = pd.read_parquet(cached.curve)
    assert list(cache_curve["windows_seen"]) == [64] * 4  # the 64 cached windows, seen from step 10 on
    assert list(curve.columns) == list(cache_curve.columns) and (curve.dtypes == cache_curve.dtypes).all()
    stream_model, cache_model = load_predictor(streamed.weights), load_predictor(cached.weights)
    assert stream_model.config == cache_model.config
    assert stream_model.state_dict().keys() == cache_model.state_dict().keys()
    stream_meta, cache_meta = storage.load_metadata(streamed.weights), storage.load_metadata(cached.weights)
    assert stream_meta.keys() == cache_meta.keys() and stream_meta["train"]["data"] == "stream"


def test_joint_layer_training_equals_per_layer_training(prepared):
    """One LM pass per step for both layers gives each predictor exactly the weights and curve of its own job."""
    root, config = prepared["root"], prepared["config"]
    per_layer = {layer: train_one(prepared, "per-layer", layer) for layer in LAYERS}
    joint = {layer: files_of(root, "joint", layer) for layer in LAYERS}
    train_stages.train_predictors(config, None, prepared["store"], joint)
    for layer in LAYERS:
        expected, actual = load_predictor(per_layer[layer].weights), load_predictor(joint[layer].weights)
        for key, value in expected.state_dict().items():
            assert torch.equal(value, actual.state_dict()[key]), (layer, key)
        assert pd.read_parquet(per_layer[layer].curve).equals(pd.read_parquet(joint[layer].curve))
        assert storage.load_metadata(joint[layer].weights)["layer"] == int(layer)
    assert not any(root.glob("joint-*.resume.pt"))


def test_training_beyond_the_pool_stops_before_its_first_step(prepared, tmp_path):
    config = prepared["config"]
    pool = token_store.open_pool(prepared["store"])
    steps = 10 * len(pool)  # far beyond one pass: 10 x batch passes
    config = {**config, "train": {**config["train"], "steps": steps}}
    files = files_of(tmp_path, "beyond", "2")
    with pytest.raises(StreamPoolTooSmall) as raised:
        train_stages.train_predictors(config, None, prepared["store"], {"2": files})
    needed = steps * config["train"]["batch_size"]
    assert str(raised.value).startswith(f"stream pool: {len(pool)} windows, training needs {needed} ")
    assert list(tmp_path.iterdir()) == []  # no weights, curve or checkpoint


def test_joint_layers_needs_stream_mode(tmp_path, tiny_model_dir, tiny_corpus):
    config = tiny_config(tmp_path, tiny_model_dir, tiny_corpus, **{"train.data": "cache", "train.joint_layers": True})
    with pytest.raises(pnconfig.ConfigError, match="train.joint_layers is true with train.data 'cache'"):
        pnconfig.check(config)


@pytest.mark.slow
def test_joint_rule_trains_every_layer_in_one_job(tmp_path, tiny_model_dir, tiny_corpus):
    """The workflow in stream mode with train.joint_layers (storage dtype auto, as by default): one job writes
    every layer's predictor and curve."""
    write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus,
                 **{"layers": [int(layer) for layer in LAYERS], "train.data": "stream", "train.joint_layers": True})
    targets = [f"results/tiny/predictors/attn1/layer-{layer}/{name}" for layer in LAYERS
               for name in ("predictor.safetensors", "curve.parquet")]
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1",
                             "--directory", str(tmp_path), *targets], capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "train_predictors_joint" in log and "rule train_predictor:" not in log
    train_log = (tmp_path / "results/tiny/logs/train_predictors_joint/attn1.log").read_text()
    assert "stream pool: " in train_log and "training needs 160 " in train_log  # 20 steps x 8 windows
    for layer in LAYERS:
        curve = pd.read_parquet(tmp_path / f"results/tiny/predictors/attn1/layer-{layer}/curve.parquet")
        assert list(curve["step"]) == [5, 10, 15, 20] and list(curve["windows_seen"]) == [40, 80, 120, 160]
