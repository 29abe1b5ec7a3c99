"""The training stages: one layer's predictor, or every layer's from one LM pass (stream mode)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as pnconfig
from .. import model_files, predictor, predictor_kinds, storage, token_store
from ..storage import hidden_batches
from ..train import PredictorTrainer, batch_indices, check_stream_pool, fit_predictor
from ..train import train_predictors as train_loop
from .common import model_source, output_metadata, read_hidden, streamed_batches


@dataclass(frozen=True)
class PredictorFiles:
    """One layer's files in a training job: its predictor_val hidden states (the learning curve's set), its
    weights and curve, and its resume state (not an output: it must survive an interrupted job)."""

    val_hidden: str
    weights: str
    curve: str
    resume: str
    cost: str  # training seconds and parameters: machine-dependent, so apart from the deterministic outputs


def train_predictor(config: Mapping, materialized_dir: str | None, layer: str, train_data_path: str,
                    val_hidden_path: str, out_weights: str, out_curve: str, resume_path: str, out_cost: str,
                    storage_dtype_path: str | None = None) -> None:
    """Train one layer's predictor from cached hidden states (``train.data: cache``, reading the layer's
    activations) or from hidden states the frozen LM computes for every batch (``stream``, reading the
    predictor_train token store); see :func:`train_predictors`."""
    train_predictors(config, materialized_dir, train_data_path,
                     {layer: PredictorFiles(val_hidden_path, out_weights, out_curve, resume_path, out_cost)},
                     storage_dtype_path)


def train_predictors(config: Mapping, materialized_dir: str | None, train_data_path: str,
                     layers: Mapping[str, PredictorFiles], storage_dtype_path: str | None = None) -> None:
    """Train the predictors of ``layers`` side by side, one resume file each.

    Stream mode (``train_data_path``: the token store) draws every step's windows from the store's pool
    and runs the LM once per step, up to the deepest of ``layers``: one job trains every layer with
    ``train.joint_layers``, or one layer per job. It first checks that the run fits in
    ``train.max_epochs`` passes over the pool. Cache mode reads one layer's activations per job.
    A closed-form kind (``ridge_ar<k>``) is fitted instead, in cache mode only, on every window of the
    layer's activations read batch by batch; its curve has one row (step 0).
    ``storage_dtype_path``: see :func:`pndecomp.config.storage_dtype`.
    """
    train_cfg = pnconfig.train_config(config)
    closed_form = predictor_kinds.predictor_kind(config["predictor"]["kind"]).closed_form
    if closed_form and config["train"]["data"] != "cache":
        raise pnconfig.ConfigError(f"predictor.kind is {config['predictor']['kind']!r} with train.data "
                              f"{config['train']['data']!r}: ridge_ar predictors need train.data: cache")
    if config["train"]["data"] == "stream":
        pool = token_store.open_pool(train_data_path)
        check_stream_pool(len(pool), train_cfg)  # before the LM and the eval states are loaded
        n_windows, data_file = len(pool), pool.path / token_store.TOKENS_FILE
    elif len(layers) != 1:
        raise ValueError(f"cache mode trains one layer per job, not {list(layers)} (train.joint_layers needs "
                         "train.data: stream)")
    elif not closed_form:
        train_hidden = read_hidden(train_data_path)
        n_windows, data_file = len(train_hidden), Path(train_data_path)
    shape = model_files.read_model_shape(model_source(config, materialized_dir))
    predictor_cfg = pnconfig.predictor_config(config, shape)
    device = pnconfig.resolve_device(config["device"])
    if closed_form:
        ((layer, files),) = layers.items()
        started = time.perf_counter()
        results = {layer: fit_predictor(
            predictor_cfg, lambda: hidden_batches(train_data_path, train_cfg.batch_size),
            read_hidden(files.val_hidden, limit=config["train"]["eval_windows"]),
            eval_batch_size=train_cfg.eval_batch_size, device=device)}
        seconds = {layer: time.perf_counter() - started}  # the fit plus its scoring passes
    else:
        stat = data_file.stat()
        trainers = {
            layer: PredictorTrainer(
                predictor_cfg, train_cfg, read_hidden(files.val_hidden, limit=config["train"]["eval_windows"]),
                device=device, resume_path=Path(files.resume), name=f"layer {layer}",
                data_id=f"{config['train']['data']}:{layer}:{stat.st_size}:{stat.st_mtime_ns}")
            for layer, files in layers.items()}
        if config["train"]["data"] == "stream":
            next_batch = streamed_batches(config, materialized_dir, list(layers), pool, train_cfg, storage_dtype_path)
        else:
            (only_layer,) = layers

            def next_batch(step: int) -> dict[str, torch.Tensor]:
                return {only_layer: train_hidden[batch_indices(n_windows, train_cfg.batch_size, train_cfg.seed, step)]}

        results = train_loop(trainers, train_cfg, next_batch, n_windows)
        seconds = {layer: trainer.train_seconds for layer, trainer in trainers.items()}
        stops = {layer: trainer.stop_summary() for layer, trainer in trainers.items()}
    for layer, (model, curve) in results.items():
        metadata = output_metadata(config, layer=model_files.parse_layer(layer), train=config["train"])
        fit_info = getattr(model, "fit_info", None)
        extra = {"fit": fit_info} if fit_info else {"stop": stops[layer]}
        predictor.save_predictor(model, layers[layer].weights, {**metadata, **extra})
        storage.write_parquet(curve, layers[layer].curve, metadata)
        storage.write_json({"train_seconds": seconds[layer], "steps": int(max(curve["step"].max(), 1)),
                            "closed_form": fit_info is not None,
                            "parameters": predictor.parameter_count(model), "device": str(device)},
                           layers[layer].cost)
    for files in layers.values():  # once every output is in place
        Path(files.resume).unlink(missing_ok=True)
