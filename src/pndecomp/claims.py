"""The claims scorecard: the paper's findings (docs/method.md §8) and the project's controls, each checked on a run's
own tables and given a verdict by one rule.

One row per (claim, predictor, layer or layer group): the measured value with its 95 % interval, the
paper's value where the paper gives one, the comparison made, the verdict and, where there is one, the
reason. Every value is read from a table the run wrote (:class:`RunTables`); nothing is recomputed.

**The verdict rule** (:func:`verdict`). A claim says where the true value lies (its *claimed region*); the
regions that deny it are its *contrary regions*:

- ``holds``: the whole interval lies in the claimed region;
- ``contradicted``: the whole interval lies in a contrary region;
- ``inconclusive``: anything else -- the interval covers a boundary -- or there is no interval
  (``metrics.bootstrap: 0``);
- ``not run``: the run made no input for the claim (a task not in ``probes.tasks``, fewer than three
  layers, interventions off, no baselines); the reason says which. Such a claim is reported, not dropped.

Every row also says whether it stands on **converged** predictors (``converged``): every layer's predictor
behind the row stopped by its validation plateau (``train.stop_patience``) rather than at the ``train.steps``
cap, or was fitted in closed form. The verdict itself does not depend on it; :func:`shown_verdict` marks a
verdict from an unconverged predictor wherever the scorecard is shown ("holds (not converged)").

Three kinds of comparison use it:

- **a sign** (a difference or a slope against 0): claimed region (0, ∞), contrary (−∞, 0). Differences are
  paired (predictor − best baseline, ĥ − r, ρ − ρ of the displacement come from matching resamples), a
  trend is the slope of a per-position curve with the interval of the slope over resamples;
- **flat**: the slope within ±:data:`FLAT_TOLERANCE` (MSE changing by less than a quarter of its mean across
  the window); contrary: beyond it on either side;
- **across layers or patch kinds** ("R² lowest at the first layer"): each value has its own interval, so the
  claimed region starts beyond every other interval's far end and the contrary region beyond one other
  interval's near end -- no overlap is needed for a verdict, which is conservative (overlapping intervals
  may still differ).

The paper's layers ℓ = 0, {6, 12, 18} and 23 (of Pythia-410m's 24 blocks) are the run's shallowest,
middle and deepest configured layers.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from .compare import pooled_delta_ce, probe_gap

#: |relative slope| of per-position MSE below which a curve counts as flat.
FLAT_TOLERANCE = 0.25
VERDICTS = ("holds", "contradicted", "inconclusive", "not run")
COLUMNS = ("claim", "source", "statement", "predictor", "layers", "value", "lo", "hi", "paper", "comparison",
           "verdict", "converged", "reason", "n_documents")
DOMAIN_TASK = "domain"
NEXT_TOKEN_TYPE = re.compile(r"next_token_type(_\d+)?$")
INF = math.inf


def verdict(lo: float, hi: float, claimed: tuple[float, float],
            contrary: Sequence[tuple[float, float]]) -> str:
    """``holds`` when [lo, hi] lies inside the open region ``claimed``, ``contradicted`` when it lies inside
    one of ``contrary``, else ``inconclusive`` (also when there is no interval)."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    def inside(region): return region[0] < lo and hi < region[1]  # noqa: E704
    if inside(claimed):
        return "holds"
    return "contradicted" if any(inside(region) for region in contrary) else "inconclusive"


def shown_verdict(verdict: str, converged) -> str:
    """The verdict as the scorecard shows it: marked "(not converged)" when a predictor behind it stopped at
    its step cap (``converged`` false); unchanged when converged, unknown (None / NaN) or not run."""
    known_false = not pd.isna(converged) and not converged
    return f"{verdict} (not converged)" if known_false and verdict != "not run" else verdict


def sign_regions(sign: int) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """Claimed and contrary regions of "the value is positive" (sign 1) or "negative" (sign −1)."""
    return ((0.0, INF), [(-INF, 0.0)]) if sign > 0 else ((-INF, 0.0), [(0.0, INF)])


def beyond_regions(others: Sequence[tuple[float, float]], sign: int):
    """Claimed and contrary regions of "the value lies above (sign 1) / below (−1) each of ``others``
    (intervals)": above every other interval's high end; contradicted below some other's low end."""
    if sign > 0:
        return (max(hi for _, hi in others), INF), [(-INF, max(lo for lo, _ in others))]
    return (-INF, min(lo for lo, _ in others)), [(min(hi for _, hi in others), INF)]


@dataclass
class RunTables:
    """What one predictor's claims read: the layer summary, the per-position trends (per layer, from the
    per-position tables' metadata), the probe tables and their paired differences (per task), the
    patching table, and why an input is missing where the run has none."""

    predictor: str
    layers: list[str]  # configured layers, shallowest first
    summary: pd.DataFrame
    trends: Mapping[str, Mapping[str, Mapping[str, float]]]
    probes: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    differences: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    patching: pd.DataFrame | None = None
    missing: Mapping[str, str] = field(default_factory=dict)  # input -> why the run has none ("patching")
    kind: str = ""  # the predictor's registry kind: a closed-form kind can be one of the baselines
    converged: Mapping[str, bool] = field(default_factory=dict)  # layer -> stopped by its plateau (empty: unknown)

    def converged_at(self, layers: str | None) -> bool | None:
        """Whether every predictor behind a row converged: the run's layers named in the row's ``layers``
        ("7", "0 vs 7, 15, 22"), every layer where it names none; None when the run does not know."""
        if not self.converged:
            return None
        named = [name for name in re.split(r",\s*|\s+vs\s+", layers or "") if name in self.converged]
        return all(self.converged[name] for name in named or self.layers)

    def summary_row(self, layer: str) -> pd.Series:
        return self.summary.set_index(self.summary["layer"].astype(str)).loc[layer]

    def documents(self, layer: str) -> int:
        return int(self.summary_row(layer)["n_documents"])


@dataclass(frozen=True)
class Claim:
    """One claim: its name, ``paper`` (docs/method.md §8) or ``control`` (the project's), what it says, the paper's
    value or pattern, and the function that measures it on a run (rows without claim-level columns)."""

    name: str
    source: str
    statement: str
    paper: str
    measure: Callable[[RunTables], list[dict]]


def _measured(layers: str, value: float, lo: float, hi: float, comparison: str, regions, n: int | None) -> dict:
    claimed, contrary = regions
    return {"layers": layers, "value": value, "lo": lo, "hi": hi, "comparison": comparison,
            "verdict": verdict(lo, hi, claimed, contrary), "n_documents": n}


def _not_run(reason: str, layers: str = "") -> list[dict]:
    return [{"layers": layers, "verdict": "not run", "reason": reason}]


def _groups(run: RunTables) -> tuple[str, list[str], str] | None:
    """(shallowest, middle layers, deepest), None with fewer than three layers."""
    return (run.layers[0], run.layers[1:-1], run.layers[-1]) if len(run.layers) >= 3 else None


GROUPS_NEEDED = "needs at least three layers (shallowest, middle, deepest); the run has {n}"


def _across_layers(column: Callable[[RunTables, str], tuple[float, float, float]], which: str, sign: int,
                   what: str) -> Callable[[RunTables], list[dict]]:
    """A claim that ``what`` at the shallowest and/or deepest layer lies beyond (sign) every middle layer's."""
    def measure(run: RunTables) -> list[dict]:
        groups = _groups(run)
        if groups is None:
            return _not_run(GROUPS_NEEDED.format(n=len(run.layers)))
        first, middle, last = groups
        others = [column(run, layer)[1:] for layer in middle]
        rows = []
        for layer in {"first": [first], "last": [last], "ends": [first, last]}[which]:
            value, lo, hi = column(run, layer)
            side = "above" if sign > 0 else "below"
            rows.append(_measured(f"{layer} vs {', '.join(middle)}", value, lo, hi,
                                  f"{what}'s interval {side} every middle layer's", beyond_regions(others, sign),
                                  run.documents(layer)))
        return rows
    return measure


def _per_layer(column: Callable[[RunTables, str], tuple[float, float, float] | None], comparison: str,
               regions, which: str = "all", missing: Callable[[RunTables], str | None] = lambda run: None):
    """A claim checked at each layer of a group (``all``, ``first``, ``middle``, ``last``, ``ends``)."""
    def measure(run: RunTables) -> list[dict]:
        reason = missing(run)
        if reason:
            return _not_run(reason)
        if which == "all":
            layers = run.layers
        else:
            groups = _groups(run)
            if groups is None:
                return _not_run(GROUPS_NEEDED.format(n=len(run.layers)))
            first, middle, last = groups
            layers = {"first": [first], "middle": middle, "last": [last], "ends": [first, last]}[which]
        rows = []
        for layer in layers:
            found = column(run, layer)
            if found is None or isinstance(found, str):  # a column may say why it has no value
                rows += _not_run(found or f"no value at layer {layer}", layer)
                continue
            value, lo, hi, n = found
            rows.append(_measured(layer, value, lo, hi, comparison, regions, n))
        return rows
    return measure


def _summary(name: str):
    def column(run: RunTables, layer: str):
        row = run.summary_row(layer)
        return float(row[name]), float(row.get(f"{name}_lo", math.nan)), float(row.get(f"{name}_hi", math.nan))
    return column


def _trend(name: str):
    def column(run: RunTables, layer: str):
        trend = run.trends.get(layer, {}).get(name)
        if trend is None:
            return None
        return (trend["value"], trend.get("lo", math.nan), trend.get("hi", math.nan), run.documents(layer))
    return column


def _mean_rho(run: RunTables, layer: str):
    value, lo, hi, _ = _trend("rho_mean")(run, layer)
    return value, lo, hi


def _best_baseline(mask: str = ""):
    def column(run: RunTables, layer: str):
        row = run.summary_row(layer)
        best = row.get(f"{mask}best_baseline")
        if pd.isna(best):
            return None
        if best == run.kind:
            return f"the predictor is the best baseline, {best}: the difference is 0 by construction"
        name = f"{mask}r2_minus_best"
        return float(row[name]), float(row[f"{name}_lo"]), float(row[f"{name}_hi"]), int(row["n_documents"])
    return column


def _no_baselines(run: RunTables) -> str | None:
    return "metrics.baselines is empty" if run.summary.get("best_baseline", pd.Series()).isna().all() else None


def _task_named(run: RunTables, task: str | re.Pattern) -> str | None:
    names = [name for name in run.differences if (task.match(name) if isinstance(task, re.Pattern) else name == task)]
    return names[0] if names else None


def _difference(task: str | re.Pattern, a: str, b: str):
    """(a − b) F1 on ``task`` at a layer, from the task's paired differences (negated when stored as b − a)."""
    def column(run: RunTables, layer: str):
        gap = probe_gap(run.differences[_task_named(run, task)], a, b)
        if layer not in gap.index:
            return None
        row = gap.loc[layer]
        return float(row["value"]), float(row["lo"]), float(row["hi"]), int(row["n_test_documents"])
    return column


def _task_missing(task: str | re.Pattern, what: str):
    def missing(run: RunTables) -> str | None:
        return None if _task_named(run, task) else f"no {what} task in probes.tasks"
    return missing


def _selectivity(run: RunTables) -> list[dict]:
    rows = []
    for task, table in run.probes.items():
        if "selectivity" not in table:
            continue
        for _, row in table[table["representation"].isin(["hhat", "r"])].iterrows():
            measured = _measured(str(row["layer"]), float(row["selectivity"]),
                                 float(row.get("selectivity_lo", math.nan)), float(row.get("selectivity_hi", math.nan)),
                                 f"{row['representation']} on {task}: F1 − control F1 above 0", sign_regions(1),
                                 int(row["n_test_documents"]))
            rows.append({"task": f"{row['representation']}, {task}", **measured})
    return rows or _not_run("no probe task with a control task in probes.tasks")


def _patch_cost(run: RunTables) -> list[dict]:
    if run.patching is None:
        return _not_run(run.missing.get("patching", "no patching table"))
    pooled = pooled_delta_ce(run.patching)
    rows = []
    for layer in dict.fromkeys(pooled.index.get_level_values("layer")):
        hhat, mean = pooled.loc[(layer, "hhat")], pooled.loc[(layer, "mean")]
        rows.append(_measured(layer, float(hhat["mean"]), float(hhat["low"]), float(hhat["high"]),
                              f"ΔCE of the hhat patch below the mean patch's ({mean['mean']:.4g} "
                              f"[{mean['low']:.4g}, {mean['high']:.4g}])",
                              beyond_regions([(float(mean["low"]), float(mean["high"]))], -1),
                              int(hhat["n_documents"])))
    return rows


CLAIMS: tuple[Claim, ...] = (
    Claim("r2_lowest_at_first_layer", "paper", "R² is lowest at the first layer",
          "≈ 0 at ℓ = 0, ≈ 0.3 at ℓ = 6, 12, 18", _across_layers(_summary("r2"), "first", -1, "R²")),
    Claim("r2_highest_at_last_layer", "paper", "R² is highest at the last layer",
          "≈ 0.4 at ℓ = 23, ≈ 0.3 at ℓ = 6, 12, 18", _across_layers(_summary("r2"), "last", 1, "R²")),
    Claim("mse_falls_with_position", "paper", "per-position MSE falls with position at the middle layers",
          "falls at ℓ = 6, 12, 18", _per_layer(_trend("mse_slope"), "relative slope of MSE_p below 0",
                                               sign_regions(-1), "middle")),
    Claim("mse_flat_over_position", "paper", "per-position MSE is flat at the first and last layers",
          "flat at ℓ = 0, 23", _per_layer(_trend("mse_slope"), f"relative slope of MSE_p within ±{FLAT_TOLERANCE}",
                                          ((-FLAT_TOLERANCE, FLAT_TOLERANCE),
                                           [(-INF, -FLAT_TOLERANCE), (FLAT_TOLERANCE, INF)]), "ends")),
    Claim("rho_high_at_ends", "paper", "ρ(‖r‖, surprisal) is higher at the first and last layers than in between",
          "relatively high at ℓ = 0, 23; low at 6, 12, 18", _across_layers(_mean_rho, "ends", 1, "mean ρ_p")),
    Claim("rho_falls_at_first_layer", "paper", "ρ falls with position at the first layer", "falls at ℓ = 0",
          _per_layer(_trend("rho_slope"), "slope of ρ_p below 0", sign_regions(-1), "first")),
    Claim("rho_rises_at_last_layer", "paper", "ρ rises with position at the last layer", "rises at ℓ = 23",
          _per_layer(_trend("rho_slope"), "slope of ρ_p above 0", sign_regions(1), "last")),
    Claim("domain_hhat_beats_r", "paper", "ĥ beats r on the domain task", "ĥ > r",
          _per_layer(_difference(DOMAIN_TASK, "hhat", "r"), "macro-F1 ĥ − r above 0", sign_regions(1),
                     missing=_task_missing(DOMAIN_TASK, "domain"))),
    Claim("next_token_type_r_beats_hhat", "paper", "r beats ĥ on next-token type", "r > ĥ",
          _per_layer(_difference(NEXT_TOKEN_TYPE, "r", "hhat"), "macro-F1 r − ĥ above 0", sign_regions(1),
                     missing=_task_missing(NEXT_TOKEN_TYPE, "next_token_type"))),
    Claim("beats_best_baseline", "control", "the predictor beats the best baseline (all rows)", "",
          _per_layer(_best_baseline(), "R² − best baseline's R² above 0", sign_regions(1), missing=_no_baselines)),
    Claim("beats_best_baseline_no_outliers", "control", "the predictor beats the best baseline (outlier rows excluded)",
          "", _per_layer(_best_baseline("no_outliers_"), "R² − best baseline's R² above 0", sign_regions(1),
                         missing=_no_baselines)),
    Claim("domain_hhat_beats_h_mean", "control", "ĥ beats the context mean h_mean on the domain task", "",
          _per_layer(_difference(DOMAIN_TASK, "hhat", "h_mean"), "macro-F1 ĥ − h_mean above 0", sign_regions(1),
                     missing=_task_missing(DOMAIN_TASK, "domain"))),
    Claim("selectivity_positive", "control", "probes read more than memorised units (selectivity > 0)", "",
          _selectivity),
    Claim("hhat_patch_cheaper_than_mean", "control", "patching in ĥ costs less than patching in the train mean", "",
          _patch_cost),
    Claim("rho_beyond_displacement", "control", "ρ for r exceeds ρ for the plain displacement ‖h_{t+1} − h_t‖", "",
          _per_layer(_trend("rho_minus_displacement"), "mean over positions of ρ_p − ρ_p(displacement) above 0",
                     sign_regions(1))),
)


def scorecard(runs: Sequence[RunTables]) -> pd.DataFrame:
    """Every claim of :data:`CLAIMS` on every predictor's tables, in claim order, then predictor order."""
    rows = []
    for claim in CLAIMS:
        for run in runs:
            for row in claim.measure(run):
                what = row.pop("task", None)  # which representation and task, where a claim has several
                statement = f"{claim.statement} ({what})" if what else claim.statement
                rows.append({"claim": claim.name, "source": claim.source, "statement": statement,
                             "predictor": run.predictor, "paper": claim.paper, "reason": "", **row,
                             "converged": run.converged_at(row.get("layers"))})
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[list(COLUMNS)]
    no_interval = (frame["verdict"] == "inconclusive") & (frame["lo"].isna() | frame["hi"].isna())
    frame.loc[no_interval, "reason"] = "no interval (metrics.bootstrap: 0)"
    frame["n_documents"] = frame["n_documents"].astype("Int64")
    return frame


def markdown(card: pd.DataFrame) -> str:
    """The scorecard as a Markdown table: one line per row, values to 3 significant digits, the verdict as
    :func:`shown_verdict` shows it and whether the row's predictors converged (empty: unknown)."""
    def number(value):
        return "" if pd.isna(value) else f"{value:.3g}"

    def text(value):
        return "" if pd.isna(value) else value
    lines = ["| claim | predictor | layers | value [95 %] | paper | verdict | converged |",
             "|---|---|---|---|---|---|---|"]
    for row in card.itertuples():
        measured = (f"{number(row.value)} [{number(row.lo)}, {number(row.hi)}]" if not pd.isna(row.value)
                    else text(row.reason))
        converged = getattr(row, "converged", None)  # a card written before the column existed has none
        shown_converged = "" if pd.isna(converged) else "yes" if converged else "no"
        lines.append(f"| {row.statement} | {row.predictor} | {text(row.layers)} | {measured} | {text(row.paper)} | "
                     f"**{shown_verdict(row.verdict, converged)}** | {shown_converged} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.claims CLAIMS_TSV``: the scorecard as Markdown (docs/results.md's card is a generated
    block: ``python -m pndecomp.docs`` rewrites it)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("claims", help="a run's claims.tsv, e.g. results/embedded-smollm2/claims.tsv")
    args = parser.parse_args(argv)
    print(markdown(pd.read_csv(args.claims, sep="\t", dtype={"layers": str}, keep_default_na=False,
                               na_values=[""])), end="")


if __name__ == "__main__":
    main()
