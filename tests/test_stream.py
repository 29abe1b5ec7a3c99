"""Stream-mode training (the paper config's mode) on the tiny random model, against cache mode."""
import pandas as pd
import pytest
import yaml
from conftest import REPO
from snakemake.utils import validate
from tiny import write_config

from pndecomp import stages, storage
from pndecomp.predictor import load_predictor


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_model_dir, tiny_corpus):
    """A validated tiny config (defaults filled as Snakemake does), its windows and activations of layer 2."""
    root = tmp_path_factory.mktemp("stream")
    config = yaml.safe_load(write_config(root / "config.yaml", tiny_model_dir, tiny_corpus,
                                         **{"layers": [2], "train.steps": 40, "train.eval_every": 10}).read_text())
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    windows = {name: str(root / f"{name}.parquet") for name in ("predictor_train", "predictor_eval", "probe")}
    stages.make_windows(config, None, None, {**windows, "summary": str(root / "summary.json")})
    activations = {split: str(root / f"{split}-layer-2.safetensors") for split in ("predictor_train", "predictor_eval")}
    for split, path in activations.items():
        stages.extract_activations(config, None, windows[split], {"2": path}, None)
    return root, config, windows, activations


def train(root, config, mode, train_data):
    config = {**config, "train": {**config["train"], "data": mode}}
    out = {"weights": root / f"{mode}.safetensors", "curve": root / f"{mode}-curve.parquet"}
    stages.train_predictor(config, None, "2", train_data, str(root / "predictor_eval-layer-2.safetensors"),
                           str(out["weights"]), str(out["curve"]), str(root / f"{mode}.resume.pt"))
    return out


def test_stream_mode_learns_and_writes_what_cache_mode_writes(prepared):
    root, config, windows, activations = prepared
    streamed = train(root, config, "stream", windows["predictor_train"])
    cached = train(root, config, "cache", activations["predictor_train"])

    curve = pd.read_parquet(streamed["curve"])
    assert list(curve["step"]) == [10, 20, 30, 40]
    assert curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]
    assert curve["eval_mse"].iloc[-1] < curve["eval_mse"].iloc[0]

    cache_curve = pd.read_parquet(cached["curve"])
    assert list(curve.columns) == list(cache_curve.columns) and (curve.dtypes == cache_curve.dtypes).all()
    stream_model, cache_model = load_predictor(streamed["weights"]), load_predictor(cached["weights"])
    assert stream_model.config == cache_model.config
    assert stream_model.state_dict().keys() == cache_model.state_dict().keys()
    stream_meta, cache_meta = storage.load_metadata(streamed["weights"]), storage.load_metadata(cached["weights"])
    assert stream_meta.keys() == cache_meta.keys() and stream_meta["train"]["data"] == "stream"


def test_stream_batches_equal_the_cached_hidden_states(prepared):
    """Streaming recomputes exactly what extraction stored (same windows, same rounding)."""
    import torch

    root, config, windows, activations = prepared
    from pndecomp.train import batch_indices

    next_batch = stages.streamed_batches(config, None, 2, windows["predictor_train"],
                                          stages.cfg.train_config(config))
    cached = stages.read_hidden(activations["predictor_train"])
    for step in (0, 3):
        expected = cached[batch_indices(len(cached), config["train"]["batch_size"], config["seed"], step)]
        torch.testing.assert_close(next_batch(step), expected, rtol=0, atol=0)
