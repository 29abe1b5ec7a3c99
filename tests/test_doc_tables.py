"""The studies' Markdown tables (pndecomp.doc_tables), checked cell by cell on small comparison files whose
numbers are known, and rendered through the docs generators that name them."""
from __future__ import annotations

import pandas as pd
import pytest

from pndecomp import doc_tables, docs


def write(path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return str(path)


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of a Markdown table, as lists of cells."""
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines()[2:]]


@pytest.mark.parametrize("arguments, expected", [
    ((0.0934, 0.0811, 0.1071), "0.093 [0.081, 0.107]"),
    ((-0.041, -0.2, 0.1, True, 2), "−0.04 [−0.20, +0.10]"),
    ((0.36, 0.26, 0.45, True, 2), "+0.36 [+0.26, +0.45]"),
])
def test_interval(arguments, expected):
    assert doc_tables.interval(*arguments) == expected


@pytest.mark.parametrize("value, lo, hi, expected", [
    (0.36, 0.26, 0.45, "+0.36"),
    (-0.22, -0.34, -0.08, "−0.22"),
    (0.05, -0.04, 0.14, "**+0.05 [−0.04, +0.14]**"),
    (0.0, 0.0, 0.1, "**+0.00 [+0.00, +0.10]**"),  # an interval touching 0 does not exclude it
])
def test_a_gap_is_bold_with_its_interval_exactly_when_the_interval_covers_zero(value, lo, hi, expected):
    assert doc_tables.gap(value, lo, hi) == expected


def test_model_comparison_rows_by_model_then_numeric_block(tmp_path):
    rows = []
    for model in ("trained", "control"):
        for layer, value in (("10", 0.5), ("2", 0.1)):
            rows.append({"model": model, "layer": layer, "depth": 0, "metric": "eval R²", "value": value,
                         "lo": value - 0.01, "hi": value + 0.01})
            rows.append({"model": model, "layer": layer, "depth": 0, "metric": "domain F1: ĥ − r",
                         "value": -value, "lo": -value - 0.1, "hi": -value + 0.1})
    body = table_rows(doc_tables.model_comparison(write(tmp_path / "model_comparison.tsv", rows)))
    assert [row[:2] for row in body] == [["trained", "2"], ["trained", "10"], ["control", "2"], ["control", "10"]]
    assert body[1][2:] == ["0.500 [0.490, 0.510]", "−0.50 [−0.60, −0.40]"]


def test_predictor_comparison_and_its_probe_gaps(tmp_path):
    metrics = tmp_path / "run" / "metrics"
    rows = []
    for name, seconds in (("attn1", (25.4, 33.2)), ("ridge_ar4", (15.0, 20.0))):
        for layer, spent in zip(("0", "29"), seconds):
            rows.append({"model": name, "kind": "predictor", "layer": layer, "r2": 0.3, "r2_lo": 0.2, "r2_hi": 0.4,
                         "parameters": 1_329_410, "train_seconds": spent})
    rows += [{"model": "mean", "kind": "baseline", "layer": layer, "r2": -0.001, "r2_lo": -0.002, "r2_hi": 0.0}
             for layer in ("0", "29")]
    path = write(metrics / "predictor_comparison.tsv", rows)
    body = table_rows(doc_tables.predictor_comparison(path))
    assert body[0] == ["attn1", "1.33 M (25–33)", "0.300 [0.200, 0.400]", "0.300 [0.200, 0.400]"]
    assert body[2] == ["*baseline mean*", "", "−0.001 [−0.002, 0.000]", "−0.001 [−0.002, 0.000]"]
    # ĥ − r on the domain stored as r − ĥ for one predictor: the table negates it and swaps the bounds.
    for name, pair, sign in (("attn1", ("hhat", "r"), 1), ("ridge_ar4", ("r", "hhat"), -1)):
        for task, value in (("domain", 0.3), ("next_token_type_8", 0.02)):
            write(tmp_path / "run" / "probes" / name / f"{task}_differences.tsv",
                  [{"layer": layer, "representation_a": pair[0], "representation_b": pair[1],
                    "difference": sign * value, "difference_lo": sign * (value - 0.1),
                    "difference_hi": sign * (value + 0.1)} for layer in ("0", "29")])
    body = table_rows(doc_tables.predictor_probe_gaps(path))
    # next-token type is r − ĥ: −0.02 [−0.12, +0.08] where ĥ − r is +0.02 [−0.08, +0.12]
    assert body[0] == ["attn1", "+0.30 / +0.30", "**−0.02 [−0.12, +0.08]** / **−0.02 [−0.12, +0.08]**"]
    assert body[1] == ["ridge_ar4", "+0.30 / +0.30", "**−0.02 [−0.12, +0.08]** / **−0.02 [−0.12, +0.08]**"]


def test_budget_tables(tmp_path):
    rows = []
    for layer in ("14", "0"):
        for steps, last, kept in ((200, 200, 200), (1000, 850, 350)):
            training = {"predictor": "attn1", "kind": "attn1", "steps": steps, "layer": layer, "last_step": last,
                        "kept_step": kept, "passes": last * 16 / 2048}
            rows += [{**training, "metric": "eval R²", "value": 0.1, "lo": 0.09, "hi": 0.11},
                     {**training, "metric": "eval R², no outliers", "value": 0.2, "lo": 0.19, "hi": 0.21},
                     {**training, "kind": "baseline", "baseline": "ridge_ar4", "metric": "eval R²",
                      "value": 0.05, "lo": 0.04, "hi": 0.06},
                     {**training, "kind": "baseline", "baseline": "ridge_ar4", "metric": "eval R², no outliers",
                      "value": 0.06, "lo": 0.05, "hi": 0.07},
                     {**training, "metric": "domain F1: ĥ − r", "value": 0.28, "lo": 0.18, "hi": 0.39},
                     {**training, "metric": "ΔCE, hhat patch", "value": 4.58, "lo": 4.34, "hi": 4.87},
                     {**training, "metric": "ΔCE, mean patch", "value": 5.333, "lo": 5.0, "hi": 5.6}]
    path = write(tmp_path / "budget_comparison.tsv", rows)
    body = table_rows(doc_tables.budget_training(path))
    assert [row[:3] for row in body] == [["0", "*ridge_ar4 (best baseline)*", ""], ["0", "attn1", "200"],
                                         ["0", "attn1", "1,000"], ["14", "*ridge_ar4 (best baseline)*", ""],
                                         ["14", "attn1", "200"], ["14", "attn1", "1,000"]]
    assert body[2][3:] == ["850 / 350", "6.6", "0.100 [0.090, 0.110]", "0.200 [0.190, 0.210]"]
    assert body[0][5:] == ["*0.050 [0.040, 0.060]*", "*0.060 [0.050, 0.070]*"]
    body = table_rows(doc_tables.budget_probe_gaps(path))
    assert body[0] == ["0", "attn1", "200", "+0.28 [+0.18, +0.39]", "", "", "+4.58 [+4.34, +4.87] (+5.33)"]
    assert len(body) == 4


def test_the_study_blocks_of_the_docs_name_these_generators():
    names = {block.name for path in docs.default_files() for block in docs.blocks(path)}
    assert {"model-comparison", "predictor-comparison", "predictor-probe-gaps", "budget-training",
            "budget-probe-gaps"} <= names
