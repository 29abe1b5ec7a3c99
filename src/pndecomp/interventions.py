"""Causal interventions at layer ℓ: does the model *use* what ĥ and r carry? (docs/method.md §9, issue 11)

Two interventions on the residual stream at the output of block ℓ (the layer convention of
:mod:`pndecomp.lm`):

* **Patching** replaces h_t at positions t ≥ ``from_position`` by one of :data:`PATCHES` (ĥ_t, ĥ_t + a
  shuffled r, the train mean, ĥ_t rescaled to ‖h_t‖, or h_t itself) and measures the change in the
  LM's next-token cross-entropy and the KL from the clean next-token distribution
  (:func:`patching_scores`, :func:`patching_table`).
* **Steering** adds α × a domain direction (the domain's mean ĥ_T or r_T minus the overall mean) to
  every position's h and measures a domain probe's probability of that domain, the change in
  cross-entropy on other domains' windows, and the change in log-probability of the domain's own
  held-out windows (:func:`steering_scores`).

Positions are 1-based as in docs/method.md §2: position 1 is the window's first token. The logits at position
t predict x_{t+1}, so a patch from position f changes the predictions of x_{f+1}..x_T; scores are
reported for the positions t = f..T−1 whose logits are scored against a next token.

Two ways to run the blocks above ℓ:

* :func:`patched_block_output` / :func:`steer`, a forward hook on block ℓ (through the adapter
  registry): the reference path, a full forward pass from the tokens;
* :func:`logits_from_layer`, the fast path: blocks 0..ℓ are swapped for stand-ins that return the
  given block-ℓ output (the cached clean h, patched or steered), so only blocks ℓ+1.. run, with the
  masks and rotary embeddings the model's own forward builds. The clean reference is computed by the
  same path from the same stored states, so an ``identity`` patch changes the loss by exactly 0.

Every function here is pure torch/numpy (no Snakemake); hidden states may come in any float dtype
(the fp16 activation cache) and are cast to the LM's dtype before the blocks run.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import adapters, bootstrap
from .lm import Float32Head
from .model_files import EMBED, FINAL, Layer

DEFAULT_FROM_POSITION = 33  # interventions.from_position: positions ≤ 32 are the window's warm-up
STEERING_ALPHAS = (0.0, 0.1, 0.3)  # steering strengths, in units of the typical ‖h‖ (interventions.alphas)
POOLED = "all"  # the domain of steering rows pooled over every domain


# --------------------------------------------------------------------------------------------- hooks

def _layer_module(model: nn.Module, layer: Layer) -> nn.Module:
    """The module whose output is ``layer``: block ℓ, or the token embedding for ``"embed"``."""
    if layer == EMBED:
        return adapters.embedding(model)
    if layer == FINAL or isinstance(layer, str):
        raise ValueError(f"interventions act on a block index or {EMBED!r}, not {layer!r} (the final norm's "
                         "output feeds only the LM head: patch the last block instead)")
    blocks = adapters.block_modules(model)
    if not 0 <= int(layer) < len(blocks):
        raise ValueError(f"layer {layer} is not a block of this model (0..{len(blocks) - 1})")
    return blocks[int(layer)]


@contextlib.contextmanager
def patched_block_output(model: nn.Module, layer: Layer,
                         fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the ``with``, block ``layer``'s hidden-state output h [batch, T, d] is replaced by fn(h).

    The block's output structure is kept (a tensor, or a tuple whose first item is the hidden
    state). The hook is removed on leaving, also when the forward pass raises.
    """
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    handle = _layer_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


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


# ----------------------------------------------------------------------------------------- fast path

class _StandIn(nn.Module):
    """Takes the place of blocks 0..ℓ: ignores its input and returns the block-ℓ output it was given."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *_args, **_kwargs) -> torch.Tensor:
        return self.hidden


class _StopForward(Exception):
    """Raised at the final norm: the model's own LM head is not needed (we use a float32 one)."""


_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _float32_head(model: nn.Module) -> Float32Head:
    """One :class:`~pndecomp.lm.Float32Head` per model (its float32 copies cost memory in a bf16 LM)."""
    if model not in _HEADS:
        _HEADS[model] = Float32Head(model)
    return _HEADS[model]


@torch.no_grad()
def logits_from_layer(model: nn.Module, layer: Layer, hidden: torch.Tensor, input_ids: torch.Tensor | None = None,
                      first_position: int = 1) -> torch.Tensor:
    """The LM's float32 next-token logits [batch, T − first_position + 1, vocab] (positions
    first_position..T) when block ``layer`` outputs ``hidden`` [batch, T, d].

    Only blocks ℓ+1.. run: blocks 0..ℓ are swapped for stand-ins for the duration of the call (and
    restored in ``finally``), so the model's own forward still builds the attention masks and rotary
    embeddings. ``input_ids`` only feed the (discarded) embedding; zeros are used when omitted. For
    ``"embed"`` the embedding's output is replaced and every block runs. The logits come from the
    final norm's input through :class:`~pndecomp.lm.Float32Head`, for the positions asked only (the
    final norm and head act position by position). Hooks on blocks above ℓ still fire.
    """
    module = _layer_module(model, layer)  # validates the layer
    param = next(model.parameters())
    hidden = hidden.to(device=param.device, dtype=param.dtype)
    if input_ids is None:
        input_ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=param.device)
    captured = {}

    def at_final_norm(_module, inputs, _output):
        captured["final norm input"] = inputs[0]
        raise _StopForward

    handles = [adapters.final_norm(model).register_forward_hook(at_final_norm)]
    blocks, originals = adapters.block_modules(model), []
    try:
        if layer == EMBED:
            handles.append(module.register_forward_hook(lambda *_: hidden))
        else:
            stand_in = _StandIn(hidden)
            for index in range(int(layer) + 1):
                originals.append(blocks[index])
                blocks[index] = stand_in
        try:
            model(input_ids=input_ids.to(param.device), use_cache=False)
        except _StopForward:
            pass
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
        for handle in handles:
            handle.remove()
    return _float32_head(model)(captured["final norm input"][:, first_position - 1:])


# -------------------------------------------------------------------------------------------- patches

def aligned_hhat(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """ĥ aligned to positions: [batch, T, d] float32 whose row t (1-based) is ĥ_t = f(h_{<t}).

    Position 1 has no prediction; its row holds h_1 itself (r_1 = 0), and no patch reaches it.
    """
    dtype = next(predictor.parameters()).dtype
    with torch.no_grad():
        predicted = predictor(hidden[:, :-1].to(dtype)).float()
    return torch.cat([hidden[:, :1].float(), predicted], dim=1)


def _norm_matched(h, hhat, _r_other, _mean):
    scale = h.norm(dim=-1, keepdim=True) / hhat.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(hhat.dtype).tiny)
    return hhat * scale


#: Patch kinds, position by position: (h_t, ĥ_t, r_t of the partner window, train mean [d]) -> new h_t,
#: every argument [..., d]. The single place to add a patch.
PATCHES: dict[str, Callable[..., torch.Tensor]] = {
    "identity": lambda h, hhat, r_other, mean: h,
    "hhat": lambda h, hhat, r_other, mean: hhat,
    "hhat_plus_shuffled_r": lambda h, hhat, r_other, mean: hhat + r_other,
    "mean": lambda h, hhat, r_other, mean: mean.expand_as(h),
    "zero_r_norm_matched": _norm_matched,
}


def _patch_fn(kind: str):
    if kind not in PATCHES:
        raise ValueError(f"unknown patch {kind!r}; known patches: {', '.join(PATCHES)}")
    return PATCHES[kind]


def apply_patch(kind: str, hidden: torch.Tensor, hhat: torch.Tensor, r_other: torch.Tensor,
                train_mean: torch.Tensor, from_position: int) -> torch.Tensor:
    """The patched states [batch, T, d] float32: positions t ≥ ``from_position`` (1-based) replaced by
    ``PATCHES[kind]``, positions before it left as they are.

    hidden: clean h; hhat: :func:`aligned_hhat` of it; r_other: clean r = h − ĥ of each window's
    partner window (same positions); train_mean: [d] mean of h over positions 2..T of the predictor_train
    windows (``baselines.MeanBaseline().fit(...).mean_``): the rows a patch replaces are positions
    ``from_position``..T ⊂ 2..T, and position 1's attention-sink state, never replaced, would pull the
    mean away from all of them.
    """
    fn, f = _patch_fn(kind), from_position - 1
    out = hidden.float().clone()
    out[:, f:] = fn(out[:, f:], hhat[:, f:].float(), r_other[:, f:].float(),
                    torch.as_tensor(train_mean, dtype=torch.float32, device=out.device))
    return out


@torch.no_grad()
def rollout_patch(kind: str, hidden: torch.Tensor, predictor: nn.Module, r_other: torch.Tensor,
                  train_mean: torch.Tensor, from_position: int) -> torch.Tensor:
    """:func:`apply_patch` with ĥ recomputed on the patched run: ĥ'_t = f(h'_{<t}), where h'_{<t} holds
    the patches already made, one position at a time (T − from_position + 1 predictor calls)."""
    fn = _patch_fn(kind)
    dtype = next(predictor.parameters()).dtype
    mean = torch.as_tensor(train_mean, dtype=torch.float32, device=hidden.device)
    out = hidden.float().clone()
    for t in range(from_position, hidden.shape[1] + 1):  # 1-based position t is row t - 1
        hhat_t = predictor(out[:, :t - 1].to(dtype))[:, -1].float()
        out[:, t - 1] = fn(out[:, t - 1], hhat_t, r_other[:, t - 1].float(), mean)
    return out


def derangement(n: int, seed: int) -> np.ndarray:
    """A seeded uniformly random permutation of 0..n−1 with no fixed point: window i borrows the
    novel part r of window ``derangement[i]`` (rejection sampling; ~e draws on average)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 windows, got {n}")
    rng = np.random.default_rng([seed, n, 0xDE7A])
    while True:
        permutation = rng.permutation(n)
        if not np.any(permutation == np.arange(n)):
            return permutation


# -------------------------------------------------------------------------------------------- scoring

def _log_probs(logits: torch.Tensor) -> list[torch.Tensor]:
    """Per-window float32 log-softmax. A batch keeps its clean and one patched set for the KL:
    2 × batch × P × vocab float32 (~300 MB for SmolLM2 at 8 windows × 96 positions)."""
    return [torch.log_softmax(window.float(), dim=-1) for window in logits]


def _next_token_ce(log_probs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """[batch, P] −log p(target) in nats; log_probs rows align with targets [batch, P]."""
    return torch.stack([-lp.gather(-1, ids[:, None]).squeeze(-1) for lp, ids in zip(log_probs, targets)])


def _kl(clean: list[torch.Tensor], patched: list[torch.Tensor]) -> torch.Tensor:
    """[batch, P] KL(clean ‖ patched) in nats per position."""
    return torch.stack([(c.exp() * (c - p)).sum(dim=-1) for c, p in zip(clean, patched)])


def _check_positions(from_position: int, length: int, minimum: int) -> None:
    if not minimum <= from_position <= length - 1:
        raise ValueError(f"from_position must be in {minimum}..{length - 1} for windows of {length} tokens "
                         f"(a next token must follow), got {from_position}")


def _batch(array, rows: np.ndarray, device) -> torch.Tensor:
    """array[rows] as a tensor on ``device``: array is numpy (possibly memory-mapped) or torch."""
    if isinstance(array, torch.Tensor):
        return array[torch.as_tensor(rows, device=array.device)].to(device)
    return torch.from_numpy(np.ascontiguousarray(array[rows])).to(device)


@dataclass
class PatchingScores:
    """Per-window, per-position patching effects (arrays [windows, positions])."""

    positions: np.ndarray  # [P] 1-based positions t whose logits (predicting x_{t+1}) are scored
    delta_ce: dict[str, np.ndarray]  # kind -> [W, P] CE_patched − CE_clean of x_{t+1}, nats
    kl: dict[str, np.ndarray]  # kind -> [W, P] KL(clean ‖ patched) of the next-token distribution, nats
    partner: np.ndarray  # [W] the window whose clean r ``hhat_plus_shuffled_r`` borrows
    clean_ce: np.ndarray  # [W, P] CE of the clean run


@torch.no_grad()
def patching_scores(model: nn.Module, layer: Layer, tokens, hidden, predictor: nn.Module, train_mean, *,
                    kinds: Sequence[str] = tuple(PATCHES), from_position: int = DEFAULT_FROM_POSITION,
                    recompute_hhat: bool = False, batch_size: int = 8, seed: int = 0) -> PatchingScores:
    """Patch block ``layer`` on the eval windows and score every kind against the clean run.

    tokens [W, T] int; hidden [W, T, d] the cached clean h at ``layer`` (numpy or torch, any float
    dtype). Clean and patched logits both come from :func:`logits_from_layer` (clean: the stored h),
    so ``identity`` scores exactly 0. ĥ_t = f(clean h_{<t}) unless ``recompute_hhat`` (then
    :func:`rollout_patch`). ``hhat_plus_shuffled_r`` adds the clean r of the partner window
    :func:`derangement` (W, seed) picks, at the same positions.
    """
    n_windows, length = tokens.shape[:2]
    _check_positions(from_position, length, 2)
    for kind in kinds:
        _patch_fn(kind)
    device = next(model.parameters()).device
    predictor_device = next(predictor.parameters()).device
    mean = torch.as_tensor(np.asarray(train_mean), dtype=torch.float32)
    partner = derangement(n_windows, seed)
    delta_ce = {kind: [] for kind in kinds}
    kl = {kind: [] for kind in kinds}
    clean_ce = []
    for start in range(0, n_windows, batch_size):
        rows = np.arange(start, min(start + batch_size, n_windows))
        ids = _batch(tokens, rows, device).long()
        h = _batch(hidden, rows, predictor_device).float()
        hhat = aligned_hhat(predictor, h)
        h_other = _batch(hidden, partner[rows], predictor_device).float()
        r_other = h_other - aligned_hhat(predictor, h_other)
        targets = ids[:, from_position:]  # x_{t+1} for t = from_position..T-1
        clean = _log_probs(logits_from_layer(model, layer, h, ids, from_position)[:, :-1])
        ce = _next_token_ce(clean, targets)
        clean_ce.append(ce.cpu().numpy())
        for kind in kinds:
            if recompute_hhat:
                patched_h = rollout_patch(kind, h, predictor, r_other, mean.to(h.device), from_position)
            else:
                patched_h = apply_patch(kind, h, hhat, r_other, mean.to(h.device), from_position)
            patched = _log_probs(logits_from_layer(model, layer, patched_h, ids, from_position)[:, :-1])
            delta_ce[kind].append((_next_token_ce(patched, targets) - ce).cpu().numpy())
            kl[kind].append(_kl(clean, patched).cpu().numpy())
    return PatchingScores(positions=np.arange(from_position, length), partner=partner,
                          delta_ce={kind: np.concatenate(v) for kind, v in delta_ce.items()},
                          kl={kind: np.concatenate(v) for kind, v in kl.items()},
                          clean_ce=np.concatenate(clean_ce))


def mean_with_intervals(values: np.ndarray, documents: Sequence, *, n_resamples: int = 1000, seed: int = 0,
                        level: float = bootstrap.LEVEL) -> pd.DataFrame:
    """Means of ``values`` [W, P] over windows, per position and pooled over positions, with
    split-unit bootstrap intervals (:mod:`pndecomp.bootstrap`; every window of a drawn document
    counts as often as it is drawn).

    Rows: scope "position" (one per column p, ``position`` = p + 1 is the column index, 1-based) then
    scope "pooled" (``position`` <NA>): the mean over all W × P values.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    group, n_groups = bootstrap.groups_of(documents)
    counts = bootstrap.resample_counts(n_groups, n_resamples, seed)
    sums = counts @ bootstrap.grouped_sums(values, group, n_groups)  # [B, P]
    n = counts @ bootstrap.grouped_sums(np.ones(len(values)), group, n_groups)  # [B] windows per resample
    per_position = sums / n[:, None]
    pooled = sums.sum(axis=1) / (n * values.shape[1])
    low, high = bootstrap.interval(per_position, level)
    pooled_low, pooled_high = bootstrap.interval(pooled, level)
    frame = pd.DataFrame({
        "scope": ["position"] * values.shape[1] + ["pooled"],
        "position": pd.array(list(range(1, values.shape[1] + 1)) + [None], dtype="Int64"),
        "mean": np.append(values.mean(axis=0), values.mean()),
        "low": np.append(low, pooled_low), "high": np.append(high, pooled_high),
    })
    frame["n_windows"], frame["n_documents"] = len(values), n_groups
    return frame


def patching_table(scores: PatchingScores, documents: Sequence, *, layer: Layer | None = None,
                   n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tidy rows (layer, kind, metric ∈ {delta_ce, kl}, scope, position, mean, low, high, n_windows,
    n_documents): per position (``position`` = the 1-based patched position t, scoring x_{t+1}) and
    pooled; every kind and metric uses the same document resamples, so differences are paired."""
    frames = []
    for metric, per_kind in (("delta_ce", scores.delta_ce), ("kl", scores.kl)):
        for kind, values in per_kind.items():
            frame = mean_with_intervals(values, documents, n_resamples=n_resamples, seed=seed)
            frame["position"] = pd.array([*scores.positions.tolist(), None], dtype="Int64")
            frames.append(frame.assign(layer=str(layer), kind=kind, metric=metric))
    table = pd.concat(frames, ignore_index=True)
    return table[["layer", "kind", "metric", "scope", "position", "mean", "low", "high", "n_windows",
                  "n_documents"]]


# ------------------------------------------------------------------------------------------- steering

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
        log_probs = _log_probs(logits_from_layer(model, layer, steered, ids, from_position)[:, :-1])
    finally:
        for handle in handles:
            handle.remove()
    return _next_token_ce(log_probs, ids[:, from_position:]).cpu().numpy(), captured


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
    added_norm, metric, probe_layer, mean, low, high, n_windows) with document-bootstrap intervals:

    * ``p_domain`` on the windows of other domains: a fitted probe's probability of d on their
      steered h_T at block ``probe_layer`` (probes: {block ≥ layer: fitted classifier with
      ``predict_proba``/``classes_``}; block = ``layer`` reads the steered state itself);
    * ``delta_ce_other``: on those windows, the mean over positions t = from_position..T−1 of
      CE(x_{t+1}) steered − clean, nats;
    * ``delta_logprob_domain``: on the held-out windows of d itself, the change in mean log p(x_{t+1})
      over the same positions (steered − clean; positive = d's text became more likely).

    Rows of scope "pooled" (domain :data:`POOLED`) average each window over the domains it was scored for (every
    other domain for ``p_domain`` and ``delta_ce_other``, its own for ``delta_logprob_domain``) before
    the same bootstrap over documents: one number per (source, α, metric) for all domains.

    α = 0 adds nothing (h + 0 = h exactly) and gives zero deltas.
    """
    probes = dict(probes or {})
    for m in probes:
        if not layer <= m < len(adapters.block_modules(model)):
            raise ValueError(f"probe layer {m} must be a block at or above the steered layer {layer}")
    n_windows, length = tokens.shape[:2]
    _check_positions(from_position, length, 1)
    labels = np.asarray(labels)
    group, n_groups = bootstrap.groups_of(documents)
    counts = bootstrap.resample_counts(n_groups, n_resamples, seed)
    device = next(model.parameters()).device
    batches = [np.arange(s, min(s + batch_size, n_windows)) for s in range(0, n_windows, batch_size)]

    def run(vector):
        ce, readouts = [], {m: [] for m in probes}
        for rows in batches:
            batch_ce, captured = _steered_run(model, layer, _batch(hidden, rows, device).float(),
                                              _batch(tokens, rows, device).long(), vector, from_position, probes)
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
