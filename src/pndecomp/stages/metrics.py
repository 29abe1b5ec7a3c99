"""The metric stages: the baselines' scores, the layer scores with intervals, the per-position metrics and
the layer summary. Hidden states are read one batch at a time."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from .. import baselines, bootstrap, lm, metrics, model_files, scoring, storage
from .. import config as pnconfig
from ..storage import hidden_batches
from .common import baseline_train_batches, hidden_and_residual_batches, model_source, output_metadata

log = logging.getLogger(__name__)


TAIL_ROWS = 20  # rows of the tail table: the largest squared errors of a layer


def score_baselines(config: Mapping, materialized_dir: str | None, layer: str, train_data_path: str,
                    eval_hidden_path: str, out_path: str, storage_dtype_path: str | None = None) -> None:
    """Fit every configured baseline on at most ``metrics.baseline_train_windows`` predictor_train windows
    and record its squared error on every eval row (the predictor's rows: positions 2..T): per window its
    SSE (``sse_<name>``) and its rows' ‖h − ĥ‖² (``row_sq_<name>``, a list of T−1 values), from which the
    layer scores take any mask of rows and the per-position metrics the baseline's ‖residual‖."""
    section, batch_size = config["metrics"], config["extraction"]["batch_size"]
    train_batches = baseline_train_batches(config, materialized_dir, layer, train_data_path, storage_dtype_path)
    device = pnconfig.resolve_device(config["device"])
    columns, fitted = {}, {}
    for name in section["baselines"]:
        baseline = baselines.make_baseline(name, device).fit(train_batches())
        row_sq = np.concatenate([_row_sq(baseline, baseline.hidden(batch))
                                 for batch in hidden_batches(eval_hidden_path, batch_size)])
        columns[f"sse_{name}"] = row_sq.sum(axis=1)
        columns[f"row_sq_{name}"] = list(row_sq)
        fitted[name] = {key: getattr(baseline, key) for key in ("alpha_", "lambda_", "n_train_rows_")
                        if hasattr(baseline, key)}
        log.info("baseline %s fitted: %s", name, fitted[name])
    storage.write_parquet(pd.DataFrame(columns), out_path,
                          output_metadata(config, layer=model_files.parse_layer(layer), baselines=fitted))


def _row_sq(baseline: baselines.Baseline, hidden) -> np.ndarray:
    """‖h − ĥ‖² [windows, T−1] of a batch already on the baseline's device and in its dtype (moved there once)."""
    return ((hidden[:, 1:] - baseline.predict_tensor(hidden)) ** 2).sum(dim=2).double().cpu().numpy()


def baseline_row_sq(baselines_path: str) -> dict[str, np.ndarray]:
    """{baseline: ‖h − ĥ‖² [W, T−1]} of every eval row, from :func:`score_baselines`' table."""
    table = pd.read_parquet(baselines_path)
    return {column.removeprefix("row_sq_"): np.stack(table[column].to_numpy())
            for column in table.columns if column.startswith("row_sq_")}


#: The robust views: R² of the predictor and of every baseline over the rows each mask keeps: targets
#: whose ‖h_{t+1}‖ is not an outlier, predictions whose input ‖h_t‖ is not (a massive first-position or
#: attention-sink state as input), positions after the first few.
MASKS = ("no_outliers", "no_outlier_inputs", "late_positions")


def layer_scores(config: Mapping, tokenizer_dir: str | None, eval_hidden_path: str, residual_path: str,
                 eval_scores_path: str, baselines_path: str, eval_windows_path: str, out_scores: str,
                 out_tail: str) -> None:
    """The layer's R² beside its baselines with bootstrap intervals (by split unit) and the paired
    difference to the best baseline, on all rows and under each of :data:`MASKS` (rows whose ‖h‖ is at
    most ``metrics.outlier_norm_ratio`` × the median; positions after ``metrics.hide_first_positions``),
    the SSE share of its worst 1 % of rows, and its worst rows."""
    section, batch_size = config["metrics"], config["extraction"]["batch_size"]
    stats = scoring.WindowStats()
    for hidden, residual in hidden_and_residual_batches(eval_hidden_path, residual_path, batch_size):
        stats.update(hidden, residual)
    arrays = stats.arrays()
    row_sq = {"predictor": arrays["residual_sq"], **baseline_row_sq(baselines_path)}
    windows = pd.read_parquet(eval_windows_path, columns=["window_id", bootstrap.UNIT, "tokens"])
    units = windows[bootstrap.UNIT].to_numpy()
    eval_scores = storage.read_json(eval_scores_path)
    # The predictor's SSE per window as the metric code accumulated it; the baselines' from their rows.
    sse = {"predictor": np.asarray(eval_scores["window_sse"]),
           **{name: rows.sum(axis=1) for name, rows in row_sq.items() if name != "predictor"}}
    result = scoring.r2_with_intervals(sse, arrays["n"], arrays["mean"], arrays["m2"], units, section["bootstrap"],
                                       config["seed"])
    threshold = section["outlier_norm_ratio"] * float(np.median(arrays["target_norm"]))
    keep = arrays["target_norm"] <= threshold
    input_threshold = section["outlier_norm_ratio"] * float(np.median(arrays["input_norm"]))
    typical_input = arrays["input_norm"] <= input_threshold
    positions = np.arange(2, keep.shape[1] + 2)
    late = np.broadcast_to(positions > section["hide_first_positions"], keep.shape)
    masks = dict(zip(MASKS, (keep, typical_input, late), strict=True))
    # The median ‖h‖ needs the first pass, so the masked statistics take a second one, every mask at once.
    masked = scoring.MaskedWindowStats(masks)
    for hidden in hidden_batches(eval_hidden_path, batch_size):
        masked.update(hidden)
    for name, kept in masks.items():
        result[name] = scoring.r2_with_intervals({model: (rows * kept).sum(axis=1) for model, rows in row_sq.items()},
                                                 *masked.arrays(name), units, section["bootstrap"], config["seed"])
    result["no_outliers"].update(rows_removed=int((~keep).sum()), norm_threshold=threshold)
    result["no_outlier_inputs"].update(rows_removed=int((~typical_input).sum()), norm_threshold=input_threshold)
    result["late_positions"].update(from_position=section["hide_first_positions"] + 1)
    result["tail_sse_share_1pct"] = scoring.tail(arrays["residual_sq"])
    result["eval_scores"] = {key: eval_scores[key] for key in ("mse", "var", "r2")}
    layer = storage.load_metadata(residual_path)["layer"]
    storage.write_json({**result, "layer": layer, "metadata": output_metadata(config, layer=layer)}, out_scores)

    tokenizer = lm.load_tokenizer(model_source(config, tokenizer_dir))
    total = arrays["residual_sq"].sum()
    rows = []
    for rank, (window, row) in enumerate(scoring.worst_rows(arrays["residual_sq"], TAIL_ROWS)):
        rows.append({"rank": rank + 1, "window_id": windows["window_id"].iat[window], "position": row + 2,
                     "token": tokenizer.decode([int(windows["tokens"].iat[window][row + 1])]),
                     "h_norm": arrays["target_norm"][window, row],
                     "r_norm": float(np.sqrt(arrays["residual_sq"][window, row])),
                     "sse_share": arrays["residual_sq"][window, row] / total})
    storage.write_tsv(pd.DataFrame(rows), out_tail)


class _PositionVariance:
    """Per position, the per-dimension variance of h across windows (Chan's merge over batches)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, target: np.ndarray) -> None:  # [batch, P, d] float64
        n_b, mean_b = target.shape[0], target.mean(axis=0)
        m2_b = ((target - mean_b) ** 2).sum(axis=0)
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / n)
        self.mean = self.mean + delta * (n_b / n)
        self.n = n

    def var(self) -> np.ndarray:
        """[P]: variance across windows, averaged over dimensions."""
        return self.m2.mean(axis=-1) / self.n


def per_position_metrics(config: Mapping, eval_hidden_path: str, residual_path: str, surprisal_path: str,
                         eval_windows_path: str, out_path: str, baselines_path: str | None = None) -> None:
    """MSE_p, Var_p, R²_p = 1 − MSE_p/Var_p and Spearman ρ_p(‖r_p‖, s_p) across eval windows for every
    position p = 2..T, with 95 % bootstrap bands (by split unit) for MSE_p and ρ_p.

    Beside the predictor's ρ, the same ρ for two residuals that need no learned predictor, so a reader
    sees whether the correlation belongs to the predictor or to h itself: the plain displacement
    ‖h_{t+1} − h_t‖ (``spearman_rho_displacement``) and, with ``baselines_path``, the residual of the
    baseline with the smallest eval SSE (``spearman_rho_best_baseline``; its name in the metadata)."""
    residual_sq, displacement_sq, variance = [], [], _PositionVariance()
    for hidden, residual in hidden_and_residual_batches(eval_hidden_path, residual_path,
                                                        config["extraction"]["batch_size"]):
        residual_sq.append((residual.double() ** 2).sum(dim=-1).numpy())
        displacement_sq.append(((hidden[:, 1:].double() - hidden[:, :-1].double()) ** 2).sum(dim=-1).numpy())
        variance.update(hidden[:, 1:].double().numpy())
    residual_sq = np.concatenate(residual_sq)  # [W, P]
    d_model = variance.mean.shape[-1]
    surprisal = next(hidden_batches(surprisal_path, len(residual_sq), "surprisal")).numpy()
    norms = {"spearman_rho": np.sqrt(residual_sq),
             "spearman_rho_displacement": np.sqrt(np.concatenate(displacement_sq))}
    extra = {}
    if baselines_path is not None:
        row_sq = baseline_row_sq(baselines_path)
        best = min(row_sq, key=lambda name: row_sq[name].sum())
        norms["spearman_rho_best_baseline"] = np.sqrt(row_sq[best])
        extra["best_baseline"] = best
    mse = residual_sq.mean(axis=0) / d_model
    frame = pd.DataFrame({
        "position": np.arange(2, residual_sq.shape[1] + 2), "mse": mse,
        **{column: metrics.spearman_per_position(values, surprisal) for column, values in norms.items()},
        "var": variance.var(), "r2": 1.0 - mse / variance.var(), "n_windows": len(residual_sq)})
    trends = {name: {"value": float(value)} for name, value in position_trends(frame).items()}
    n_resamples = config["metrics"]["bootstrap"]
    if n_resamples:
        units = pd.read_parquet(eval_windows_path, columns=[bootstrap.UNIT])[bootstrap.UNIT].to_numpy()
        group, n_groups = bootstrap.groups_of(units)
        samples = {column: [] for column in ("mse", *norms)}
        for counts in bootstrap.resample_counts(n_groups, n_resamples, config["seed"]):
            rows = bootstrap.resample_rows(group, counts)
            samples["mse"].append(residual_sq[rows].mean(axis=0) / d_model)
            for column, values in norms.items():
                samples[column].append(metrics.spearman_per_position(values[rows], surprisal[rows]))
        samples = {column: np.stack(values) for column, values in samples.items()}
        for column, values in samples.items():
            frame[f"{column}_lo"], frame[f"{column}_hi"] = bootstrap.interval(values)
        # Each trend from the same resamples as the bands: the interval of a slope, not of a point.
        for name, values in position_trends(samples).items():
            trends[name]["lo"], trends[name]["hi"] = (float(bound) for bound in bootstrap.interval(values))
    layer = storage.load_metadata(residual_path)["layer"]
    storage.write_parquet(frame, out_path, {**output_metadata(config), "layer": layer, **extra, "trends": trends})


def position_trends(curves: Mapping) -> dict[str, np.ndarray]:
    """What the claims scorecard reads of the per-position curves (``curves``: the columns ``mse``,
    ``spearman_rho``, ``spearman_rho_displacement`` and maybe ``spearman_rho_best_baseline``, each [P] or
    [resamples, P]):

    - ``mse_slope``: the change of MSE_p across the window as a fraction of its mean
      (:func:`pndecomp.metrics.position_slope`, relative); negative when MSE falls with position;
    - ``rho_slope``: the change of ρ_p across the window; ``rho_mean``: ρ_p averaged over positions;
    - ``rho_minus_displacement`` (and ``rho_minus_best_baseline``): the predictor's ρ_p minus the same ρ for
      the plain displacement ‖h_{t+1} − h_t‖ (for the best baseline's residual), averaged over positions.
    """
    rho = np.asarray(curves["spearman_rho"], dtype=np.float64)
    with warnings.catch_warnings():  # a position whose ρ is undefined in every resample is left out
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        trends = {"mse_slope": metrics.position_slope(curves["mse"], relative=True),
                  "rho_slope": metrics.position_slope(rho), "rho_mean": np.nanmean(rho, axis=-1)}
        for name, column in (("displacement", "spearman_rho_displacement"),
                             ("best_baseline", "spearman_rho_best_baseline")):
            if column in curves:
                trends[f"rho_minus_{name}"] = np.nanmean(rho - np.asarray(curves[column], dtype=np.float64), axis=-1)
    return trends


def score_columns(scores: Mapping, prefix: str = "") -> dict:
    """Layer-summary columns of one view (all rows, or a mask's with ``prefix`` = ``"<mask>_"``):
    ``r2`` (the predictor) and ``r2_<baseline>``, each with ``_lo``/``_hi``; ``best_baseline`` and
    ``r2_minus_best`` with its paired interval; every name prefixed."""
    columns = {}
    # The predictor first, then the baselines in their stored (sorted) order.
    for name in sorted(scores["models"], key=lambda name: name != "predictor"):
        model = scores["models"][name]
        stem = "r2" if name == "predictor" else f"r2_{name}"
        columns.update({f"{prefix}{stem}{key.removeprefix('r2')}": value for key, value in model.items()
                        if key.startswith("r2")})
    difference = scores["difference"]
    columns.update({f"{prefix}best_baseline": difference["minus"], f"{prefix}r2_minus_best": difference["r2"],
                    f"{prefix}r2_minus_best_lo": difference.get("r2_lo"),
                    f"{prefix}r2_minus_best_hi": difference.get("r2_hi")})
    return columns


def layer_summary(score_paths: Mapping[str, str], out_path: str) -> None:
    """One row per layer: the predictor's MSE, Var and R² over all eval windows with its interval, every
    baseline's R² with intervals, the difference to the best baseline, and the same under each of
    :data:`MASKS` (:func:`score_columns`)."""
    rows = []
    for layer, path in score_paths.items():
        scores = storage.read_json(path)
        row = {"layer": layer, "n_windows": scores["n_windows"], "n_documents": scores["n_documents"],
               **scores["eval_scores"]}
        # The predictor's point R² on all rows is eval_scores' (the metric code's own accumulator); its
        # interval and every baseline's R² come from the per-window statistics.
        row.update({key: value for key, value in score_columns(scores).items() if key != "r2"})
        for mask in MASKS:
            row.update(score_columns(scores[mask], prefix=f"{mask}_"))
        row.update(outlier_rows=scores["no_outliers"]["rows_removed"],
                   outlier_input_rows=scores["no_outlier_inputs"]["rows_removed"],
                   late_from_position=scores["late_positions"]["from_position"],
                   tail_sse_share_1pct=scores["tail_sse_share_1pct"])
        rows.append(row)
    storage.write_tsv(pd.DataFrame(rows), out_path)
