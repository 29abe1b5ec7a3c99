"""What the stage modules share: the model's source and identity, the frozen LM, the stored hidden states
read whole or batch by batch, the states of a layer computed on the fly (stream mode), and the
baselines' training batches (metrics and the interventions' `mean` patch)."""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch
from safetensors import safe_open

from .. import config as pnconfig
from .. import extract, lm, model_files, storage, token_store
from ..storage import hidden_batches
from ..train import batch_indices


def model_source(config: Mapping, materialized_dir: str | None = None) -> model_files.ModelSource:
    """The materialized copy of a GGUF model (or of its tokenizer) when there is one, else the configured model."""
    if materialized_dir:
        return model_files.ModelSource(str(materialized_dir))
    return model_files.resolve_source(config["model"])


@functools.cache
def _weights_fingerprint(model_id: str, revision: str | None) -> dict:
    return model_files.model_fingerprint(model_files.resolve_source({"id": model_id, "revision": revision}))


def output_metadata(config: Mapping, **extra) -> dict:
    """Seed, experiment, package versions and the model's identity: stored with every output."""
    model = config["model"]
    identity = _weights_fingerprint(model["id"], model.get("revision"))
    if model.get("random_init"):
        identity = {**identity, "random_init": True}  # weights re-initialised with the seed
    return storage.provenance(experiment=config["experiment"], seed=config["seed"], model=identity, **extra)


def load_frozen_lm(config: Mapping, materialized_dir: str | None, layers, window_length: int):
    """The LM on the configured device, after checking the layers and window length against it (the
    DAG-time check read a config.json or a GGUF header; this one, the config of the model as loaded)."""
    device = pnconfig.resolve_device(config["device"])
    model = lm.load_model(model_source(config, materialized_dir), device, pnconfig.model_dtype(config, device))
    if config["model"]["random_init"]:
        model = lm.reinitialised(model, config["seed"])
    pnconfig.check_model(config["model"]["id"], layers, window_length, model_files.shape_from_config(model.config))
    return model, device


def read_hidden(path: str, limit: int | None = None) -> torch.Tensor:
    """hidden [n_windows, T, d_model] in its storage dtype; ``limit`` reads only the first windows."""
    with safe_open(path, framework="pt") as handle:
        tensor = handle.get_slice("hidden")
        return tensor[:limit] if limit is not None else tensor[:]


def hidden_and_residual_batches(hidden_path: str, residual_path: str, batch_size: int):
    """(hidden [batch, T, d], residual [batch, T−1, d]) of the same eval windows, batch by batch."""
    yield from zip(hidden_batches(hidden_path, batch_size), hidden_batches(residual_path, batch_size, "residual"),
                   strict=True)


def frozen_lm_states(config: Mapping, materialized_dir: str | None, layers: Sequence[model_files.Layer],
                     window_length: int, storage_dtype_path: str | None = None,
                     ) -> Callable[[torch.Tensor], dict[model_files.Layer, torch.Tensor]]:
    """states_of(ids [batch, T]) -> {layer: hidden states [batch, T, d]} from one LM pass that stops after the
    deepest of ``layers`` (no LM head), rounded through the storage dtype like the cached states and the
    eval set."""
    model, device = load_frozen_lm(config, materialized_dir, layers, window_length)
    capture = lm.ResidualCapture(model, layers)
    storage_dtype = pnconfig.storage_dtype(config, storage_dtype_path)

    def states_of(ids: torch.Tensor) -> dict[model_files.Layer, torch.Tensor]:
        return {layer: hidden.to(storage_dtype)
                for layer, hidden in capture.run(ids.to(device, non_blocking=True)).items()}

    return states_of


def layer_states(config: Mapping, materialized_dir: str | None, layer: model_files.Layer, windows_path: str,
                 storage_dtype_path: str | None = None) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(the windows' token ids [n, T], hidden_of(ids) -> the layer's hidden states [batch, T, d]), as
    :func:`frozen_lm_states` computes them."""
    tokens = torch.from_numpy(extract.window_tokens(windows_path))
    states_of = frozen_lm_states(config, materialized_dir, [layer], tokens.shape[1], storage_dtype_path)
    if pnconfig.resolve_device(config["device"]).type == "cuda":
        tokens = tokens.pin_memory()  # lets the host-to-device copy overlap compute
    return tokens, lambda ids: states_of(ids)[layer]


def streamed_batches(config: Mapping, materialized_dir: str | None, layers: Sequence[str],
                     pool: token_store.WindowPool, train_cfg,
                     storage_dtype_path: str | None = None) -> Callable[[int], dict[str, torch.Tensor]]:
    """next_batch(step) for stream mode: {layer: the hidden states of the step's pool windows}, from one LM
    pass. A non-finite state stops training, naming the layer, the step and the window."""
    parsed = {name: model_files.parse_layer(name) for name in layers}
    states_of = frozen_lm_states(config, materialized_dir, list(parsed.values()), pool.window_length,
                                 storage_dtype_path)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        indices = batch_indices(len(pool), train_cfg.batch_size, train_cfg.seed, step)
        states = states_of(torch.from_numpy(pool.windows_of(indices.numpy())))
        for name, layer in parsed.items():
            finite = torch.isfinite(states[layer])
            if not finite.all():
                row, position = (~finite).nonzero()[0, :2].tolist()
                raise extract.NonFiniteHiddenState(
                    f"layer {name}, step {step + 1}: non-finite hidden state in window "
                    f"{pool.window_id(int(indices[row]))} (pool window {int(indices[row])}), position {position + 1}, "
                    f"in the storage dtype {states[layer].dtype}; with float16, set extraction.dtype to bfloat16 "
                    "or float32")
        return {name: states[layer] for name, layer in parsed.items()}

    return next_batch


def baseline_train_batches(config: Mapping, materialized_dir: str | None, layer: str, train_data_path: str,
                           storage_dtype_path: str | None = None):
    """A function giving, at each call, a fresh iterator over the layer's hidden states [batch, T, d] of the
    first ``metrics.baseline_train_windows`` predictor_train windows: read from the cache, or computed by
    the frozen LM in stream mode (``train_data_path``: the activations, or the token store)."""
    batch_size, limit = config["extraction"]["batch_size"], config["metrics"]["baseline_train_windows"]
    if config["train"]["data"] == "stream":
        tokens, hidden_of = layer_states(config, materialized_dir, model_files.parse_layer(layer), train_data_path,
                                         storage_dtype_path)
        tokens = tokens[:limit]
        return lambda: (hidden_of(tokens[start:start + batch_size]) for start in range(0, len(tokens), batch_size))
    return lambda: hidden_batches(train_data_path, batch_size, limit=limit)
