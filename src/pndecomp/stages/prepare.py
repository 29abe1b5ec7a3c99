"""The preparing stages: the materialized model and tokenizer, the embedded corpus, the windows of every
split, and the LM's hidden states of a split (one pass over every configured layer)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from .. import config as pnconfig
from .. import corpus, extract, lm, model_files, storage, tasks, token_store, windows
from ..embedded_corpus import build_embedded_corpus  # the name embedded_corpus is a stage here
from ..splits import PREDICTOR_SPLITS
from .common import load_frozen_lm, model_source, output_metadata

log = logging.getLogger(__name__)


def materialize_model(config: Mapping, out_dir: str) -> None:
    lm.materialize(model_files.resolve_source(config["model"]), out_dir)


def materialize_tokenizer(config: Mapping, out_dir: str) -> None:
    lm.materialize_tokenizer(model_files.resolve_source(config["model"]), out_dir)


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
    layers = [model_files.parse_layer(name) for name in out_paths]
    storage_dtype = None if out_storage_dtype else pnconfig.storage_dtype(config, storage_dtype_path)
    tokens = extract.window_tokens(windows_path)
    model, device = load_frozen_lm(config, materialized_dir, layers, tokens.shape[1])
    metadata = output_metadata(config)
    choice = extract.extract_hidden_states(
        model, tokens, layers,
        {model_files.parse_layer(name): path for name, path in out_paths.items()},
        surprisal_path=surprisal_path, batch_size=config["extraction"]["batch_size"], device=device,
        storage_dtype=storage_dtype, metadata=metadata)
    if out_storage_dtype:
        storage.write_json({**choice, "metadata": metadata}, out_storage_dtype)
