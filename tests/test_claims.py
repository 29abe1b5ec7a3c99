"""The claims scorecard: the verdict rule, the trend slopes against numpy, and every claim on synthetic
tables whose verdicts are known."""
import math

import numpy as np
import pandas as pd
import pytest

from pndecomp import claims, metrics
from pndecomp.claims import RunTables, beyond_regions, sign_regions, verdict
from pndecomp.stages.metrics import position_trends


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0.1, 0.3, "holds"), (-0.3, -0.1, "contradicted"), (-0.1, 0.2, "inconclusive"), (0.0, 0.2, "inconclusive"),
    (math.nan, math.nan, "inconclusive")])
def test_sign_verdict(lo, hi, expected):
    assert verdict(lo, hi, *sign_regions(1)) == expected
    mirrored = {"holds": "contradicted", "contradicted": "holds"}.get(expected, expected)
    assert verdict(-hi, -lo, *sign_regions(1)) == mirrored
    assert verdict(-hi, -lo, *sign_regions(-1)) == expected


def test_flat_verdict_is_a_band():
    band = ((-0.25, 0.25), [(-math.inf, -0.25), (0.25, math.inf)])
    assert verdict(-0.1, 0.2, *band) == "holds"
    assert verdict(0.3, 0.5, *band) == "contradicted" and verdict(-0.5, -0.3, *band) == "contradicted"
    assert verdict(0.1, 0.4, *band) == "inconclusive"


def test_beyond_other_intervals_needs_no_overlap():
    others = [(0.2, 0.3), (0.25, 0.4)]
    assert verdict(0.45, 0.5, *beyond_regions(others, 1)) == "holds"
    assert verdict(0.35, 0.5, *beyond_regions(others, 1)) == "inconclusive"  # overlaps the second
    assert verdict(0.0, 0.2, *beyond_regions(others, 1)) == "contradicted"  # wholly below the second's low end
    assert verdict(0.0, 0.1, *beyond_regions(others, -1)) == "holds"
    assert verdict(0.5, 0.6, *beyond_regions(others, -1)) == "contradicted"


def test_position_slope_is_the_least_squares_slope():
    rng = np.random.default_rng(0)
    curves = rng.normal(size=(4, 9)) + 3
    x = np.linspace(0, 1, 9)
    expected = [np.polyfit(x, curve, 1)[0] for curve in curves]
    np.testing.assert_allclose(metrics.position_slope(curves), expected)
    np.testing.assert_allclose(metrics.position_slope(curves, relative=True),
                               [np.polyfit(x, curve / curve.mean(), 1)[0] for curve in curves])
    holed = curves[0].copy()
    holed[[2, 5]] = np.nan
    keep = ~np.isnan(holed)
    assert metrics.position_slope(holed) == pytest.approx(np.polyfit(x[keep], holed[keep], 1)[0])
    assert np.isnan(metrics.position_slope(np.array([np.nan, 1.0, np.nan])))


def test_position_trends_of_known_curves():
    positions = np.arange(10)
    curves = {"mse": 2.0 - 0.1 * positions, "spearman_rho": 0.1 + 0.02 * positions,
              "spearman_rho_displacement": np.full(10, 0.05)}
    trends = position_trends(curves)
    # MSE falls from 2.0 to 1.1 (mean 1.55): the fitted line drops 0.9 / 1.55 of the mean across the window
    assert trends["mse_slope"] == pytest.approx(-0.9 / 1.55)
    assert trends["rho_slope"] == pytest.approx(0.18)
    assert trends["rho_mean"] == pytest.approx(0.19)
    assert trends["rho_minus_displacement"] == pytest.approx(0.14)
    assert "rho_minus_best_baseline" not in trends


def _run(layers=("0", "7", "15"), r2=((0.0, -0.02, 0.02), (0.3, 0.25, 0.35), (0.2, 0.15, 0.24)), **extra):
    rows = []
    for layer, (value, lo, hi) in zip(layers, r2, strict=True):
        rows.append({"layer": layer, "n_documents": 40, "r2": value, "r2_lo": lo, "r2_hi": hi,
                     "best_baseline": "ridge_ar1", "r2_minus_best": value - 0.1, "r2_minus_best_lo": lo - 0.1,
                     "r2_minus_best_hi": hi - 0.1, "no_outliers_best_baseline": "ridge_ar1",
                     "no_outliers_r2_minus_best": 0.05, "no_outliers_r2_minus_best_lo": 0.01,
                     "no_outliers_r2_minus_best_hi": 0.09})
    trend = {"value": -0.5, "lo": -0.7, "hi": -0.3}
    trends = {layer: {"mse_slope": trend, "rho_slope": trend, "rho_mean": trend, "rho_minus_displacement": trend}
              for layer in layers}
    return RunTables("attn1", list(layers), pd.DataFrame(rows), trends, **extra)


def _verdicts(card, claim):
    rows = card[card["claim"] == claim]
    return dict(zip(rows["layers"], rows["verdict"], strict=True))


def test_scorecard_verdicts_on_known_tables():
    differences = pd.DataFrame({
        "layer": ["0", "0", "7", "7", "15", "15"], "task": "domain",
        "representation_a": ["hhat", "hhat"] * 3, "representation_b": ["r", "h_mean"] * 3,
        "difference": [0.2, -0.1, 0.1, 0.0, -0.3, 0.05], "difference_lo": [0.1, -0.2, -0.05, -0.1, -0.4, 0.01],
        "difference_hi": [0.3, -0.05, 0.2, 0.1, -0.2, 0.1], "n_test_documents": 30})
    patching = pd.DataFrame({"layer": ["7", "7"], "kind": ["hhat", "mean"], "metric": "delta_ce",
                             "scope": "pooled", "mean": [0.1, 1.0], "low": [0.05, 0.8], "high": [0.15, 1.2],
                             "n_documents": 12})
    card = claims.scorecard([_run(differences={"domain": differences}, patching=patching)])
    assert set(card["verdict"]) <= set(claims.VERDICTS)
    assert _verdicts(card, "r2_lowest_at_first_layer") == {"0 vs 7": "holds"}
    assert _verdicts(card, "r2_highest_at_last_layer") == {"15 vs 7": "contradicted"}
    assert _verdicts(card, "mse_falls_with_position") == {"7": "holds"}
    assert _verdicts(card, "mse_flat_over_position") == {"0": "contradicted", "15": "contradicted"}
    assert _verdicts(card, "rho_high_at_ends") == {"0 vs 7": "inconclusive", "15 vs 7": "inconclusive"}
    assert _verdicts(card, "rho_rises_at_last_layer") == {"15": "contradicted"}
    assert _verdicts(card, "domain_hhat_beats_r") == {"0": "holds", "7": "inconclusive", "15": "contradicted"}
    assert _verdicts(card, "domain_hhat_beats_h_mean") == {"0": "contradicted", "7": "inconclusive", "15": "holds"}
    assert _verdicts(card, "beats_best_baseline") == {"0": "contradicted", "7": "holds", "15": "holds"}
    assert set(_verdicts(card, "beats_best_baseline_no_outliers").values()) == {"holds"}
    assert _verdicts(card, "hhat_patch_cheaper_than_mean") == {"7": "holds"}
    # The values are the tables' own.
    row = card[(card["claim"] == "domain_hhat_beats_r") & (card["layers"] == "0")].iloc[0]
    assert (row["value"], row["lo"], row["hi"], row["n_documents"]) == (0.2, 0.1, 0.3, 30)


def test_a_closed_form_predictor_is_not_compared_with_itself():
    """ridge_ar4 as the predictor, where the best baseline is ridge_ar4 too: the difference is 0 by construction
    (or rounding), so the claim is not run, with the reason; at another baseline it is measured as usual."""
    run = _run(kind="ridge_ar4")
    run.summary.loc[run.summary["layer"] == "7", ["best_baseline", "no_outliers_best_baseline"]] = "ridge_ar4"
    card = claims.scorecard([run])
    assert _verdicts(card, "beats_best_baseline") == {"0": "contradicted", "7": "not run", "15": "holds"}
    reasons = card.loc[(card["verdict"] == "not run") & card["claim"].str.startswith("beats_best"), "reason"]
    assert len(reasons) == 2 and all("is the best baseline, ridge_ar4" in reason for reason in reasons)


def test_r_minus_hhat_is_read_from_a_stored_hhat_minus_r():
    differences = pd.DataFrame({"layer": ["0"], "task": "next_token_type_8", "representation_a": ["hhat"],
                                "representation_b": ["r"], "difference": [-0.2], "difference_lo": [-0.3],
                                "difference_hi": [-0.1], "n_test_documents": [30]})
    run = _run(layers=("0",), r2=((0.1, 0.0, 0.2),), differences={"next_token_type_8": differences})
    row = claims.scorecard([run]).query("claim == 'next_token_type_r_beats_hhat'").iloc[0]
    assert (row["value"], row["lo"], row["hi"], row["verdict"]) == (0.2, 0.1, 0.3, "holds")


def test_claims_without_inputs_are_not_run_with_a_reason():
    run = _run(layers=("0", "7"), r2=((0.1, 0.0, 0.2), (0.2, 0.1, 0.3)), missing={"patching": "interventions off"})
    card = claims.scorecard([run])
    not_run = card[card["verdict"] == "not run"]
    reasons = dict(zip(not_run["claim"], not_run["reason"], strict=True))
    assert "three layers" in reasons["r2_lowest_at_first_layer"] and "the run has 2" in reasons["rho_high_at_ends"]
    assert reasons["domain_hhat_beats_r"] == "no domain task in probes.tasks"
    assert reasons["next_token_type_r_beats_hhat"] == "no next_token_type task in probes.tasks"
    assert reasons["hhat_patch_cheaper_than_mean"] == "interventions off"
    assert "selectivity_positive" in reasons
    # every claim appears, none dropped
    assert [claim.name for claim in claims.CLAIMS] == list(dict.fromkeys(card["claim"]))


def test_no_interval_is_inconclusive_and_says_why():
    run = _run()
    run.summary[["r2_minus_best_lo", "r2_minus_best_hi"]] = math.nan
    card = claims.scorecard([run])
    rows = card[card["claim"] == "beats_best_baseline"]
    assert set(rows["verdict"]) == {"inconclusive"}
    assert set(rows["reason"]) == {"no interval (metrics.bootstrap: 0)"}


def test_markdown_card_and_readme_block(tmp_path):
    from pndecomp import docs

    card = claims.scorecard([_run()])
    tsv = tmp_path / "claims.tsv"
    card.to_csv(tsv, sep="\t", index=False)
    readme = tmp_path / "README.md"
    marker = f"<!-- generated: claims-card {tsv} -->"
    readme.write_text(f"# Title\n\n{marker}\nSTALE CARD\n<!-- generated: end -->\n\n## After\n")
    docs.main([str(readme)])
    text = readme.read_text()
    assert "STALE CARD" not in text and text.endswith("<!-- generated: end -->\n\n## After\n")
    block = text.split(marker)[1].split("<!-- generated: end -->")[0]
    assert block.count("\n| ") == len(card) + 1  # header and separator lines, one line per row
    assert "**holds**" in block
    assert "nan" not in block  # a control has no paper value: an empty cell


def test_converged_follows_the_layers_behind_each_row_and_marks_the_shown_verdict(tmp_path):
    """Layer 7's predictor stopped at its cap: its per-layer rows and every across-layer row (which read
    every layer) are not converged; layer 0's and 15's own rows are. The TSV keeps the verdict as the rule
    gives it; the Markdown card marks it."""
    converged = {"0": True, "7": False, "15": True}
    card = claims.scorecard([_run(converged=converged)])
    beats = card[card["claim"] == "beats_best_baseline"].set_index("layers")
    assert beats["converged"].to_dict() == converged
    across = card[card["claim"] == "r2_lowest_at_first_layer"].iloc[0]
    assert across["layers"] == "0 vs 7" and across["converged"] == False  # noqa: E712
    assert claims.shown_verdict("holds", False) == "holds (not converged)"
    assert claims.shown_verdict("holds", True) == claims.shown_verdict("holds", None) == "holds"
    assert claims.shown_verdict("not run", False) == "not run"
    tsv = tmp_path / "claims.tsv"
    card.to_csv(tsv, sep="\t", index=False)
    block = claims.markdown(pd.read_csv(tsv, sep="\t", dtype={"layers": str}))
    line_7 = next(line for line in block.splitlines()
                  if line.startswith("| the predictor beats the best baseline (all rows) | attn1 | 7 |"))
    assert line_7.endswith("(not converged)** | no |")
    assert "| attn1 | 0 | " in block and all("(not converged)" not in line for line in block.splitlines()
                                              if "beats the best baseline (all rows) | attn1 | 0 |" in line)
    # a run that does not know shows plain verdicts, and so does a card written before the column existed
    assert claims.scorecard([_run()])["converged"].isna().all()
    older = claims.markdown(card.drop(columns="converged"))
    assert "(not converged)" not in older and older.splitlines()[2].endswith("** |  |")
