"""Steering at layer ℓ (docs/method.md §9): add α × a domain direction (the domain's mean ĥ_T or r_T minus the
overall mean) to every position's h and measure a domain probe's probability of that domain, the change in
cross-entropy on other domains' windows, and the change in log-probability of the domain's own held-out
windows (:func:`steering_scores`).

Two ways to run the blocks above ℓ: :func:`steer`, a forward hook on block ℓ (the reference path, a full
forward pass from the tokens), and :func:`pndecomp.lm.logits_from_layer` from the cached clean h plus the
direction (the fast path the scores use).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import adapters, bootstrap
from .lm import logits_from_layer, patched_block_output
from .model_files import Layer
from .patching import batch_rows, check_positions, log_probs, next_token_ce

STEERING_ALPHAS = (0.0, 0.1, 0.3)  # steering strengths, in units of the typical ‖h‖ (interventions.alphas)
POOLED = "all"  # the domain of steering rows pooled over every domain


def add_direction(hidden: torch.Tensor, direction: torch.Tensor, alpha: float,
                  from_position: int = 1) -> torch.Tensor:
    """h + α·direction at positions ≥ ``from_position`` (1-based), h elsewhere: a new tensor."""
    out = hidden.clone()
    out[:, from_position - 1:] += alpha * direction.to(device=hidden.device, dtype=hidden.dtype)
    return out


def steer(model: nn.Module, layer: Layer, direction, alpha: float, from_position: int = 1):
    """A context manager (hook, reference path) adding α·direction to block ``layer``'s output at
    positions ≥ ``from_position`` (default: every position)."""
    direction = torch.as_tensor(direction)
    return patched_block_output(model, layer, lambda h: add_direction(h, direction, alpha, from_position))


def domain_directions(features, labels) -> dict:
    """{domain: mean(features | domain) − mean(features)} [d] float64, the overall mean over all rows
    (so a large domain weighs more). features: ĥ_T or r_T of the probe_train windows [N, d]: one row
    per window, its last position, so no window's position 1 (the sink state) enters either mean."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    overall = features.mean(axis=0)
    return {label.item() if isinstance(label, np.generic) else label: features[labels == label].mean(axis=0) - overall
            for label in np.unique(labels)}


def typical_norm(hidden, from_position: int = 1) -> float:
    """The median ‖h_t‖ over windows and positions ≥ ``from_position`` of ``hidden`` [W, T, d]: the
    unit of the steering strength α (robust to the outsized states some LMs keep at position 1)."""
    h = torch.as_tensor(np.asarray(hidden) if isinstance(hidden, np.ndarray) else hidden)
    return float(h[:, from_position - 1:].float().norm(dim=-1).median())


def fit_domain_probe(features, labels, C: float = 1.0, seed: int = 0, max_iter: int = 1000):
    """The domain probe of :func:`pndecomp.probes.make_probe` fit on h_T of the probe_train windows."""
    from .probes import make_probe

    return make_probe(C, seed=seed, max_iter=max_iter).fit(np.asarray(features, dtype=np.float64),
                                                           np.asarray(labels))


def _probability(probe, features: np.ndarray, label) -> np.ndarray:
    classes = list(probe.classes_)
    if label not in classes:
        return np.full(len(features), np.nan)
    return probe.predict_proba(np.asarray(features, dtype=np.float64))[:, classes.index(label)]


@torch.no_grad()
def _steered_run(model, layer, h, ids, vector, from_position, readout_layers):
    """CE [batch, P] of x_{t+1} for t = from_position..T−1 and h_T at each readout layer, with
    block ``layer``'s output h + vector at positions ≥ from_position."""
    steered = add_direction(h, vector, 1.0, from_position)
    captured, handles = {}, []
    blocks = adapters.block_modules(model)
    for m in readout_layers:
        if m == layer:
            captured[m] = steered[:, -1].float().cpu().numpy()
        else:
            handles.append(blocks[m].register_forward_hook(
                lambda _mod, _in, out, m=m: captured.__setitem__(
                    m, (out[0] if isinstance(out, tuple) else out)[:, -1].float().cpu().numpy())))
    try:
        scored = log_probs(logits_from_layer(model, layer, steered, ids, from_position)[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
    return next_token_ce(scored, ids[:, from_position:]).cpu().numpy(), captured


def steering_scores(model: nn.Module, layer: int, tokens, hidden, labels, documents, directions: Mapping, *,
                    scale: float, alphas: Sequence[float] = STEERING_ALPHAS, probes: Mapping | None = None,
                    from_position: int = 1, batch_size: int = 8, n_resamples: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """Steer every window toward every domain and measure what moves.

    tokens [W, T], hidden [W, T, d] (the cached clean h at ``layer``), labels [W] (domains),
    documents [W] of held-out windows (e.g. probe_test); directions {source ("hhat" or "r"):
    {domain: [d]}} from :func:`domain_directions`. For each source, domain d and α the vector added
    at every position ≥ ``from_position`` is α · scale · v_d/‖v_d‖ (scale: :func:`typical_norm`, so α
    is in units of a typical ‖h‖), and the metrics are, as tidy rows (layer, source, domain, alpha,
    added_norm, metric, probe_layer, mean, low, high, n_windows) with intervals from resampling split units:

    * ``p_domain`` on the windows of other domains: a fitted probe's probability of d on their
      steered h_T at block ``probe_layer`` (probes: {block ≥ layer: fitted classifier with
      ``predict_proba``/``classes_``}; block = ``layer`` reads the steered state itself);
    * ``delta_ce_other``: on those windows, the mean over positions t = from_position..T−1 of
      CE(x_{t+1}) steered − clean, nats;
    * ``delta_logprob_domain``: on the held-out windows of d itself, the change in mean log p(x_{t+1})
      over the same positions (steered − clean; positive = d's text became more likely).

    Rows of scope "pooled" (domain :data:`POOLED`) average each window over the domains it was scored for (every
    other domain for ``p_domain`` and ``delta_ce_other``, its own for ``delta_logprob_domain``) before
    the same bootstrap over split units: one number per (source, α, metric) for all domains.

    α = 0 adds nothing (h + 0 = h exactly) and gives zero deltas.
    """
    probes = dict(probes or {})
    for m in probes:
        if not layer <= m < len(adapters.block_modules(model)):
            raise ValueError(f"probe layer {m} must be a block at or above the steered layer {layer}")
    n_windows, length = tokens.shape[:2]
    check_positions(from_position, length, 1)
    labels = np.asarray(labels)
    group, n_groups = bootstrap.groups_of(documents)
    counts = bootstrap.resample_counts(n_groups, n_resamples, seed)
    device = next(model.parameters()).device
    batches = [np.arange(s, min(s + batch_size, n_windows)) for s in range(0, n_windows, batch_size)]

    def run(vector):
        ce, readouts = [], {m: [] for m in probes}
        for rows in batches:
            batch_ce, captured = _steered_run(model, layer, batch_rows(hidden, rows, device).float(),
                                              batch_rows(tokens, rows, device).long(), vector, from_position, probes)
            ce.append(batch_ce.mean(axis=1))
            for m in probes:
                readouts[m].append(captured[m])
        return np.concatenate(ce), {m: np.concatenate(v) for m, v in readouts.items()}

    def summary(values, mask):
        """Mean of per-window ``values`` over the windows in ``mask``, with its bootstrap interval."""
        weights = counts * bootstrap.grouped_sums(mask, group, n_groups)[None, :]  # windows counted
        sums = counts @ bootstrap.grouped_sums(np.where(mask, values, 0.0), group, n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            low, high = bootstrap.interval(sums / weights.sum(axis=1))
        return float(values[mask].mean()) if mask.any() else float("nan"), float(low), float(high)

    clean_ce, clean_readouts = run(torch.zeros(hidden.shape[-1]))
    rows = []
    for source, per_domain in directions.items():
        for alpha in alphas:
            base = dict(layer=layer, source=source, alpha=float(alpha), added_norm=float(alpha * scale))
            # Per window, the sum over the domains it was scored for: the pooled rows' values.
            pooled: dict[tuple, np.ndarray] = {}
            for domain, direction in per_domain.items():
                direction = torch.as_tensor(np.asarray(direction), dtype=torch.float32)
                unit = direction / direction.norm().clamp_min(torch.finfo(torch.float32).tiny)
                own, other = labels == domain, labels != domain
                # α = 0 adds exactly nothing: the clean run is that run.
                ce, readouts = (clean_ce, clean_readouts) if alpha == 0 else run(alpha * scale * unit)
                metrics = [("delta_ce_other", None, ce - clean_ce, other),
                           ("delta_logprob_domain", None, clean_ce - ce, own)]
                metrics += [("p_domain", m, _probability(probe, readouts[m], domain), other)
                            for m, probe in probes.items()]
                for metric, probe_layer, values, mask in metrics:
                    mean, low, high = summary(values, mask)
                    rows.append({**base, "scope": "domain", "domain": domain, "metric": metric,
                                 "probe_layer": probe_layer, "mean": mean, "low": low, "high": high,
                                 "n_windows": int(mask.sum())})
                    total, count = pooled.setdefault((metric, probe_layer), (np.zeros(n_windows), np.zeros(n_windows)))
                    total += np.where(mask, values, 0.0)
                    count += mask
            for (metric, probe_layer), (total, count) in pooled.items():
                scored = count > 0
                mean, low, high = summary(np.divide(total, count, out=np.zeros(n_windows), where=scored), scored)
                rows.append({**base, "scope": "pooled", "domain": POOLED, "metric": metric,
                             "probe_layer": probe_layer, "mean": mean, "low": low, "high": high,
                             "n_windows": int(scored.sum())})
    table = pd.DataFrame(rows)
    if not table.empty:
        table["probe_layer"] = table["probe_layer"].astype("Int64")
        table = table[["layer", "source", "scope", "domain", "alpha", "added_norm", "metric", "probe_layer",
                       "mean", "low", "high", "n_windows"]]
    return table
