"""Figure 4's binning against numpy, and its layout: one panel per layer."""
import numpy as np
import pandas as pd
import pytest

from pndecomp import figures


def test_binned_means_match_numpy():
    frame = pd.DataFrame({"position": np.arange(5, 21), "value": np.arange(16.0) ** 2})
    found = figures.binned(frame, ["value"], 4)
    expected = (np.arange(16.0) ** 2).reshape(4, 4).mean(axis=1)
    assert found["value"].to_numpy() == pytest.approx(expected)
    assert found["position"].to_numpy() == pytest.approx(np.arange(5, 21).reshape(4, 4).mean(axis=1))


def test_figure_4_has_one_panel_per_layer(tmp_path, monkeypatch):
    positions = np.arange(2, 66)
    rng = np.random.default_rng(0)
    tables = {layer: pd.DataFrame({"position": positions, "spearman_rho": rng.normal(0.3, 0.1, positions.size),
                                   "spearman_rho_lo": 0.1, "spearman_rho_hi": 0.5,
                                   "spearman_rho_best_baseline": 0.2, "spearman_rho_displacement": 0.1})
              for layer in ("0", "7", "15")}
    saved = {}
    monkeypatch.setattr(figures, "_save", lambda fig, png, pdf, dpi=150: saved.update(fig=fig))
    figures.per_position(tables, "spearman_rho", 4, tmp_path / "f.png", tmp_path / "f.pdf")
    axes = saved["fig"].axes
    assert [ax.get_title() for ax in axes] == ["layer 0", "layer 7", "layer 15"]
    # positions 5..65 (61) in bins of round(61 / 16) = 4 positions: 16 points on each line
    assert all(len(ax.lines[0].get_xdata()) == 16 for ax in axes)
