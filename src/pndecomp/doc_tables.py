"""The studies' tables as the docs quote them (Markdown), made from the comparison files each study writes.

``pndecomp.docs`` calls these for its ``model-comparison``, ``predictor-comparison``, ``predictor-probe-gaps``,
``budget-training`` and ``budget-probe-gaps`` blocks, so docs/studies.md is rewritten from a rerun's files
rather than typed. Torch-free: it reads small TSVs.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compare import BUDGET_GAPS, PROBE_GAPS, patch_metric, probe_gap


def interval(value: float, lo: float, hi: float, signed: bool = False, digits: int = 3) -> str:
    """``0.093 [0.081, 0.107]``; signed: ``+0.36 [+0.26, +0.45]``; minus signs typeset as −."""
    form = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{form.format(value)} [{form.format(lo)}, {form.format(hi)}]".replace("-", "−")


def gap(value: float, lo: float, hi: float) -> str:
    """A difference whose interval excludes 0 as its value alone (``+0.36``); one that covers 0 in bold with
    its interval, so the inconclusive cells stand out."""
    if lo > 0 or hi < 0:
        return f"{value:+.2f}".replace("-", "−")
    return f"**{interval(value, lo, hi, signed=True, digits=2)}**"


def _read(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"layer": str})


def _by_block(table: pd.DataFrame, *keys: str) -> pd.DataFrame:
    """Rows ordered by block (numerically), keeping the file's order of ``keys`` within a block."""
    ranks = {key: table[key].map({value: rank for rank, value in enumerate(dict.fromkeys(table[key]))})
             for key in keys}
    order = pd.DataFrame({"block": table["layer"].astype(int), **ranks}).sort_values(["block", *keys], kind="stable")
    return table.loc[order.index]


def model_comparison(path: str) -> str:
    """A model study's ``model_comparison.tsv``: per model and block, eval R² and the probe gaps [95 %]."""
    table = _read(path)
    metrics = list(dict.fromkeys(table["metric"]))
    lines = [f"| model | block | {' | '.join(metrics)} |", "|" + "---|" * (2 + len(metrics))]
    models = list(dict.fromkeys(table["model"]))
    for (model, layer), rows in sorted(table.groupby(["model", "layer"]),
                                       key=lambda item: (models.index(item[0][0]), int(item[0][1]))):
        values = rows.set_index("metric")
        cells = [interval(*values.loc[metric, ["value", "lo", "hi"]], signed=metric != "eval R²",
                          digits=3 if metric == "eval R²" else 2) if metric in values.index else ""
                 for metric in metrics]
        lines.append(f"| {model} | {layer} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def predictor_comparison(path: str) -> str:
    """A predictor study's ``predictor_comparison.tsv``: per predictor its parameters and training seconds
    per layer (the range over layers) and eval R² [95 %] per block; the baselines in italics below."""
    table = _read(path)
    layers = sorted(dict.fromkeys(table["layer"]), key=int)
    lines = [f"| predictor | parameters (s/layer) | {' | '.join(f'block {layer}' for layer in layers)} |",
             "|" + "---|" * (2 + len(layers))]
    for kind in ("predictor", "baseline"):
        rows = table[table["kind"] == kind]
        names = list(dict.fromkeys(rows["model"])) if kind == "predictor" else sorted(set(rows["model"]))
        for name in names:
            mine = rows[rows["model"] == name].set_index("layer")
            cells = [interval(*mine.loc[layer, ["r2", "r2_lo", "r2_hi"]]) if layer in mine.index else ""
                     for layer in layers]
            if kind == "predictor":
                seconds = mine["train_seconds"]
                cost = f"{mine['parameters'].iloc[0] / 1e6:.2f} M ({seconds.min():.0f}–{seconds.max():.0f})"
                lines.append(f"| {name} | {cost} | {' | '.join(cells)} |")
            else:
                lines.append(f"| *baseline {name}* | | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def predictor_probe_gaps(path: str) -> str:
    """A predictor study's probe gaps (each predictor's ``probes/<p>/<task>_differences.tsv`` beside the
    ``predictor_comparison.tsv`` at ``path``): per predictor, ĥ − r on the domain and r − ĥ on next-token
    type at every block; a cell whose interval covers 0 in bold with its interval."""
    table = _read(path)
    probes = Path(path).parents[1] / "probes"
    layers = sorted(dict.fromkeys(table["layer"]), key=int)
    labels = [f"{label.replace(' F1:', '')}: {' / '.join(layers)}" for _, _, label in PROBE_GAPS]
    lines = [f"| predictor | {' | '.join(labels)} |", "|" + "---|" * (1 + len(labels))]
    for name in dict.fromkeys(table.loc[table["kind"] == "predictor", "model"]):
        cells = []
        for task, sign, _ in PROBE_GAPS:
            pair = ("hhat", "r") if sign > 0 else ("r", "hhat")
            gaps = probe_gap(_read(probes / name / f"{task}_differences.tsv"), *pair)
            cells.append(" / ".join(gap(*gaps.loc[layer, ["value", "lo", "hi"]]) for layer in layers))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def budget_training(path: str) -> str:
    """A budget study's ``budget_comparison.tsv``: per block the best baseline (italics) and per entry and
    budget how training ended (the stopping and the kept step, passes over the training windows) and eval R²
    [95 %] on all rows and without the outlier rows."""
    table = _by_block(_read(path), "predictor", "steps")
    metrics = ("eval R²", "eval R², no outliers")
    lines = ["| block | predictor | budget | stopped / kept | passes | eval R², all rows | without outliers |",
             "|---|---|---|---|---|---|---|"]
    for layer in dict.fromkeys(table["layer"]):
        rows = table[table["layer"] == layer]
        baselines = rows[rows["kind"] == "baseline"].drop_duplicates("metric").set_index("metric")
        if len(baselines):
            cells = [f"*{interval(*baselines.loc[metric, ['value', 'lo', 'hi']])}*" for metric in metrics]
            names = " / ".join(dict.fromkeys(baselines["baseline"]))
            lines.append(f"| {layer} | *{names} (best baseline)* | | | | {' | '.join(cells)} |")
        trained = rows[rows["kind"] != "baseline"]
        for (name, steps), entry in trained.groupby(["predictor", "steps"], sort=False):
            values = entry.set_index("metric")
            first = entry.iloc[0]
            cells = [interval(*values.loc[metric, ["value", "lo", "hi"]]) for metric in metrics]
            lines.append(f"| {layer} | {name} | {int(steps):,} | {int(first['last_step']):,} / "
                         f"{int(first['kept_step']):,} | {first['passes']:.1f} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def budget_probe_gaps(path: str) -> str:
    """A budget study's ``budget_comparison.tsv``: per block, entry and budget the probe gaps [95 %] and the ĥ
    patch's pooled ΔCE [95 %] with the mean patch's in brackets (nats per token)."""
    table = _by_block(_read(path), "predictor", "steps")
    table = table[table["kind"] != "baseline"]
    gaps = [metric for _, _, _, metric in BUDGET_GAPS]
    header = [metric.replace(" F1:", "") for metric in gaps]
    lines = [f"| block | predictor | budget | {' | '.join(header)} | ΔCE, ĥ patch (mean patch) |",
             "|" + "---|" * (4 + len(gaps))]
    for (layer, name, steps), entry in table.groupby(["layer", "predictor", "steps"], sort=False):
        values = entry.set_index("metric")
        cells = [interval(*values.loc[metric, ["value", "lo", "hi"]], signed=True, digits=2)
                 if metric in values.index else "" for metric in gaps]
        patch = ""
        if patch_metric("hhat") in values.index:
            patch = interval(*values.loc[patch_metric("hhat"), ["value", "lo", "hi"]], signed=True, digits=2)
            patch += f" ({values.loc[patch_metric('mean'), 'value']:+.2f})".replace("-", "−")
        lines.append(f"| {layer} | {name} | {int(steps):,} | {' | '.join(cells)} | {patch} |")
    return "\n".join(lines) + "\n"
