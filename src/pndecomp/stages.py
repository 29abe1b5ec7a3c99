"""One function per Snakemake rule: read the rule's inputs, call the package, write its outputs.

The rule files in ``workflow/rules`` name these functions through thin scripts in
``workflow/scripts``; everything here runs (and is tested) without Snakemake.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from . import config as cfg
from . import corpus, extract, lm, metrics, predictor, storage, tasks, windows
from .embedded_corpus import build_embedded_corpus  # the name embedded_corpus is a stage here
from .train import batch_indices
from .train import train_predictor as train_loop

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- shared helpers

def model_source(config: Mapping, materialized_dir: str | None = None) -> lm.ModelSource:
    """The materialized copy of a GGUF model when there is one, else the configured model."""
    if materialized_dir:
        return lm.ModelSource(str(materialized_dir))
    return lm.resolve_source(config["model"])


@functools.cache
def _weights_fingerprint(model_id: str, revision: str | None) -> dict:
    return lm.model_fingerprint(lm.resolve_source({"id": model_id, "revision": revision}))


def output_metadata(config: Mapping, **extra) -> dict:
    """Seed, experiment, package versions and the model's identity: stored with every output."""
    model = config["model"]
    identity = _weights_fingerprint(model["id"], model.get("revision"))
    if model.get("random_init"):
        identity = {**identity, "random_init": True}  # weights re-initialised with the seed
    return storage.provenance(experiment=config["experiment"], seed=config["seed"], model=identity, **extra)


def load_frozen_lm(config: Mapping, materialized_dir: str | None, layers, window_length: int):
    """The LM on the configured device, after checking the layers and window length against it
    (the DAG-time check cannot when the model's config is only on the hub)."""
    device = cfg.resolve_device(config["device"])
    model = lm.load_model(model_source(config, materialized_dir), device, cfg.model_dtype(config, device))
    if config["model"]["random_init"]:
        model = lm.reinitialised(model, config["seed"])
    cfg.check_model(config["model"]["id"], layers, window_length, lm.shape_from_config(model.config))
    return model, device


def read_hidden(path: str, limit: int | None = None) -> torch.Tensor:
    """hidden [n_windows, T, d_model] in its storage dtype; ``limit`` reads only the first windows."""
    with safe_open(path, framework="pt") as handle:
        tensor = handle.get_slice("hidden")
        return tensor[:limit] if limit is not None else tensor[:]


def hidden_batches(path: str, batch_size: int, name: str = "hidden", limit: int | None = None):
    """[batch, ...] slices of a file's tensor ``name`` along its first axis, one batch at a time (memory:
    one batch); ``limit`` stops after that many rows."""
    with safe_open(path, framework="pt") as handle:
        tensor = handle.get_slice(name)
        n_rows = tensor.get_shape()[0] if limit is None else min(limit, tensor.get_shape()[0])
        for start in range(0, n_rows, batch_size):
            yield tensor[start:min(start + batch_size, n_rows)]


def hidden_and_residual_batches(hidden_path: str, residual_path: str, batch_size: int):
    """(hidden [batch, T, d], residual [batch, T−1, d]) of the same eval windows, batch by batch."""
    yield from zip(hidden_batches(hidden_path, batch_size), hidden_batches(residual_path, batch_size, "residual"),
                   strict=True)


# ---------------------------------------------------------------- stages

def materialize_model(config: Mapping, out_dir: str) -> None:
    lm.materialize(lm.resolve_source(config["model"]), out_dir)


def embedded_corpus(config: Mapping, out_jsonl: str, out_manifest: str) -> None:
    summary = build_embedded_corpus(Path(out_jsonl), Path(out_manifest),
                                    max_files_per_domain=config["corpus"]["embedded"]["max_files_per_domain"])
    log.info("embedded corpus: %s", summary)


def make_windows(config: Mapping, materialized_dir: str | None, corpus_jsonl: str | None,
                 outputs: Mapping[str, str]) -> None:
    """Windows of every split; ``outputs`` maps predictor_train, predictor_eval, probe, summary to paths."""
    tokenizer = lm.load_tokenizer(model_source(config, materialized_dir))
    section = config["windows"]
    probe_tasks = [tasks.get(name) for name in config["probes"]["tasks"]]
    probe_caps = cfg.probe_caps(config)
    documents = corpus.iter_documents(cfg.corpus_for_reading(config, corpus_jsonl))
    candidates, counts = windows.build_windows(
        documents, tokenizer, length=section["length"], per_document=section["per_document"],
        prepend_bos=section["prepend_bos"], fractions=section["split_fractions"], seed=config["seed"],
        tasks=probe_tasks)
    predictor_counts = {split: section[split] for split in ("predictor_train", "predictor_eval")}
    selected = windows.select_windows(candidates, predictor_counts=predictor_counts, probe_caps=probe_caps,
                                      tasks=probe_tasks)
    summary = windows.summarize(selected, counts, probe_tasks)
    log.info("windows: %s", summary)
    windows.check_selection(selected, length=section["length"], requested=predictor_counts, tasks=probe_tasks,
                            probe_caps=probe_caps, counts=counts)
    metadata = output_metadata(config)
    for name in ("predictor_train", "predictor_eval", "probe"):
        storage.write_parquet(selected[name], outputs[name], metadata)
    storage.write_json({**summary, "metadata": metadata}, outputs["summary"])


def extract_activations(config: Mapping, materialized_dir: str | None, windows_path: str,
                        out_paths: Mapping[str, str], surprisal_path: str | None) -> None:
    """Hidden states of every configured layer (one pass), plus surprisal for the eval split."""
    layers = [lm.parse_layer(name) for name in out_paths]
    tokens = extract.window_tokens(windows_path)
    model, device = load_frozen_lm(config, materialized_dir, layers, tokens.shape[1])
    extract.extract_hidden_states(
        model, tokens, layers,
        {lm.parse_layer(name): path for name, path in out_paths.items()},
        surprisal_path=surprisal_path, batch_size=config["extraction"]["batch_size"], device=device,
        storage_dtype=cfg.DTYPES[config["extraction"]["dtype"]], metadata=output_metadata(config))


def train_predictor(config: Mapping, materialized_dir: str | None, layer: str, train_data_path: str,
                    eval_hidden_path: str, out_weights: str, out_curve: str, resume_path: str) -> None:
    """Train one layer's predictor from cached hidden states (``train.data: cache``, reading the
    layer's activations) or from hidden states the frozen LM computes on the fly for every batch
    (``stream``, reading the predictor_train windows)."""
    predictor_cfg = cfg.predictor_config(config, lm.read_model_shape(model_source(config, materialized_dir)))
    train_cfg = cfg.train_config(config)
    device = cfg.resolve_device(config["device"])
    eval_hidden = read_hidden(eval_hidden_path, limit=config["train"]["eval_windows"])
    if config["train"]["data"] == "stream":
        next_batch = streamed_batches(config, materialized_dir, lm.parse_layer(layer), train_data_path, train_cfg)
    else:
        train_hidden = read_hidden(train_data_path)

        def next_batch(step: int) -> torch.Tensor:
            return train_hidden[batch_indices(len(train_hidden), train_cfg.batch_size, train_cfg.seed, step)]

    stat = Path(train_data_path).stat()
    model, curve = train_loop(predictor_cfg, train_cfg, next_batch, eval_hidden, device=device,
                              resume_path=Path(resume_path),
                              data_id=f"{config['train']['data']}:{layer}:{stat.st_size}:{stat.st_mtime_ns}")
    metadata = output_metadata(config, layer=lm.parse_layer(layer), train=config["train"])
    predictor.save_predictor(model, out_weights, metadata)
    storage.write_parquet(curve, out_curve, metadata)
    Path(resume_path).unlink(missing_ok=True)


def layer_states(config: Mapping, materialized_dir: str | None, layer: lm.Layer,
                 windows_path: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(the windows' token ids [n, T], hidden_of(ids) -> the layer's hidden states [batch, T, d]): the LM
    runs up to ``layer`` only (early exit, no LM head), rounded through the storage dtype like the
    cached states and the eval set."""
    tokens = torch.from_numpy(extract.window_tokens(windows_path))
    model, device = load_frozen_lm(config, materialized_dir, [layer], tokens.shape[1])
    capture = lm.ResidualCapture(model, [layer])
    if device.type == "cuda":
        tokens = tokens.pin_memory()  # lets the host-to-device copy overlap compute
    storage_dtype = cfg.DTYPES[config["extraction"]["dtype"]]

    def hidden_of(ids: torch.Tensor) -> torch.Tensor:
        return capture.run(ids.to(device, non_blocking=True))[layer].to(storage_dtype)

    return tokens, hidden_of


def streamed_batches(config: Mapping, materialized_dir: str | None, layer: lm.Layer, windows_path: str,
                     train_cfg) -> Callable[[int], torch.Tensor]:
    """next_batch(step) for stream mode: the hidden states of the step's windows, computed by the LM."""
    tokens, hidden_of = layer_states(config, materialized_dir, layer, windows_path)

    def next_batch(step: int) -> torch.Tensor:
        return hidden_of(tokens[batch_indices(len(tokens), train_cfg.batch_size, train_cfg.seed, step)])

    return next_batch


def decompose_eval(config: Mapping, eval_hidden_path: str, predictor_path: str, out_residual: str,
                   out_scores: str) -> None:
    """r = h − ĥ for positions 2..T of every eval window, and MSE/Var/R² over all of them."""
    device = cfg.resolve_device(config["device"])
    model = predictor.load_predictor(predictor_path, device)
    meta = storage.load_metadata(eval_hidden_path)
    with safe_open(eval_hidden_path, framework="pt") as handle:
        n_windows, length, d_model = handle.get_slice("hidden").get_shape()
    scores = metrics.RegressionAccumulator()
    window_sse = []  # per window, before the residuals are rounded to the storage dtype: for the bootstrap
    metadata = output_metadata(config, layer=meta["layer"])
    with storage.StreamingTensorWriter(out_residual, "residual", (n_windows, length - 1, d_model),
                                       cfg.DTYPES[config["extraction"]["dtype"]],
                                       {**metadata, "positions": "2..T"}) as writer:
        for batch in hidden_batches(eval_hidden_path, config["extraction"]["batch_size"]):
            batch = batch.to(device)
            residual = predictor.residuals(model, batch)
            target = batch[:, 1:].float()
            scores.update(target.cpu().numpy(), (target - residual).cpu().numpy())
            window_sse.extend((residual.double() ** 2).sum(dim=(1, 2)).tolist())
            writer.write(residual)
    storage.write_json({"layer": meta["layer"], "n_windows": int(n_windows), **scores.result(),
                        "window_sse": window_sse, "metadata": metadata}, out_scores)


def probe_features(config: Mapping, materialized_dir: str | None, probe_windows_path: str,
                   predictor_paths: Mapping[str, str], out_paths: Mapping[str, str]) -> None:
    tokens = extract.window_tokens(probe_windows_path)
    model, device = load_frozen_lm(config, materialized_dir, [lm.parse_layer(name) for name in predictor_paths],
                                   tokens.shape[1])
    predictors = {lm.parse_layer(name): predictor.load_predictor(path, device)
                  for name, path in predictor_paths.items()}
    extract.extract_probe_features(
        model, tokens, predictors,
        {lm.parse_layer(name): path for name, path in out_paths.items()}, batch_size=config["extraction"]["batch_size"],
        device=device, storage_dtype=cfg.DTYPES[config["extraction"]["dtype"]], metadata=output_metadata(config))
