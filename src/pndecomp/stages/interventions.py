"""The intervention stages: patching and steering at one layer of one predictor, and the
tables that stack the layers. The interventions themselves are :mod:`pndecomp.interventions`."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file

from .. import baselines, bootstrap, lm, model_files, patching, predictor, steering, storage, tasks
from ..storage import hidden_batches
from ..windows import tokens_array
from .common import baseline_train_batches, load_frozen_lm, output_metadata

log = logging.getLogger(__name__)


STEERING_TASK = "domain"  # the probe task whose windows and labels define the steering directions


def spread_windows(documents: Sequence, n: int, seed: int) -> np.ndarray:
    """``n`` rows, sorted, drawn so that every document gives one window before any gives a second: the
    rows in a seeded random order, stably sorted by how many windows of the same document come before
    them in that order."""
    documents = np.asarray(documents)
    if not 1 <= n <= len(documents):
        raise ValueError(f"cannot pick {n} of {len(documents)} windows")
    order = np.random.default_rng([seed, len(documents), 0x5EED]).permutation(len(documents))
    rank = pd.Series(documents[order]).groupby(documents[order], sort=False).cumcount().to_numpy()
    return np.sort(order[np.argsort(rank, kind="stable")[:n]])


def stored_rows(path: str, rows: np.ndarray, batch_size: int) -> torch.Tensor:
    """hidden[rows] [len(rows), T, d] of a stored states file, ``rows`` ascending, read a batch at a time."""
    parts, start = [], 0
    for batch in hidden_batches(path, batch_size):
        inside = rows[(rows >= start) & (rows < start + len(batch))] - start
        if len(inside):
            parts.append(batch[torch.from_numpy(inside)])
        start += len(batch)
    return torch.cat(parts)


def patch_layer(config: Mapping, materialized_dir: str | None, layer: str, eval_windows_path: str,
                eval_hidden_path: str, predictor_path: str, train_data_path: str, out_path: str,
                storage_dtype_path: str | None = None) -> None:
    """Every patch of :data:`pndecomp.patch_kinds.PATCHES` at block ``layer`` on
    ``interventions.patching_windows`` eval windows (one per document first), from their stored clean
    states: ΔCE and KL per position and pooled, with intervals from resampling split units."""
    section, batch_size = config["interventions"], config["extraction"]["batch_size"]
    windows = pd.read_parquet(eval_windows_path, columns=["window_id", "doc_id", bootstrap.UNIT, "tokens"])
    rows = spread_windows(windows["doc_id"].to_numpy(), section["patching_windows"], config["seed"])
    tokens = tokens_array(windows.iloc[rows])
    hidden = stored_rows(eval_hidden_path, rows, batch_size)
    # The `mean` patch: the mean baseline's train mean (the same predictor_train windows).
    train_batches = baseline_train_batches(config, materialized_dir, layer, train_data_path, storage_dtype_path)
    train_mean = baselines.make_baseline("mean").fit(train_batches()).mean_
    parsed = model_files.parse_layer(layer)
    model, device = load_frozen_lm(config, materialized_dir, [parsed], tokens.shape[1])
    scores = patching.patching_scores(
        model, parsed, tokens, hidden, predictor.load_predictor(predictor_path, device), train_mean,
        from_position=section["from_position"], recompute_hhat=section["recompute_hhat"],
        batch_size=section["batch_size"], seed=config["seed"])
    table = patching.patching_table(scores, windows[bootstrap.UNIT].to_numpy()[rows], layer=parsed,
                                         n_resamples=config["metrics"]["bootstrap"], seed=config["seed"])
    pooled = table[(table["scope"] == "pooled") & (table["metric"] == "delta_ce")]
    log.info("layer %s, pooled ΔCE (nats): %s", layer, dict(zip(pooled["kind"], pooled["mean"].round(4))))
    storage.write_parquet(table, out_path, output_metadata(
        config, layer=parsed, windows=windows["window_id"].iloc[rows].tolist(),
        clean_ce=float(scores.clean_ce.mean()), partner=scores.partner.tolist()))


def steered_windows(labels: np.ndarray, documents: np.ndarray, candidates: np.ndarray, per_domain: int,
                    seed: int) -> np.ndarray:
    """Up to ``per_domain`` of the ``candidates`` rows of every domain, one per document first; sorted."""
    chosen = []
    for domain in sorted(set(labels[candidates])):
        mine = candidates[labels[candidates] == domain]
        chosen.extend(mine[spread_windows(documents[mine], min(per_domain, len(mine)), seed)])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def steer_layer(config: Mapping, materialized_dir: str | None, layer: str, probe_windows_path: str,
                feature_paths: Mapping[str, str], out_path: str) -> None:
    """Steering at block ``layer``: per domain, its mean ĥ_T (and, apart, r_T) over the domain task's
    probe_train windows minus the overall mean, added at ``interventions.alphas`` × the median ‖h_t‖ to
    ``interventions.steering_windows_per_domain`` probe_test windows per domain; the domain probe
    (fit on h_T of probe_train) reads the steered h_T at each layer of ``feature_paths`` (the steered
    layer first: its directions come from its features)."""
    section = config["interventions"]
    task = tasks.get(STEERING_TASK)
    frame = pd.read_parquet(probe_windows_path,
                            columns=["window_id", "doc_id", bootstrap.UNIT, "split", task.label_column,
                                     f"in_{task.name}", "tokens"])
    member, labels = frame[f"in_{task.name}"].to_numpy(), frame[task.label_column].to_numpy()
    documents = frame["doc_id"].to_numpy()
    train = np.flatnonzero(member & (frame["split"] == "probe_train").to_numpy())
    test = np.flatnonzero(member & (frame["split"] == "probe_test").to_numpy())
    features = {name: load_file(path) for name, path in feature_paths.items()}
    here = features[layer]
    directions = {source: steering.domain_directions(here[source][train], labels[train])
                  for source in ("hhat", "r")}
    probes = {model_files.parse_layer(name): steering.fit_domain_probe(
        values["h"][train], labels[train], seed=config["seed"], max_iter=config["probes"]["max_iter"])
        for name, values in features.items()}
    rows = steered_windows(labels, documents, test, section["steering_windows_per_domain"], config["seed"])
    tokens = tokens_array(frame.iloc[rows])
    parsed = model_files.parse_layer(layer)
    model, device = load_frozen_lm(config, materialized_dir, [parsed], tokens.shape[1])
    capture = lm.ResidualCapture(model, [parsed])
    with torch.no_grad():
        # The caller moves the token ids, as every ResidualCapture user does (on CUDA, ids on the CPU fail).
        batch_size = section["batch_size"]
        hidden = torch.cat([capture.run(torch.from_numpy(tokens[start:start + batch_size]).to(device))[parsed]
                            for start in range(0, len(tokens), batch_size)])
    scale = steering.typical_norm(hidden, section["from_position"])
    table = steering.steering_scores(
        model, parsed, tokens, hidden, labels[rows], frame[bootstrap.UNIT].to_numpy()[rows], directions, scale=scale,
        alphas=section["alphas"], probes=probes, from_position=section["from_position"],
        batch_size=section["batch_size"], n_resamples=config["metrics"]["bootstrap"], seed=config["seed"])
    storage.write_parquet(table, out_path, output_metadata(
        config, layer=parsed, scale=scale, windows=frame["window_id"].iloc[rows].tolist(),
        direction_norms={source: {str(domain): float(np.linalg.norm(vector)) for domain, vector in per.items()}
                         for source, per in directions.items()}))


def intervention_table(paths: Sequence[str], out_path: str) -> None:
    """The layers' tables (config order) as one TSV."""
    frames = [pd.read_parquet(path) for path in paths]
    storage.write_tsv(pd.concat(frames, ignore_index=True), out_path)
