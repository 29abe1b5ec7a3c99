"""The claims scorecard's files: a run's tables read into :class:`~pndecomp.claims.RunTables`, the scorecard
of a run (the ``claims`` rule) and of a study (``study_claims``) written (:mod:`pndecomp.claims` holds the
claims and the verdict rule)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from . import storage
from .claims import COLUMNS, RunTables, scorecard


def converged(weights_metadata: Mapping) -> bool:
    """A predictor's weights came from a converged fit: stopped by its validation plateau before the
    ``train.steps`` cap (the ``stop`` summary training writes), or fitted in closed form (``fit``)."""
    if "fit" in weights_metadata:
        return True
    stop = weights_metadata.get("stop") or {}
    return bool(stop.get("stopping_rule")) and not stop.get("hit_cap", True)


def read_run(predictor: str, layers: Sequence[str], summary_path: str, per_position_paths: Mapping[str, str],
             probe_paths: Mapping[str, str], difference_paths: Mapping[str, str], patching_path: str | None,
             missing: Mapping[str, str] | None = None, kind: str = "",
             weights_paths: Mapping[str, str] | None = None) -> RunTables:
    """One predictor's :class:`RunTables` from the files the workflow wrote (``weights_paths``: layer ->
    predictor weights, whose metadata says whether training converged)."""
    read = lambda path: pd.read_csv(path, sep="\t", dtype={"layer": str})  # noqa: E731
    return RunTables(
        predictor, [str(layer) for layer in layers], read(summary_path),
        {layer: storage.parquet_metadata(path).get("trends", {}) for layer, path in per_position_paths.items()},
        {task: read(path) for task, path in probe_paths.items()},
        {task: read(path) for task, path in difference_paths.items()},
        read(patching_path) if patching_path else None, dict(missing or {}), kind,
        {layer: converged(storage.load_metadata(path)) for layer, path in (weights_paths or {}).items()})


def write_scorecard(predictors: Mapping[str, str], layers: Sequence[str], tasks: Sequence[str],
                    patterns: Mapping[str, str], missing: Mapping[str, str], out_path: str) -> None:
    """The claims rule: every predictor's tables (``predictors``: entry name -> kind), found by ``patterns``
    (``summary``, ``per_position``, ``probes``, ``differences``, ``weights`` and, with interventions,
    ``patching``; fields ``{predictor}``, ``{layer}``, ``{task}``), scored into ``out_path``."""
    from .results import layer_key

    layers = sorted(map(str, layers), key=layer_key)
    runs = []
    for predictor, predictor_kind in predictors.items():
        paths = {kind: pattern.replace("{predictor}", predictor) for kind, pattern in patterns.items()}
        runs.append(read_run(
            predictor, layers, paths["summary"],
            {layer: paths["per_position"].format(layer=layer) for layer in layers},
            {task: paths["probes"].format(task=task) for task in tasks},
            {task: paths["differences"].format(task=task) for task in tasks}, paths.get("patching"), missing,
            predictor_kind, {layer: paths["weights"].format(layer=layer) for layer in layers}))
    storage.write_tsv(scorecard(runs), out_path)


def write_study_scorecard(cards: Mapping[str, str], out_path: str, dimension: str = "model") -> None:
    """A study's one scorecard across its dimension: each run's claims.tsv (``cards``: name -> path),
    stacked with the run's name in a first column ``dimension``."""
    frames = [pd.read_csv(path, sep="\t", dtype={"layers": str}).assign(**{dimension: name})
              for name, path in cards.items()]
    card = pd.concat(frames, ignore_index=True)
    storage.write_tsv(card[[dimension, *COLUMNS]], out_path)
