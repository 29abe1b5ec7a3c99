"""A run's tables in Python: ``load("results/<experiment>")``.

Every table is a pandas DataFrame with the columns its file has (listed in each accessor's docstring;
the report captions in ``workflow/report/`` say what they mean). Columns that hold layer names
(``layer``, steering's ``probe_layer``) are ordered categoricals in model order, ``embed`` first, blocks
by number, ``final`` last, and rows are sorted by layer (stable, so the file's order within a layer is
kept): ``layer-15`` comes after ``layer-7``, not before it as text would have it.

Tables are read when asked for, so a half-finished run loads and its finished tables can be read; the
accessor of a missing table raises :class:`ResultsError` naming the file and the Snakemake target that
makes it. With a ``config.yaml``, the predictor names come from :func:`pndecomp.predictor_entries.predictor_names`
(which imports torch); without one, nothing here does.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from .claims import shown_verdict
from .doc_tables import interval

LAYER_COLUMNS = ("layer", "probe_layer")
# What a run's results/<experiment>/ holds from its first jobs on (a model study's: model_comparison.tsv).
RUN_MARKERS = ("config.yaml", "corpus", "windows", "metrics", "predictors", "model_comparison.tsv")
HOW_TO_MAKE = ("a run writes results/<experiment>/ (`snakemake --cores N all` makes results/embedded-smollm2/; "
               "`--configfile my.yaml` makes results/<its experiment>/)")


class ResultsError(FileNotFoundError):
    """A path that is not a run's results directory, or a table the run has not (yet) made."""


def layer_key(layer: object) -> tuple[int, int]:
    """Sort key of a layer name: ``embed``, then blocks by number, then ``final``."""
    name = str(layer)
    if name == "embed":
        return (0, 0)
    if name == "final":
        return (2, 0)
    if name.isdigit():
        return (1, int(name))
    raise ValueError(f"{layer!r} is not a layer name: valid are 'embed', a block number and 'final'")


def _is_layer_name(name: str) -> bool:
    return name in ("embed", "final") or name.isdigit()


def ordered_layers(values: Iterable) -> pd.Categorical:
    """Layer names as an ordered categorical (categories: the names present, in :func:`layer_key` order);
    missing values stay missing."""
    names = pd.Series(list(values), dtype=object).map(lambda value: value if pd.isna(value) else str(value))
    return pd.Categorical(names, categories=sorted(set(names.dropna()), key=layer_key), ordered=True)


def _in_layer_order(frame: pd.DataFrame, groups: tuple[str, ...] = ()) -> pd.DataFrame:
    """``frame`` with its layer columns ordered, rows sorted by ``groups`` (each in order of first appearance),
    then layer; stable."""
    frame = frame.copy()
    for column in LAYER_COLUMNS:
        if column in frame:
            frame[column] = ordered_layers(frame[column])
    ranks = {group: {value: rank for rank, value in enumerate(dict.fromkeys(frame[group]))} for group in groups}

    def key(column: pd.Series) -> pd.Series:
        return column.map(ranks[column.name]) if column.name in ranks else column

    return frame.sort_values([*groups, "layer"], kind="stable", key=key).reset_index(drop=True)


def _target(path: Path) -> str:
    """``path`` as a Snakemake target: from its ``results/`` component on when it has one (the workflow's
    outputs are relative to its working directory)."""
    parts = path.parts
    return str(Path(*parts[parts.index("results"):])) if "results" in parts else str(path)


def _is_run(path: Path) -> bool:
    return any((path / marker).exists() for marker in RUN_MARKERS)


@dataclass(frozen=True)
class Results:
    """One run's results directory: a single model's, or a model study's (its runs in :attr:`models`).

    ``config`` is the run's resolved config (``results/<experiment>/config.yaml``, written by the
    workflow), or None for a run made before the workflow wrote it: then predictors, layers and tasks
    are read off the files present, predictors in alphabetical order (so with several, name the one you
    mean), and the outputs' own metadata still record experiment, seed and model.
    """

    path: Path
    config: dict | None
    models: dict[str, Results] = field(default_factory=dict)

    # -- what the run holds

    @property
    def predictors(self) -> list[str]:
        """Predictor names, the first (the one figures 1-6 show) first."""
        self._single_model()
        if self.config is not None:
            from .predictor_entries import predictor_names

            return predictor_names(self.config)
        found = {entry.name for stage in ("predictors", "metrics", "probes", "interventions")
                 for entry in self._dirs(stage)}
        return sorted(found - {"baselines"})

    @property
    def layers(self) -> list[str]:
        """Layer names in model order: the config's (when it names blocks, not relative depths), else those
        of every ``layer-<ℓ>`` file and layer summary present."""
        self._single_model()
        configured = [str(layer) for layer in (self.config or {}).get("layers") or []]
        if configured and all(map(_is_layer_name, configured)):
            return sorted(configured, key=layer_key)
        names = {path.name.split(".")[0].removeprefix("layer-") for path in self.path.glob("**/layer-*")}
        for summary in self.path.glob("metrics/*/layer_summary.tsv"):
            names.update(pd.read_csv(summary, sep="\t", dtype={"layer": str}, usecols=["layer"])["layer"])
        return sorted(filter(_is_layer_name, names), key=layer_key)

    @property
    def tasks(self) -> list[str]:
        """Probe task names: the config's ``probes.tasks``, else the probe tables present."""
        self._single_model()
        if self.config is not None:
            return list(self.config["probes"]["tasks"])
        return sorted({path.stem for path in self.path.glob("probes/*/*.tsv")
                       if not path.stem.endswith("_differences")})

    # -- one predictor's tables

    def layer_summary(self, predictor: str | None = None) -> pd.DataFrame:
        """``metrics/<p>/layer_summary.tsv``, one row per layer: ``layer``, ``n_windows``, ``n_documents``,
        ``mse``, ``var``, ``r2`` with ``r2_lo``/``r2_hi`` (95 % bootstrap interval), ``r2_<baseline>`` with
        its interval for every baseline, ``best_baseline``, ``r2_minus_best`` with its interval, the same
        columns prefixed ``no_outliers_``, ``no_outlier_inputs_`` and ``late_positions_`` (the robust views),
        ``outlier_rows``, ``outlier_input_rows``, ``late_from_position`` and ``tail_sse_share_1pct`` (docs/results.md,
        "Numbers with context")."""
        return self._table(f"metrics/{self._predictor(predictor)}/layer_summary.tsv")

    def per_position(self, predictor: str | None = None) -> pd.DataFrame:
        """``metrics/<p>/per_position/layer-<ℓ>.parquet`` of every layer, one row per (layer, position
        2..T): ``layer``, ``position``, ``mse``, ``var``, ``r2``, ``n_windows``, ``spearman_rho``
        (ρ(‖r‖, surprisal)), ``spearman_rho_best_baseline``, ``spearman_rho_displacement``, and
        ``_lo``/``_hi`` bands of ``mse`` and each ρ."""
        return self._per_layer(f"metrics/{self._predictor(predictor)}/per_position/layer-{{layer}}.parquet")

    def learning_curves(self, predictor: str | None = None) -> pd.DataFrame:
        """``predictors/<p>/layer-<ℓ>/curve.parquet`` of every layer (figures 1-2): ``layer``, ``step``,
        ``lr``, ``train_loss``, ``windows_seen``, ``tokens_seen``, ``val_mse``, ``val_var``, ``val_r2``
        (on predictor_val; NaN between evaluations)."""
        return self._per_layer(f"predictors/{self._predictor(predictor)}/layer-{{layer}}/curve.parquet")

    def probes(self, task: str, predictor: str | None = None) -> pd.DataFrame:
        """``probes/<p>/<task>.tsv``, one row per (layer, representation h, h_mean, hhat, r, hhat_r):
        ``layer``, ``task``, ``representation``, ``C``, ``val_macro_f1``, ``test_macro_f1`` with
        ``test_macro_f1_lo``/``_hi``, ``test_micro_f1``, ``n_train``, ``n_val``, ``n_test``,
        ``n_classes``, ``n_classes_excluded``, ``n_test_documents``, ``n_resamples``, and for a task with
        a configured control ``control_task``, ``control_test_macro_f1``, ``selectivity`` with
        ``selectivity_lo``/``_hi``."""
        return self._table(f"probes/{self._predictor(predictor)}/{self._task(task)}.tsv")

    def probe_differences(self, task: str, predictor: str | None = None) -> pd.DataFrame:
        """``probes/<p>/<task>_differences.tsv``: ``layer``, ``task``, ``representation_a``,
        ``representation_b``, ``difference`` (test macro-F1 of a minus b: hhat − r, hhat − h,
        hhat − h_mean) with ``difference_lo``/``_hi``, ``n_test_documents``, ``n_resamples``."""
        return self._table(f"probes/{self._predictor(predictor)}/{self._task(task)}_differences.tsv")

    def patching(self, predictor: str | None = None) -> pd.DataFrame:
        """``interventions/<p>/patching.tsv``: ``layer``, ``kind`` (what replaces block ℓ's output),
        ``metric`` (``delta_ce``, ``kl``), ``scope`` (``position`` or ``pooled``), ``position`` (empty
        when pooled), ``mean``, ``low``, ``high`` (95 % interval), ``n_windows``, ``n_documents``."""
        return self._table(f"interventions/{self._predictor(predictor)}/patching.tsv",
                           why="it is made when interventions.enabled is true")

    def steering(self, predictor: str | None = None) -> pd.DataFrame:
        """``interventions/<p>/steering.tsv``: ``layer``, ``source`` (``hhat`` or ``r``), ``scope``,
        ``domain`` (``all`` pools every domain), ``alpha``, ``added_norm``, ``metric`` (``p_domain``,
        ``delta_ce_other``, ``delta_logprob_domain``), ``probe_layer`` (where ``p_domain`` is read; empty
        otherwise), ``mean``, ``low``, ``high``, ``n_windows``."""
        return self._table(f"interventions/{self._predictor(predictor)}/steering.tsv",
                           why="it is made when interventions are enabled with steering layers")

    # -- across predictors, models, claims

    def predictor_comparison(self) -> pd.DataFrame:
        """``metrics/predictor_comparison.tsv``, rows by model then layer: ``model`` (a predictor or a
        baseline), ``kind`` (``predictor``, ``baseline``), ``layer``, ``r2``, ``r2_lo``, ``r2_hi``,
        ``n_windows``, ``parameters``, ``train_seconds``, ``steps``, ``seconds_per_1000_steps``,
        ``r2_per_million_parameters`` (the last five empty for baselines)."""
        self._single_model()
        return self._table("metrics/predictor_comparison.tsv", groups=("model",),
                           why="it is made when two or more predictors are configured")

    def model_comparison(self) -> pd.DataFrame:
        """A model study's ``model_comparison.tsv``, rows by model, metric, then layer: ``model``,
        ``layer``, ``depth`` (relative depth), ``metric`` (``eval R²`` and the probe gaps), ``value``,
        ``lo``, ``hi``."""
        return self._table("model_comparison.tsv", groups=("model", "metric"),
                           why="it is made by a model study (config `models:`)")

    def seed_claims(self) -> pd.DataFrame:
        """``seed_claims.tsv`` (with ``train.seeds``): per claim, configured entry and layers, each seed's value
        and verdict, their mean, the pooled interval over units and seeds, and the verdict across seeds."""
        return self._table("seed_claims.tsv", why="it is made when train.seeds is set")

    def robustness(self) -> pd.DataFrame:
        """A model study's ``robustness.tsv``: per claim and layer group, the verdict counts over the trained
        settings and the untrained control's, where the claim fails and the one-word ``reading``."""
        return self._table("robustness.tsv", why="it is made by a model study (config `models:`)").fillna(
            {"layer_group": "", "fails_at": ""})

    def claims(self) -> pd.DataFrame:
        """The claims scorecard, ``claims.tsv``, as written, with ``shown``: the verdict as the docs' card
        shows it, marked "(not converged)" where a predictor behind the row stopped at its step cap. Runs
        made before the scorecard existed have none (ResultsError)."""
        path = self.path / "claims.tsv"
        if not path.is_file():
            raise ResultsError(f"{path}: no claims scorecard in this run (runs made before the workflow wrote "
                               "claims.tsv have none)")
        card = pd.read_csv(path, sep="\t", dtype={"layers": str})  # a layer ("7") or a group ("0 vs 7, 15")
        converged = card["converged"] if "converged" in card else pd.Series(None, index=card.index)
        return card.assign(shown=[shown_verdict(verdict, done)
                                  for verdict, done in zip(card["verdict"], converged, strict=True)])

    def training(self, predictor: str | None = None) -> pd.DataFrame:
        """How each layer's predictor was trained, from its weights' metadata: ``layer``, ``last_step``,
        ``kept_step``, ``lr_decays``, ``hit_cap`` and ``converged`` (stopped by its validation plateau, not
        the ``train.steps`` cap; closed-form fits count as converged, with steps 0)."""
        from .claims_files import converged
        from .storage import load_metadata

        rows = []
        paths = self._layer_paths(f"predictors/{self._predictor(predictor)}/layer-{{layer}}/predictor.safetensors")
        for layer, path in paths.items():
            metadata = load_metadata(path)
            stop = metadata.get("stop") or {"last_step": 0, "kept_step": 0, "hit_cap": False}
            rows.append({"layer": layer, "last_step": stop["last_step"], "kept_step": stop["kept_step"],
                         "lr_decays": stop.get("lr_decays", 0), "hit_cap": stop["hit_cap"],
                         "converged": converged(metadata)})
        return _in_layer_order(pd.DataFrame(rows))

    # -- helpers

    def _single_model(self) -> None:
        if self.models:
            first = next(iter(self.models))
            raise ResultsError(f"{self.path} is a model study of {list(self.models)}: each model's tables are in "
                               f"its own run, e.g. .models[{first!r}].layer_summary()")

    def _dirs(self, stage: str) -> list[Path]:
        directory = self.path / stage
        return [entry for entry in directory.iterdir() if entry.is_dir()] if directory.is_dir() else []

    def _predictor(self, predictor: str | None) -> str:
        names = self.predictors
        if predictor is None:
            if self.config is None and len(names) > 1:
                raise ResultsError(f"{self.path} has predictors {names} and no config.yaml to say which is the "
                                   f"first: name one, e.g. predictor={names[0]!r}")
            if not names:
                raise ResultsError(f"{self.path}: no predictor outputs yet (predictors/<predictor>/, "
                                   f"metrics/<predictor>/): the run is unfinished; {HOW_TO_MAKE}")
            return names[0]
        if predictor not in names:
            raise ResultsError(f"{self.path}: no predictor {predictor!r}; this run has {names}")
        return predictor

    def _task(self, task: str) -> str:
        if task not in self.tasks:
            raise ResultsError(f"{self.path}: no probe task {task!r}; this run has {self.tasks}")
        return task

    def _missing(self, paths: list[Path], why: str | None = None) -> ResultsError:
        reason = why or "the run is unfinished"
        targets = " ".join(_target(path) for path in paths)
        return ResultsError(f"{self.path}: missing {', '.join(str(path.relative_to(self.path)) for path in paths)} "
                            f"({reason}); `snakemake {targets}` makes {'it' if len(paths) == 1 else 'them'} "
                            "(with the run's --configfile)")

    def _read(self, path: Path, groups: tuple[str, ...]) -> pd.DataFrame:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep="\t", dtype=dict.fromkeys(LAYER_COLUMNS, str))
        return _in_layer_order(frame, groups) if "layer" in frame else frame

    def _table(self, relative: str, groups: tuple[str, ...] = (), why: str | None = None) -> pd.DataFrame:
        path = self.path / relative
        if not path.is_file():
            raise self._missing([path], why)
        return self._read(path, groups)

    def _layer_paths(self, pattern: str) -> dict[str, Path]:
        """{layer: the file of ``pattern`` (a ``{layer}`` field)} for every layer; ResultsError if one is missing."""
        layers = self.layers
        paths = {layer: self.path / pattern.format(layer=layer) for layer in layers}
        missing = [path for path in paths.values() if not path.is_file()]
        if missing or not layers:
            raise self._missing(missing or [self.path / pattern.format(layer="<layer>")])
        return paths

    def _per_layer(self, pattern: str) -> pd.DataFrame:
        """The per-layer files of ``pattern`` (a ``{layer}`` field) stacked in layer order, each row
        with its ``layer``."""
        paths = self._layer_paths(pattern)
        frames = [pd.read_parquet(path).assign(layer=layer) for layer, path in paths.items()]
        frame = pd.concat(frames, ignore_index=True)
        return _in_layer_order(frame[["layer", *(column for column in frame if column != "layer")]])


def _read_config(path: Path) -> dict | None:
    config_path = path / "config.yaml"
    return yaml.safe_load(config_path.read_text()) if config_path.is_file() else None


def _study_runs(path: Path, config: dict | None) -> dict[str, Results]:
    """A model study's runs by model name: the study config's ``models``, else the runs in ``path`` whose own
    config.yaml names them ``<study>/<model>``, or all runs in it once ``model_comparison.tsv`` is there."""
    if config is not None and config.get("models"):
        from .config import model_configs

        study = model_configs(config)
        return {name: Results(path / name, _read_config(path / name) or study[name]) for name in study}
    compared = (path / "model_comparison.tsv").is_file()
    runs = {}
    for entry in sorted(path.iterdir()):
        own = _read_config(entry) if entry.is_dir() else None
        named = own is not None and entry.as_posix().endswith(f"/{own.get('experiment')}")
        if named or (compared and entry.is_dir() and _is_run(entry)):
            runs[entry.name] = Results(entry, own)
    return runs


def load(path: str | os.PathLike) -> Results:
    """The results of the run at ``path`` (``results/<experiment>``); raises ResultsError when ``path`` is
    not a run's results directory. A model study's runs are in ``.models`` (each with its own config.yaml,
    else the study config's view of its model)."""
    path = Path(path)
    if not path.is_dir():
        raise ResultsError(f"{path} does not exist or is not a directory: {HOW_TO_MAKE}")
    config = _read_config(path)
    models = _study_runs(path, config)
    if not models and not _is_run(path):
        runs = sorted(str(entry) for entry in path.iterdir() if entry.is_dir() and _is_run(entry))
        beside = f"; results directories in it: {runs}" if runs else ""
        raise ResultsError(f"{path} is not a run's results directory: it has none of {list(RUN_MARKERS)}; "
                           f"{HOW_TO_MAKE}{beside}")
    return Results(path, config, models)


def layer_table(run: Results, predictor: str | None = None, baselines: Iterable[str] = ("ridge_ar1", "ridge_ar4"),
                mask: str = "") -> str:
    """Markdown: per layer, the predictor's eval R² [95 %], each of ``baselines``' R² [95 %], the paired
    difference to the best baseline (named), and how training ended (last / kept step, converged), from
    the layer summary and the weights' metadata; ``mask`` a robust view's prefix (``no_outliers_``)."""
    summary = run.layer_summary(predictor).set_index("layer")
    training = run.training(predictor).set_index("layer")
    names = list(baselines)
    lines = [f"| block | predictor | {' | '.join(names)} | predictor − best baseline | stopped / kept, converged |",
             "|" + "---|" * (4 + len(names))]
    for layer, row in summary.iterrows():
        cells = [interval(*row[[f"{mask}{stem}", f"{mask}{stem}_lo", f"{mask}{stem}_hi"]])
                 for stem in ("r2", *(f"r2_{name}" for name in names))]
        difference = row[[f"{mask}r2_minus_best", f"{mask}r2_minus_best_lo", f"{mask}r2_minus_best_hi"]]
        cells.append(f"{interval(*difference, signed=True)} ({row[f'{mask}best_baseline']})")
        stop = training.loc[layer]
        cells.append(f"{stop['last_step']:,} / {stop['kept_step']:,}, {'yes' if stop['converged'] else 'no'}")
        lines.append(f"| {layer} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.results RUN [--predictor P] [--mask no_outliers]``: docs/results.md's per-layer table of
    a run (eval R² of the predictor and the ridge baselines with intervals, the difference to the best
    baseline, how training ended), as Markdown."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run", help="a run's results directory, e.g. results/embedded-smollm2")
    parser.add_argument("--predictor", help="a predictor entry (default: the run's first)")
    parser.add_argument("--mask", choices=["no_outliers", "no_outlier_inputs", "late_positions"],
                        help="a robust view instead of all rows")
    args = parser.parse_args(argv)
    print(layer_table(load(args.run), args.predictor, mask=f"{args.mask}_" if args.mask else ""), end="")


if __name__ == "__main__":
    main()
