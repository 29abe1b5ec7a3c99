"""Patching at layer ℓ: does the model *use* what ĥ and r carry? (docs/method.md §9)

Patching replaces h_t at positions t ≥ ``from_position`` by one of the :data:`~pndecomp.patch_kinds.PATCHES`
(ĥ_t, ĥ_t + a shuffled r, the train mean, ĥ_t rescaled to ‖h_t‖, or h_t itself) and measures the change in
the LM's next-token cross-entropy and the KL from the clean next-token distribution (:func:`patching_scores`,
:func:`patching_table`).

Positions are 1-based as in docs/method.md §2: position 1 is the window's first token. The logits at position
t predict x_{t+1}, so a patch from position f changes the predictions of x_{f+1}..x_T; scores are
reported for the positions t = f..T−1 whose logits are scored against a next token. Clean and patched logits
both come from :func:`pndecomp.lm.logits_from_layer` (only the blocks above ℓ run) on the same stored states,
so an ``identity`` patch changes the loss by exactly 0.

Every function here is pure torch/numpy (no Snakemake); hidden states may come in any float dtype
(the fp16 activation cache) and are cast to the LM's dtype before the blocks run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import bootstrap
from .lm import logits_from_layer
from .model_files import Layer
from .patch_kinds import PATCHES, patch_function

DEFAULT_FROM_POSITION = 33  # interventions.from_position: positions ≤ 32 are the window's warm-up


def aligned_hhat(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """ĥ aligned to positions: [batch, T, d] float32 whose row t (1-based) is ĥ_t = f(h_{<t}).

    Position 1 has no prediction; its row holds h_1 itself (r_1 = 0), and no patch reaches it.
    """
    dtype = next(predictor.parameters()).dtype
    with torch.no_grad():
        predicted = predictor(hidden[:, :-1].to(dtype)).float()
    return torch.cat([hidden[:, :1].float(), predicted], dim=1)


def apply_patch(kind: str, hidden: torch.Tensor, hhat: torch.Tensor, r_other: torch.Tensor,
                train_mean: torch.Tensor, from_position: int) -> torch.Tensor:
    """The patched states [batch, T, d] float32: positions t ≥ ``from_position`` (1-based) replaced by
    ``PATCHES[kind]`` (:mod:`pndecomp.patch_kinds`), positions before it left as they are.

    hidden: clean h; hhat: :func:`aligned_hhat` of it; r_other: clean r = h − ĥ of each window's
    partner window (same positions); train_mean: [d] mean of h over positions 2..T of the predictor_train
    windows (``baselines.MeanBaseline().fit(...).mean_``): the rows a patch replaces are positions
    ``from_position``..T ⊂ 2..T, and position 1's attention-sink state, never replaced, would pull the
    mean away from all of them.
    """
    fn, f = patch_function(kind), from_position - 1
    out = hidden.float().clone()
    out[:, f:] = fn(out[:, f:], hhat[:, f:].float(), r_other[:, f:].float(),
                    torch.as_tensor(train_mean, dtype=torch.float32, device=out.device))
    return out


@torch.no_grad()
def rollout_patch(kind: str, hidden: torch.Tensor, predictor: nn.Module, r_other: torch.Tensor,
                  train_mean: torch.Tensor, from_position: int) -> torch.Tensor:
    """:func:`apply_patch` with ĥ recomputed on the patched run: ĥ'_t = f(h'_{<t}), where h'_{<t} holds
    the patches already made, one position at a time (T − from_position + 1 predictor calls)."""
    fn = patch_function(kind)
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

def log_probs(logits: torch.Tensor) -> list[torch.Tensor]:
    """Per-window float32 log-softmax. A batch keeps its clean and one patched set for the KL:
    2 × batch × P × vocab float32 (~300 MB for SmolLM2 at 8 windows × 96 positions)."""
    return [torch.log_softmax(window.float(), dim=-1) for window in logits]


def next_token_ce(log_probs: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """[batch, P] −log p(target) in nats; log_probs rows align with targets [batch, P]."""
    return torch.stack([-lp.gather(-1, ids[:, None]).squeeze(-1) for lp, ids in zip(log_probs, targets)])


def _kl(clean: list[torch.Tensor], patched: list[torch.Tensor]) -> torch.Tensor:
    """[batch, P] KL(clean ‖ patched) in nats per position."""
    return torch.stack([(c.exp() * (c - p)).sum(dim=-1) for c, p in zip(clean, patched)])


def check_positions(from_position: int, length: int, minimum: int) -> None:
    if not minimum <= from_position <= length - 1:
        raise ValueError(f"from_position must be in {minimum}..{length - 1} for windows of {length} tokens "
                         f"(a next token must follow), got {from_position}")


def batch_rows(array, rows: np.ndarray, device) -> torch.Tensor:
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
    check_positions(from_position, length, 2)
    for kind in kinds:
        patch_function(kind)
    device = next(model.parameters()).device
    predictor_device = next(predictor.parameters()).device
    mean = torch.as_tensor(np.asarray(train_mean), dtype=torch.float32)
    partner = derangement(n_windows, seed)
    delta_ce = {kind: [] for kind in kinds}
    kl = {kind: [] for kind in kinds}
    clean_ce = []
    for start in range(0, n_windows, batch_size):
        rows = np.arange(start, min(start + batch_size, n_windows))
        ids = batch_rows(tokens, rows, device).long()
        h = batch_rows(hidden, rows, predictor_device).float()
        hhat = aligned_hhat(predictor, h)
        h_other = batch_rows(hidden, partner[rows], predictor_device).float()
        r_other = h_other - aligned_hhat(predictor, h_other)
        targets = ids[:, from_position:]  # x_{t+1} for t = from_position..T-1
        clean = log_probs(logits_from_layer(model, layer, h, ids, from_position)[:, :-1])
        ce = next_token_ce(clean, targets)
        clean_ce.append(ce.cpu().numpy())
        for kind in kinds:
            if recompute_hhat:
                patched_h = rollout_patch(kind, h, predictor, r_other, mean.to(h.device), from_position)
            else:
                patched_h = apply_patch(kind, h, hhat, r_other, mean.to(h.device), from_position)
            patched = log_probs(logits_from_layer(model, layer, patched_h, ids, from_position)[:, :-1])
            delta_ce[kind].append((next_token_ce(patched, targets) - ce).cpu().numpy())
            kl[kind].append(_kl(clean, patched).cpu().numpy())
    return PatchingScores(positions=np.arange(from_position, length), partner=partner,
                          delta_ce={kind: np.concatenate(v) for kind, v in delta_ce.items()},
                          kl={kind: np.concatenate(v) for kind, v in kl.items()},
                          clean_ce=np.concatenate(clean_ce))


def patching_table(scores: PatchingScores, documents: Sequence, *, layer: Layer | None = None,
                   n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Tidy rows (layer, kind, metric ∈ {delta_ce, kl}, scope, position, mean, low, high, n_windows,
    n_documents): per position (``position`` = the 1-based patched position t, scoring x_{t+1}) and
    pooled; every kind and metric uses the same document resamples, so differences are paired."""
    frames = []
    for metric, per_kind in (("delta_ce", scores.delta_ce), ("kl", scores.kl)):
        for kind, values in per_kind.items():
            frame = bootstrap.mean_with_intervals(values, documents, n_resamples=n_resamples, seed=seed)
            frame["position"] = pd.array([*scores.positions.tolist(), None], dtype="Int64")
            frames.append(frame.assign(layer=str(layer), kind=kind, metric=metric))
    table = pd.concat(frames, ignore_index=True)
    return table[["layer", "kind", "metric", "scope", "position", "mean", "low", "high", "n_windows",
                  "n_documents"]]
