"""One function per Snakemake rule: read the rule's inputs, call the package, write its outputs.

The rule files in ``workflow/rules`` name these functions through thin scripts in
``workflow/scripts``; everything here runs (and is tested) without Snakemake.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from . import config as pnconfig
from . import corpus, extract, lm, metrics, predictor, storage, tasks, token_store, windows
from .embedded_corpus import build_embedded_corpus  # the name embedded_corpus is a stage here
from .splits import PREDICTOR_SPLITS
from .storage import hidden_batches
from .train import PredictorTrainer, batch_indices, check_stream_pool, fit_predictor
from .train import train_predictors as train_loop

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- shared helpers

def model_source(config: Mapping, materialized_dir: str | None = None) -> lm.ModelSource:
    """The materialized copy of a GGUF model (or of its tokenizer) when there is one, else the configured model."""
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
    """The LM on the configured device, after checking the layers and window length against it (the
    DAG-time check read a config.json or a GGUF header; this one, the config of the model as loaded)."""
    device = pnconfig.resolve_device(config["device"])
    model = lm.load_model(model_source(config, materialized_dir), device, pnconfig.model_dtype(config, device))
    if config["model"]["random_init"]:
        model = lm.reinitialised(model, config["seed"])
    pnconfig.check_model(config["model"]["id"], layers, window_length, lm.shape_from_config(model.config))
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


# ---------------------------------------------------------------- stages

def materialize_model(config: Mapping, out_dir: str) -> None:
    lm.materialize(lm.resolve_source(config["model"]), out_dir)


def materialize_tokenizer(config: Mapping, out_dir: str) -> None:
    lm.materialize_tokenizer(lm.resolve_source(config["model"]), out_dir)


def embedded_corpus(config: Mapping, out_jsonl: str, out_manifest: str) -> None:
    summary = build_embedded_corpus(Path(out_jsonl), Path(out_manifest),
                                    max_files_per_domain=config["corpus"]["embedded"]["max_files_per_domain"])
    log.info("embedded corpus: %s", summary)


def make_windows(config: Mapping, tokenizer_dir: str | None, corpus_jsonl: str | None,
                 outputs: Mapping[str, str]) -> None:
    """Windows of every split; ``outputs`` maps predictor_train, predictor_val, predictor_eval, probe, summary to
    paths, and
    predictor_train_tokens to the token store of the predictor_train documents (stream mode's window pool)."""
    tokenizer = lm.load_tokenizer(model_source(config, tokenizer_dir))
    section = config["windows"]
    probe_tasks = [tasks.get(name) for name in config["probes"]["tasks"]]
    probe_caps = pnconfig.probe_caps(config)
    metadata = output_metadata(config)
    documents = corpus.iter_documents(pnconfig.corpus_for_reading(config, corpus_jsonl))
    with token_store.TokenStoreWriter(
            outputs["predictor_train_tokens"], vocab_size=len(tokenizer), window_length=section["length"],
            bos_token_id=tokenizer.bos_token_id if section["prepend_bos"] else None, metadata=metadata) as store:
        def keep_predictor_train(document: corpus.Document, split: str, ids: list[int]) -> None:
            if split == "predictor_train":
                store.add(document.doc_id, ids)

        candidates, counts = windows.build_windows(
            documents, tokenizer, length=section["length"], per_document=section["per_document"],
            prepend_bos=section["prepend_bos"], fractions=section["split_fractions"], seed=config["seed"],
            tasks=probe_tasks, on_document=keep_predictor_train)
        predictor_counts = {split: section[split] for split in PREDICTOR_SPLITS}
        selected = windows.select_windows(candidates, predictor_counts=predictor_counts, probe_caps=probe_caps,
                                          tasks=probe_tasks)
        summary = {**windows.summarize(selected, counts, probe_tasks, documents.duplicates),
                   "stream_pool": store.summary()}
        log.info("windows: %s", summary)
        windows.check_selection(selected, length=section["length"], requested=predictor_counts, tasks=probe_tasks,
                                probe_caps=probe_caps, counts=counts)
    for name in (*PREDICTOR_SPLITS, "probe"):
        storage.write_parquet(selected[name], outputs[name], metadata)
    storage.write_json({**summary, "metadata": metadata}, outputs["summary"])


def extract_activations(config: Mapping, materialized_dir: str | None, windows_path: str,
                        out_paths: Mapping[str, str], surprisal_path: str | None,
                        storage_dtype_path: str | None = None, out_storage_dtype: str | None = None) -> None:
    """Hidden states of every configured layer (one pass), plus surprisal for the eval split.

    ``out_storage_dtype`` is given to the one job that chooses the storage dtype (``extraction.dtype:
    auto``, the eval split): it chooses from its first batch and records the choice there. Any other
    job stores in :func:`pndecomp.config.storage_dtype`'s dtype (``storage_dtype_path``: that record).
    """
    layers = [lm.parse_layer(name) for name in out_paths]
    storage_dtype = None if out_storage_dtype else pnconfig.storage_dtype(config, storage_dtype_path)
    tokens = extract.window_tokens(windows_path)
    model, device = load_frozen_lm(config, materialized_dir, layers, tokens.shape[1])
    metadata = output_metadata(config)
    choice = extract.extract_hidden_states(
        model, tokens, layers,
        {lm.parse_layer(name): path for name, path in out_paths.items()},
        surprisal_path=surprisal_path, batch_size=config["extraction"]["batch_size"], device=device,
        storage_dtype=storage_dtype, metadata=metadata)
    if out_storage_dtype:
        storage.write_json({**choice, "metadata": metadata}, out_storage_dtype)


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
    closed_form = predictor.predictor_kind(config["predictor"]["kind"]).fit is not None
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
    predictor_cfg = pnconfig.predictor_config(config, lm.read_model_shape(model_source(config, materialized_dir)))
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
        metadata = output_metadata(config, layer=lm.parse_layer(layer), train=config["train"])
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


def frozen_lm_states(config: Mapping, materialized_dir: str | None, layers: Sequence[lm.Layer], window_length: int,
                     storage_dtype_path: str | None = None) -> Callable[[torch.Tensor], dict[lm.Layer, torch.Tensor]]:
    """states_of(ids [batch, T]) -> {layer: hidden states [batch, T, d]} from one LM pass that stops after the
    deepest of ``layers`` (no LM head), rounded through the storage dtype like the cached states and the
    eval set."""
    model, device = load_frozen_lm(config, materialized_dir, layers, window_length)
    capture = lm.ResidualCapture(model, layers)
    storage_dtype = pnconfig.storage_dtype(config, storage_dtype_path)

    def states_of(ids: torch.Tensor) -> dict[lm.Layer, torch.Tensor]:
        return {layer: hidden.to(storage_dtype)
                for layer, hidden in capture.run(ids.to(device, non_blocking=True)).items()}

    return states_of


def layer_states(config: Mapping, materialized_dir: str | None, layer: lm.Layer, windows_path: str,
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
    parsed = {name: lm.parse_layer(name) for name in layers}
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


def decompose_eval(config: Mapping, eval_hidden_path: str, predictor_path: str, out_residual: str,
                   out_scores: str, storage_dtype_path: str | None = None) -> None:
    """r = h − ĥ for positions 2..T of every eval window, and MSE/Var/R² over all of them; the residuals
    are stored like the hidden states (``storage_dtype_path``: see :func:`pndecomp.config.storage_dtype`)."""
    storage_dtype = pnconfig.storage_dtype(config, storage_dtype_path)
    device = pnconfig.resolve_device(config["device"])
    model = predictor.load_predictor(predictor_path, device)
    meta = storage.load_metadata(eval_hidden_path)
    with safe_open(eval_hidden_path, framework="pt") as handle:
        n_windows, length, d_model = handle.get_slice("hidden").get_shape()
    scores = metrics.RegressionAccumulator()
    window_sse = []  # per window, before the residuals are rounded to the storage dtype: for the bootstrap
    metadata = output_metadata(config, layer=meta["layer"])
    with storage.StreamingTensorWriter(out_residual, "residual", (n_windows, length - 1, d_model), storage_dtype,
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
                   predictor_paths: Mapping[str, str], out_paths: Mapping[str, str],
                   storage_dtype_path: str | None = None, hidden_paths: Mapping[str, str] | None = None) -> None:
    """h_T, ĥ_T, r_T and h_mean of the probe windows, from states rounded through the storage dtype
    (``storage_dtype_path``: see :func:`pndecomp.config.storage_dtype`): from an LM pass of this job's
    own, or, given ``hidden_paths`` (``probes.shared_states``), from the probe windows' stored states."""
    outputs = {lm.parse_layer(name): path for name, path in out_paths.items()}
    batch_size, metadata = config["extraction"]["batch_size"], output_metadata(config)

    def predictors_on(device):
        return {lm.parse_layer(name): predictor.load_predictor(path, device) for name, path in predictor_paths.items()}

    if hidden_paths is not None:
        device = pnconfig.resolve_device(config["device"])
        extract.probe_features_from_states({lm.parse_layer(name): path for name, path in hidden_paths.items()},
                                           predictors_on(device), outputs, batch_size=batch_size, device=device,
                                           metadata=metadata)
        return
    tokens = extract.window_tokens(probe_windows_path)
    model, device = load_frozen_lm(config, materialized_dir, list(outputs), tokens.shape[1])
    extract.extract_probe_features(
        model, tokens, predictors_on(device), outputs, batch_size=batch_size,
        device=device, storage_dtype=pnconfig.storage_dtype(config, storage_dtype_path), metadata=metadata)
