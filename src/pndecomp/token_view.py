"""The per-token page of a :class:`~pndecomp.decompose.Decomposition`: one self-contained HTML file.

Per text: a plotly figure with a layers × tokens heatmap of ‖r‖/‖h‖ and, aligned under it, a heatmap of the
LM's surprisal, the tokens on the x axis (token, position, ‖r‖, ‖ĥ‖ and surprisal on hover); then the text
itself, each token shaded by ‖r‖/‖h‖ at the layer chosen in a select control (a few lines of inline
JavaScript). plotly.js is embedded once, so the page opens offline.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

#: ‖r‖/‖h‖ is drawn from 0 (the predictor saw the state coming) to 1 (r as large as h: nothing predicted);
#: larger values take the colour of 1 (hover shows the value).
RATIO_RANGE = (0.0, 1.0)
RATIO_COLORS = "Reds"
SURPRISAL_COLORS = "Blues"
#: The surprisal heatmap's height, in rows of the layers' heatmap (room for its colour bar).
SURPRISAL_ROWS = 2
#: At most this many token labels on the x axis (every k-th beyond it); hover names every token.
MAX_TICKS = 80

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
.text { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.9; border: 1px solid #ddd;
        padding: 0.8em; border-radius: 4px; }
.tok { border-radius: 2px; }
.tok.none { outline: 1px dashed #999; }
.controls { margin: 0.6em 0; }
.legend { display: inline-block; width: 12em; height: 0.8em; vertical-align: middle;
          background: linear-gradient(to right, rgba(203, 24, 29, 0), rgba(203, 24, 29, 1)); }
"""

SCRIPT = """
function shade(index) {
  const data = PNDECOMP[index];
  const layer = document.getElementById("layer-" + index).value;
  const ratios = data.ratio[data.layers.indexOf(layer)];
  document.querySelectorAll("#text-" + index + " .tok").forEach((span, position) => {
    const value = ratios[position];
    span.classList.toggle("none", value === null);
    span.style.backgroundColor = value === null ? "" : "rgba(203, 24, 29, " + Math.min(Math.max(value, 0), 1) + ")";
    span.title = span.dataset.label + (value === null ? "no prediction" : "‖r‖/‖h‖ " + value.toFixed(3));
  });
}
PNDECOMP.forEach((_, index) => shade(index));
"""


def _shown(token: str) -> str:
    """A token as an axis label: whitespace made visible, markup escaped (plotly reads tags in labels)."""
    return html.escape(token.replace("\n", "↵").replace("\t", "⇥").replace(" ", "·")) or "∅"


def _number(value: float, digits: int = 4) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}g}"


def figure(decomposition, index: int = 0):
    """The plotly figure of text ``index``: ‖r‖/‖h‖ per layer and token above, surprisal per token below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    norms = decomposition.norms(index)
    layers, tokens = decomposition.layers, decomposition.tokens[index]
    surprisal = decomposition.surprisal[index].astype(np.float64)
    positions = np.arange(1, len(tokens) + 1)

    def cell(row: int, column: int) -> str:
        numbers = {"‖r‖/‖h‖": _number(norms["r_over_h"][row, column], 3), "‖r‖": _number(norms["r_norm"][row, column]),
                   "‖ĥ‖": _number(norms["hhat_norm"][row, column]), "‖h‖": _number(norms["h_norm"][row, column]),
                   "surprisal": _number(surprisal[column], 3)}
        return (f"token {html.escape(repr(tokens[column]))}<br>position {column + 1}<br>layer {layers[row]}<br>"
                + "<br>".join(f"{name} {value}" for name, value in numbers.items()))

    hover = [[cell(row, column) for column in range(len(tokens))] for row in range(len(layers))]
    below = [[f"token {html.escape(repr(token))}<br>position {position}<br>surprisal "
              f"{_number(surprisal[position - 1], 3)} nats" for position, token in zip(positions, tokens)]]
    rows = len(layers) + SURPRISAL_ROWS  # in heights of one layer's row
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[len(layers) / rows, SURPRISAL_ROWS / rows])

    def nan_free(values: np.ndarray) -> list:  # JSON null (a gap) where there is no value
        return [[None if not math.isfinite(v) else float(v) for v in row] for row in np.atleast_2d(values)]

    top, bottom = fig.layout.yaxis.domain, fig.layout.yaxis2.domain
    fig.add_trace(go.Heatmap(
        z=nan_free(norms["r_over_h"]), x=positions, y=[f"layer {layer}" for layer in layers], zmin=RATIO_RANGE[0],
        zmax=RATIO_RANGE[1], colorscale=RATIO_COLORS, text=hover, hovertemplate="%{text}<extra></extra>",
        colorbar={"title": {"text": "‖r‖/‖h‖"}, "y": (top[0] + top[1]) / 2, "len": top[1] - top[0]}), row=1, col=1)
    fig.add_trace(go.Heatmap(
        z=nan_free(surprisal), x=positions, y=["surprisal"], colorscale=SURPRISAL_COLORS, zmin=0, text=below,
        hovertemplate="%{text}<extra></extra>",
        colorbar={"title": {"text": "nats"}, "y": (bottom[0] + bottom[1]) / 2, "len": bottom[1] - bottom[0],
                  "nticks": 3}),
        row=2, col=1)
    step = max(1, math.ceil(len(tokens) / MAX_TICKS))
    fig.update_xaxes(tickmode="array", tickvals=positions[::step].tolist(),
                     ticktext=[_shown(token) for token in tokens[::step]], tickangle=-45, row=2, col=1)
    fig.update_yaxes(type="category", autorange="reversed", row=1, col=1)
    fig.update_layout(height=140 + 40 * rows, margin={"l": 80, "r": 40, "t": 30, "b": 110},
                      plot_bgcolor="#f4f4f4")
    return fig


def _shaded_text(decomposition, index: int, layer: str) -> str:
    spans = []
    for position, token in enumerate(decomposition.tokens[index], 1):
        label = f"position {position}, token {token!r}, "
        spans.append(f'<span class="tok" data-label="{html.escape(label)}">{html.escape(token)}</span>')
    options = "".join(f'<option value="{html.escape(name)}"{" selected" if name == layer else ""}>{html.escape(name)}'
                      "</option>" for name in decomposition.layers)
    return (f'<div class="controls"><label>Shade each token by ‖r‖/‖h‖ at layer <select id="layer-{index}" '
            f'onchange="shade({index})">{options}</select></label> 0 <span class="legend"></span> 1 (dashed: no '
            f'prediction)</div><div class="text" id="text-{index}">{"".join(spans)}</div>')


def page(decomposition, layer: str | int | None = None, title: str | None = None) -> str:
    """The whole page as HTML: every text's figure and shaded text, plotly.js embedded once. ``layer``: the
    layer the texts are first shaded at (default: the middle one of the decomposition's)."""
    import plotly.io as pio

    layers = decomposition.layers
    layer = layers[len(layers) // 2] if layer is None else str(layer)
    if layer not in layers:
        raise ValueError(f"layer {layer!r} is not one of the decomposition's layers: {layers}")
    title = title or f"{decomposition.source}, predictor {decomposition.predictor}"
    sections = []
    for index in range(len(decomposition)):
        plot = pio.to_html(figure(decomposition, index), include_plotlyjs=index == 0, full_html=False,
                           div_id=f"figure-{index}", config={"displaylogo": False, "responsive": True})
        sections.append(f"<section><h2>Text {index + 1} ({len(decomposition.tokens[index])} tokens)</h2>{plot}"
                        f"{_shaded_text(decomposition, index, layer)}</section>")
    data = [{"layers": layers, "ratio": [[None if not math.isfinite(v) else round(float(v), 5) for v in row]
                                         for row in decomposition.norms(index)["r_over_h"]]}
            for index in range(len(decomposition))]
    # "<" escaped: no token can close the script element
    payload = json.dumps(data).replace("<", "\\u003c")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>Predictable and novel parts: {html.escape(title)}</h1>
<p>Each hidden state h<sub>t</sub> of the LM is split into ĥ<sub>t</sub> = f(h<sub>&lt;t</sub>), the predictor's
reconstruction from the states before it, and the novel part r<sub>t</sub> = h<sub>t</sub> − ĥ<sub>t</sub>.
‖r‖/‖h‖ near 0: the predictor saw the state coming; near 1 or above: it did not. Position 1 has no prediction.
Below each heatmap, the LM's surprisal −log p(x<sub>t</sub> | x<sub>&lt;t</sub>) of the same tokens. Hover a
cell for its token and numbers.</p>
{"".join(sections)}
<script>const PNDECOMP = {payload};
{SCRIPT}</script>
</body></html>
"""


def write_page(decomposition, path: str | Path, layer: str | int | None = None, title: str | None = None) -> Path:
    """:func:`page` written to ``path`` (atomically); returns the path."""
    from .storage import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(page(decomposition, layer, title), encoding="utf-8")
    return path
