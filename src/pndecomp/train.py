"""Training the predictor (SPEC §4), nanoGPT style: one loop, warm-up + cosine, periodic eval.

Batches are drawn by a generator seeded with (seed, step), so a run resumed from a checkpoint
draws exactly the batches the uninterrupted run would have drawn.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from .metrics import RegressionAccumulator
from .predictor import build_predictor, prediction_loss
from .storage import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 32
    checkpoint_every: int = 1000
    seed: int = 0


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr_ratio · lr``."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - min_lr)


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n_windows: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(n_windows: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The windows of training step ``step``: consecutive slices of seeded per-epoch permutations.

    A pure function of (seed, step), so a resumed run draws exactly the batches an uninterrupted one
    would, and every window is used once per epoch before any is repeated.
    """
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = positions // n_windows, positions % n_windows
    indices = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        in_epoch = epochs == epoch
        indices[in_epoch] = _epoch_permutation(n_windows, seed, epoch)[offsets[in_epoch]]
    return indices


@torch.no_grad()
def evaluate(predictor: torch.nn.Module, hidden: torch.Tensor, batch_size: int, device) -> dict:
    """MSE, Var and R² of the predictions of positions 2..T over the given windows."""
    predictor.eval()
    scores = RegressionAccumulator()
    dtype = next(predictor.parameters()).dtype
    for start in range(0, hidden.shape[0], batch_size):
        batch = hidden[start:start + batch_size].to(device, dtype)
        scores.update(batch[:, 1:].float().cpu().numpy(), predictor(batch[:, :-1]).float().cpu().numpy())
    predictor.train()
    return scores.result()


def _run_fingerprint(predictor_cfg, cfg: TrainConfig, data_id: str) -> str:
    text = json.dumps({"predictor": asdict(predictor_cfg), "train": asdict(cfg), "data": data_id}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def train_predictor(
    predictor_cfg,
    cfg: TrainConfig,
    next_batch: Callable[[int], torch.Tensor],
    eval_hidden: torch.Tensor,
    *,
    device: str | torch.device = "cpu",
    resume_path: Path | None = None,
    data_id: str = "",
) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Train f_θ for ``cfg.steps`` steps; ``next_batch(step)`` returns hidden [batch, T, d_model].

    Returns the trained predictor and its learning curve (one row per evaluation). With
    ``resume_path``, state is saved there every ``checkpoint_every`` steps and a compatible saved
    state (same configs and data) is resumed from.
    """
    torch.manual_seed(cfg.seed)
    predictor = build_predictor(predictor_cfg).to(device)
    optimizer = torch.optim.AdamW(predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fingerprint = _run_fingerprint(predictor_cfg, cfg, data_id)
    first_step, curve = 0, []
    if resume_path is not None and Path(resume_path).exists():
        # weights_only: a checkpoint can hold tensors and plain values, never code.
        state = torch.load(resume_path, map_location=device, weights_only=True)
        if state["fingerprint"] == fingerprint:
            predictor.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            first_step, curve = state["step"], state["curve"]
            log.info("resumed from %s at step %d", resume_path, first_step)
        else:
            log.warning("ignoring %s: it was written for another configuration", resume_path)

    predictor.train()
    for step in range(first_step, cfg.steps):
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # On CUDA the matmuls run in bf16 under autocast; the weights and AdamW state stay fp32.
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                            enabled=torch.device(device).type == "cuda"):
            loss = prediction_loss(predictor, next_batch(step).to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(predictor.parameters(), cfg.grad_clip)
        optimizer.step()
        done = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            scores = evaluate(predictor, eval_hidden, cfg.eval_batch_size, device)
            curve.append({"step": done, "lr": lr, "train_loss": loss.item(),
                          **{f"eval_{k}": v for k, v in scores.items()}})
            log.info("step %d  train loss %.5g  eval mse %.5g  r2 %.4f", done, loss.item(), scores["mse"], scores["r2"])
        if resume_path is not None and (done % cfg.checkpoint_every == 0) and done < cfg.steps:
            with atomic_path(resume_path) as tmp:
                torch.save({"model": predictor.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                            "curve": curve, "fingerprint": fingerprint}, tmp)
    predictor.eval()
    return predictor, pd.DataFrame(curve, columns=["step", "lr", "train_loss", "eval_mse", "eval_var", "eval_r2"])
