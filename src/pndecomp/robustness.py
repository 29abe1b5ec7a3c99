"""Which findings survive what: the claims scorecard across training seeds (:func:`across_seeds`, a run's
``seed_claims.tsv``) and across a study's settings -- seeds, budgets, predictors and the untrained control
(:func:`robustness`, a study's ``robustness.tsv``).

**Across seeds** (docs/method.md §9). Each seed's row has its own 95 % interval over the split units. The
pooled interval covers both sources of variation: it is the 2.5 and 97.5 % points of the equal-weight mixture
of the seeds' resampling distributions -- draw a seed, then a resample of the units within that seed's run.
The resamples themselves are not stored, so each seed's distribution is the two-piece normal with the row's
value as its median and its interval's ends as its 2.5 and 97.5 % points (:func:`pooled_interval`). A finding
holds across seeds only where it holds at every seed; it is contradicted only where every seed contradicts it.

**Across settings.** A study's scorecard (one ``claims.tsv`` per model, stacked) has a row per (model,
predictor, claim, layer). :func:`robustness` groups the rows by claim and layer group (the shallowest,
middle and deepest layers, by the first layer a row names) and counts the verdicts over the trained models'
settings and, apart, over the untrained controls'. Its one-word reading (:func:`reading`):

- ``robust``: holds at every trained setting, and not at most of the control's;
- ``also-in-control``: holds at every trained setting and at more than half of the control's: a property
  of the architecture or the data rather than of what the model learned;
- ``seed-dependent``: the verdict differs between two seeds of one entry;
- ``budget-dependent``: each entry agrees across its seeds, but entries of one architecture that differ
  only in their training budget disagree;
- ``predictor-dependent``: the verdict changes only between architectures (attn1, mlp_k4, ridge_ar4, ...);
- ``model-dependent``: the verdict changes only between trained models;
- ``contradicted``, ``inconclusive``: the same verdict at every trained setting; ``not run``: none ran;
- ``unsupported``: it holds at no trained setting, contradicted at some and inconclusive at the others (a
  finding that never holds does not "depend" on anything).

The earlier of the dependent readings wins: a verdict that moves with the seed says nothing about budgets.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from . import storage
from .claims import VERDICTS

Z95 = float(stats.norm.ppf(0.975))
READINGS = ("robust", "also-in-control", "seed-dependent", "budget-dependent", "predictor-dependent",
            "model-dependent", "contradicted", "inconclusive", "unsupported", "not run")
SEED_COLUMNS = ("claim", "source", "statement", "entry", "layers", "seeds", "seed_values", "seed_verdicts", "value",
                "lo", "hi", "verdict", "holds", "contradicted", "inconclusive", "converged", "n_documents")
ROBUSTNESS_COLUMNS = ("claim", "statement", "layer_group", "reading", "settings", "holds", "contradicted",
                      "inconclusive", "not_run", "control_settings", "control_holds", "control_contradicted",
                      "control_inconclusive", "fails_at")


def _two_piece_cdf(x: float, value: np.ndarray, lower_sd: np.ndarray, upper_sd: np.ndarray) -> np.ndarray:
    """Each seed's CDF at x: a normal of sd ``lower_sd`` below its median ``value``, ``upper_sd`` above (a
    zero sd: a point mass there)."""
    sd = np.where(x < value, lower_sd, upper_sd)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, (x - value) / np.where(sd > 0, sd, 1.0), np.where(x < value, -np.inf, np.inf))
    return stats.norm.cdf(z)


def pooled_interval(values: Sequence[float], los: Sequence[float], his: Sequence[float],
                    level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of the equal-weight mixture of the seeds' resampling distributions, each the
    two-piece normal whose median is the seed's value and whose 2.5 / 97.5 % points are its interval's ends.
    NaN when a seed has no interval."""
    value, lo, hi = (np.asarray(column, dtype=float) for column in (values, los, his))
    if not len(value) or np.isnan(np.concatenate([value, lo, hi])).any():
        return math.nan, math.nan
    lower_sd, upper_sd = np.maximum(value - lo, 0) / Z95, np.maximum(hi - value, 0) / Z95
    tail = (1 - level) / 2
    span = float(hi.max() - lo.min()) or 1.0
    bracket = (float(lo.min()) - span, float(hi.max()) + span)

    def quantile(p: float) -> float:
        if np.all(lower_sd == 0) and np.all(upper_sd == 0) and np.ptp(value) == 0:
            return float(value[0])
        return optimize.brentq(lambda x: _two_piece_cdf(x, value, lower_sd, upper_sd).mean() - p, *bracket,
                               xtol=1e-12 * span)
    return quantile(tail), quantile(1 - tail)


def joint_verdict(verdicts: Sequence[str]) -> str:
    """One verdict for several (across seeds, or two middle layers): ``holds`` / ``contradicted`` / ``not run``
    where every one says so, else ``inconclusive``."""
    found = set(verdicts)
    return found.pop() if len(found) == 1 and found <= {"holds", "contradicted", "not run"} else "inconclusive"


def across_seeds(card: pd.DataFrame, seeds: Mapping[str, tuple[str, int | None]]) -> pd.DataFrame:
    """``seed_claims.tsv``: one row per (claim, statement, entry, layers) of a run's scorecard ``card``, with
    the per-seed values and verdicts, their mean, the pooled interval and the verdict across seeds.
    ``seeds``: predictor -> (configured entry, training seed), :func:`pndecomp.predictor_entries.entry_seeds`."""
    card = card.assign(entry=card["predictor"].map(lambda name: seeds[name][0]),
                       seed=card["predictor"].map(lambda name: seeds[name][1]),
                       layers=card["layers"].fillna(""))
    rows = []
    for key, group in card.groupby(["claim", "statement", "entry", "layers"], sort=False):
        group = group.sort_values("seed", na_position="first")
        lo, hi = pooled_interval(group["value"], group["lo"], group["hi"])
        verdicts = list(group["verdict"])
        rows.append({
            **dict(zip(("claim", "statement", "entry", "layers"), key, strict=True)), "source": group["source"].iat[0],
            "seeds": ", ".join("-" if pd.isna(seed) else str(int(seed)) for seed in group["seed"]),
            "seed_values": ", ".join("" if pd.isna(value) else f"{value:.4g}" for value in group["value"]),
            "seed_verdicts": ", ".join(verdicts), "value": group["value"].mean(), "lo": lo, "hi": hi,
            "verdict": joint_verdict(verdicts), **{name: verdicts.count(name) for name in VERDICTS[:3]},
            "converged": bool(group["converged"].fillna(False).astype(bool).all()) if group["converged"].notna().any()
            else None, "n_documents": group["n_documents"].iat[0]})
    return pd.DataFrame(rows, columns=list(SEED_COLUMNS))


@dataclass(frozen=True)
class Setting:
    """One column of a study's robustness grid: a model and one of its predictors, with the dimensions the
    reading varies (the entry the predictor was configured as, its architecture, budget and seed), from
    :func:`pndecomp.predictor_entries.dimensions`."""

    model: str
    predictor: str
    entry: str
    architecture: str
    budget: str  # "200 steps", "plateau" (converged by the rule), "closed form"
    seed: int | None
    control: bool  # an untrained control (model.random_init)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.predictor}"


def layer_groups(layers: pd.Series) -> pd.Series:
    """first / middle / last by the first layer a ``layers`` cell names ("0", "29 vs 15"), among the layers
    named in the column; "" where it names none (a claim not run)."""
    from .results import layer_key

    first = layers.fillna("").astype(str).str.split(" vs ").str[0].str.split(",").str[0].str.strip()
    order = sorted({name for name in first if name}, key=layer_key)
    position = {name: "first" if i == 0 else "last" if i == len(order) - 1 else "middle"
                for i, name in enumerate(order)}
    return first.map(lambda name: position.get(name, ""))


def reading(verdicts: Mapping[Setting, str]) -> str:
    """The one-word reading of one claim at one layer group (module docstring), from each setting's verdict."""
    trained = {setting: verdict for setting, verdict in verdicts.items()
               if not setting.control and verdict != "not run"}
    control = [verdict for setting, verdict in verdicts.items() if setting.control and verdict != "not run"]
    found = set(trained.values())
    if not found:
        return "not run"
    if found == {"holds"}:
        return "also-in-control" if control.count("holds") * 2 > len(control) else "robust"
    if len(found) == 1:
        return found.pop()
    if "holds" not in found:
        return "unsupported"
    for word, cell in (("seed-dependent", lambda s: (s.model, s.entry)),
                       ("budget-dependent", lambda s: (s.model, s.architecture, s.seed)),
                       ("predictor-dependent", lambda s: s.model)):
        cells: dict = {}
        for setting, verdict in trained.items():
            cells.setdefault(cell(setting), set()).add(verdict)
        if any(len(cell_verdicts) > 1 for cell_verdicts in cells.values()):
            return word
    return "model-dependent"


def setting_verdicts(card: pd.DataFrame, settings: Sequence[Setting]) -> pd.DataFrame:
    """The grid behind the readings, long form: one row per (claim, statement, layer group, setting) with the
    setting's verdict (several rows of one setting in a group, two middle layers: their :func:`joint_verdict`)
    and, where it does not hold, at which layers. ``card``: a study's stacked scorecard (a ``model`` column
    beside claims.tsv's), in the settings' order."""
    by_key = {(setting.model, setting.predictor): setting for setting in settings}
    card = card.assign(layer_group=pd.concat([layer_groups(frame["layers"])
                                              for _, frame in card.groupby("model", sort=False)]))
    rows = []
    for (claim, statement, group, model, predictor), frame in card.groupby(
            ["claim", "statement", "layer_group", "model", "predictor"], sort=False):
        setting = by_key[(model, predictor)]
        failing = frame[frame["verdict"] != "holds"]
        rows.append({"claim": claim, "statement": statement, "layer_group": group, "setting": setting.name,
                     "control": setting.control, "verdict": joint_verdict(list(frame["verdict"])),
                     "fails_at": ", ".join(f"{layers} ({verdict})" for layers, verdict
                                           in zip(failing["layers"].fillna(""), failing["verdict"], strict=True))})
    return pd.DataFrame(rows, columns=["claim", "statement", "layer_group", "setting", "control", "verdict",
                                       "fails_at"])


def robustness(grid: pd.DataFrame, settings: Sequence[Setting]) -> pd.DataFrame:
    """``robustness.tsv``: per claim (statement) and layer group of :func:`setting_verdicts`' ``grid``, the
    verdict counts over the trained settings and the control's, the trained settings where it does not hold,
    and the reading."""
    by_name = {setting.name: setting for setting in settings}
    rows = []
    for (claim, statement, group), frame in grid.groupby(["claim", "statement", "layer_group"], sort=False):
        verdicts = {by_name[name]: verdict for name, verdict in zip(frame["setting"], frame["verdict"], strict=True)}
        trained, control = frame[~frame["control"]], frame[frame["control"]]
        failing = trained[trained["verdict"] != "holds"]
        rows.append({"claim": claim, "statement": statement, "layer_group": group, "reading": reading(verdicts),
                     "settings": len(trained), **{name: int((trained["verdict"] == name).sum())
                                                  for name in VERDICTS[:3]},
                     "not_run": int((trained["verdict"] == "not run").sum()), "control_settings": len(control),
                     **{f"control_{name}": int((control["verdict"] == name).sum()) for name in VERDICTS[:3]},
                     "fails_at": "; ".join(f"{name} {where}" for name, where
                                           in zip(failing["setting"], failing["fails_at"], strict=True))})
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))


def write_seed_claims(card_path: str, seeds: Mapping[str, Sequence], out_path: str) -> None:
    """The ``seed_claims`` rule: a run's claims.tsv read across its seeds into ``out_path``."""
    card = pd.read_csv(card_path, sep="\t", dtype={"layers": str})
    storage.write_tsv(across_seeds(card, {name: tuple(value) for name, value in seeds.items()}), out_path)


def write_robustness(card_path: str, dimensions: Mapping[str, Mapping[str, Mapping]], controls: Sequence[str],
                     out_path: str, grid_path: str) -> None:
    """The ``robustness`` rule: a study's stacked claims.tsv (``card_path``) read across its settings into
    ``out_path``, the grid behind it into ``grid_path``. ``dimensions``: model ->
    :func:`pndecomp.predictor_entries.dimensions` of its config; ``controls``: the untrained controls."""
    settings = [Setting(model, predictor, control=model in controls, **values)
                for model, predictors in dimensions.items() for predictor, values in predictors.items()]
    grid = setting_verdicts(pd.read_csv(card_path, sep="\t", dtype={"layers": str}), settings)
    storage.write_tsv(grid, grid_path)
    storage.write_tsv(robustness(grid, settings), out_path)


def markdown(table: pd.DataFrame) -> str:
    """One line per finding: the reading at each layer group, with the counts behind it."""
    lines = []
    for statement, frame in table.groupby("statement", sort=False):
        parts = []
        for row in frame.itertuples():
            where = f"{row.layer_group} layer" if row.layer_group else "every layer"
            counts = (f"holds at {row.holds} of {row.settings} settings" if row.settings else "not run")
            control = (f"; control {row.control_holds} of {row.control_settings}" if row.control_settings else "")
            parts.append(f"{where}: **{row.reading}** ({counts}{control})")
        lines.append(f"- {statement}: {'; '.join(parts)}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.robustness ROBUSTNESS_TSV``: the findings' readings as Markdown, one line each (the
    docs' block is generated: ``python -m pndecomp.docs`` rewrites it)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("table", help="a study's robustness.tsv, e.g. results/robustness/robustness.tsv")
    args = parser.parse_args(argv)
    print(markdown(pd.read_csv(args.table, sep="\t", keep_default_na=False, na_values=[""]).fillna(
        {"layer_group": ""})), end="")


if __name__ == "__main__":
    main()
