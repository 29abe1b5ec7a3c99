"""Training the predictor (docs/method.md §4), nanoGPT style: one loop, warm-up + cosine, periodic eval.

Closed-form kinds (``ridge_ar<k>``) are fitted instead, by :func:`fit_predictor`, which writes a learning
curve of one row (step 0) with the same columns.

Batches are drawn by a generator seeded with (seed, step), so a run resumed from a checkpoint
draws exactly the batches the uninterrupted run would have drawn. One loop drives one predictor or
several (one per layer, fed from one LM pass per step in stream mode); each predictor keeps its own
weights, optimizer, learning curve and resume file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from .metrics import RegressionAccumulator
from .predictor import (
    Normalized,
    build_predictor,
    check_normalization,
    loss_unit,
    normalization_stats,
    outlier_limit,
    prediction_loss,
)
from .predictor_kinds import kind_of
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
    max_epochs: float = 1.0  # stream mode: passes over the window pool a run may take
    normalize: str = "none"  # train in a normalised space: none or a key of predictor.NORMALIZATIONS
    outlier_norm_ratio: float = 10.0  # rows above this × the median ‖h‖ are outliers (robust normalisations)
    stop_patience: int | None = None  # stop after this many evaluations without improvement (None: never)
    stop_rel_tol: float = 1e-3  # an improvement lowers the best val MSE by more than this fraction
    schedule: str = "cosine"  # after the warm-up: cosine (to train.steps) or plateau (decay at each plateau)
    lr_decay_factor: float = 0.3  # plateau schedule: the learning rate's factor at each plateau
    outlier_rows: str = "keep"  # robust: outlier input rows scaled down to the limit, outlier targets not in the loss
    compute_dtype: str = "auto"  # the training forward: bfloat16 (autocast), float32, or auto (bfloat16 on CUDA)


def get_lr(step: int, cfg: TrainConfig, decays: int = 0) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then either cosine decay to ``min_lr_ratio · lr`` at
    ``steps`` (``cosine``) or ``lr · lr_decay_factor^decays``, never below ``min_lr_ratio · lr``, where
    ``decays`` counts the validation plateaus met so far (``plateau``: the schedule does not depend on
    the cap, so a run stopped by its plateau has annealed whatever ``steps`` is)."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "plateau":
        return max(cfg.lr * cfg.lr_decay_factor ** decays, min_lr)
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


class NonFiniteLoss(FloatingPointError):
    """A training loss that is NaN or infinite: training stops before the step corrupts the weights."""


class StreamPoolTooSmall(ValueError):
    """Stream-mode training would take more passes over its window pool than ``train.max_epochs``."""


# val_*: scores on train.eval_windows predictor_val windows (never the reported predictor_eval split);
# kept: the evaluation whose weights are the result (the best val MSE with a stopping rule, else the last).
CURVE_COLUMNS = ["step", "lr", "train_loss", "windows_seen", "tokens_seen", "val_mse", "val_var", "val_r2", "kept"]


@dataclass
class Plateau:
    """The stopping rule's state: a plateau is ``patience`` evaluations after the warm-up that have not
    lowered the val MSE by more than ``rel_tol`` of the last value that did (``reference_val_mse``). With the
    ``plateau`` schedule each plateau above the lowest learning rate lowers it (``decays``), training goes on
    from the weights of the lowest val MSE so far, and the count starts again; otherwise, or at the lowest
    rate, a plateau stops training. The weights of the lowest val MSE (``best_step``) are the result."""

    best_val_mse: float = math.inf
    best_step: int = 0
    reference_val_mse: float = math.inf
    evals_since_improvement: int = 0
    stopped: bool = False
    decays: int = 0

    def update(self, step: int, val_mse: float, cfg: TrainConfig) -> bool:
        """Record the evaluation at ``step``; True if its val MSE is the lowest so far."""
        lowest = val_mse < self.best_val_mse
        if lowest:
            self.best_val_mse, self.best_step = val_mse, step
        if val_mse < self.reference_val_mse * (1 - cfg.stop_rel_tol) or not math.isfinite(self.reference_val_mse):
            self.reference_val_mse, self.evals_since_improvement = val_mse, 0
        elif step > cfg.warmup_steps:  # evaluations in the warm-up never count toward the patience
            self.evals_since_improvement += 1
        if cfg.stop_patience is not None and self.evals_since_improvement >= cfg.stop_patience:
            if cfg.schedule == "plateau" and get_lr(step, cfg, self.decays) > cfg.lr * cfg.min_lr_ratio:
                self.decays, self.evals_since_improvement = self.decays + 1, 0
            else:
                self.stopped = True
        return lowest


def check_stream_pool(n_windows: int, cfg: TrainConfig) -> None:
    """Log ``stream pool: <W> windows, training needs <N>``; raise it when N > max_epochs · W."""
    needed = cfg.steps * cfg.batch_size
    passes = needed / n_windows if n_windows else math.inf
    line = (f"stream pool: {n_windows} windows, training needs {needed} (train.steps {cfg.steps} x train.batch_size "
            f"{cfg.batch_size}: {passes:.3g} passes over the pool)")
    log.info(line)
    if needed > cfg.max_epochs * n_windows:
        raise StreamPoolTooSmall(
            f"{line}, more than train.max_epochs = {cfg.max_epochs}: lower train.steps or train.batch_size, give "
            "the predictor_train split more documents (corpus files, corpus.max_documents, "
            "windows.split_fractions.predictor_train), or raise train.max_epochs to repeat windows")


class PredictorTrainer:
    """One predictor's training state (weights, AdamW, learning curve, stopping rule, resume file) and its step.

    ``next_step`` is the first step still to run: 0, or where a compatible resume file (same configs and
    data) left off. With ``resume_path``, state is saved there every ``checkpoint_every`` steps and when the
    stopping rule stops it. With ``train.normalize``, the predictor is :class:`Normalized` by the statistics
    of the first training batch.
    """

    def __init__(self, predictor_cfg, cfg: TrainConfig, val_hidden: torch.Tensor, *,
                 device: str | torch.device = "cpu", resume_path: Path | None = None, data_id: str = "",
                 name: str = "predictor"):
        self.cfg, self.val_hidden, self.device, self.name = cfg, val_hidden, torch.device(device), name
        # train.compute_dtype: the training forward under bf16 autocast (auto: on CUDA)
        self.bf16 = cfg.compute_dtype == "bfloat16" or (cfg.compute_dtype == "auto" and self.device.type == "cuda")
        self.resume_path = None if resume_path is None else Path(resume_path)
        if kind_of(predictor_cfg).closed_form:
            raise ValueError(f"{name}: a {predictor_cfg.kind} predictor is fitted in closed form (fit_predictor), "
                             "not trained by SGD")
        torch.manual_seed(cfg.seed)  # the same initial weights whichever job (per layer or joint) trains it
        self.predictor = build_predictor(predictor_cfg)
        check_normalization(cfg.normalize)
        if cfg.normalize != "none":  # placeholder statistics, set from the first batch (or the resume file)
            self.predictor = Normalized(self.predictor, torch.zeros(predictor_cfg.d_model),
                                        torch.ones(predictor_cfg.d_model), cfg.normalize,
                                        0.0 if cfg.outlier_rows == "robust" else None)
        elif cfg.outlier_rows != "keep":
            raise ValueError(f"{name}: train.outlier_rows {cfg.outlier_rows!r} needs a train.normalize other than "
                             "'none': its limit is a norm in the normalised space")
        self.predictor = self.predictor.to(self.device)
        self.optimizer = torch.optim.AdamW(self.predictor.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.fingerprint = _run_fingerprint(predictor_cfg, cfg, data_id)
        self.next_step, self.curve, self.plateau, self.best_state = 0, [], Plateau(), None
        # Wall seconds of the optimizer steps alone (no evaluation, no batch loading): the predictor's cost.
        self.train_seconds = 0.0
        if self.resume_path is not None and self.resume_path.exists():
            # weights_only: a checkpoint can hold tensors and plain values, never code.
            state = torch.load(self.resume_path, map_location=self.device, weights_only=True)
            if state["fingerprint"] == self.fingerprint:
                self.predictor.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                self.next_step, self.curve = state["step"], state["curve"]
                self.plateau, self.best_state = Plateau(**state["plateau"]), state["best_model"]
                self.train_seconds = state.get("train_seconds", 0.0)
                log.info("%s: resumed from %s at step %d", name, self.resume_path, self.next_step)
            else:
                log.warning("%s: ignoring %s: it was written for another configuration", name, self.resume_path)
        self.predictor.train()

    @property
    def done(self) -> bool:
        return self.plateau.stopped or self.next_step >= self.cfg.steps

    def step(self, step: int, hidden: torch.Tensor, windows_seen: int) -> None:
        """One optimizer step on hidden [batch, T, d_model]; evaluates, applies the stopping rule and
        checkpoints when due."""
        cfg = self.cfg
        started = time.perf_counter()
        lr = get_lr(step, cfg, self.plateau.decays)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        hidden = hidden.to(self.device, non_blocking=True)
        if step == 0 and isinstance(self.predictor, Normalized):
            center, scale = normalization_stats(cfg.normalize, hidden.float().cpu(), cfg.outlier_norm_ratio)
            self.predictor.center.copy_(center)
            self.predictor.scale.copy_(scale)
            log.info("%s: %s normalisation from the first batch: mean scale %.4g, |center| %.4g", self.name,
                     cfg.normalize, scale.mean().item(), center.norm().item())
            if self.predictor.outlier_limit is not None:
                self.predictor.outlier_limit.fill_(outlier_limit(center, scale, hidden.float().cpu(),
                                                                 cfg.outlier_norm_ratio))
                log.info("%s: outlier rows beyond a normalised norm of %.4g (%d of the first batch's rows)", self.name,
                         self.predictor.outlier_limit.item(), int((~self.predictor.typical(hidden)).sum()))
        # Under bf16 autocast the predictor's matmuls run in bf16, the weights and AdamW state stay fp32; the
        # batch was computed before, outside it, so a frozen LM runs in its own dtype.
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = prediction_loss(self.predictor, hidden)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"{self.name}: the training loss is {loss.item()} at step {step + 1} (max |h| in the "
                                f"batch: {hidden.float().abs().max().item():.4g}); lower train.lr or check the "
                                "hidden states")
        self.optimizer.zero_grad(set_to_none=True)
        (loss / loss_unit(self.predictor)).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.predictor.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - started
        done = self.next_step = step + 1
        if done % cfg.eval_every == 0 or done == cfg.steps:
            scores = evaluate(self.predictor, self.val_hidden, cfg.eval_batch_size, self.device)
            decays_before = self.plateau.decays
            if self.plateau.update(done, scores["mse"], cfg) and cfg.stop_patience is not None:
                self.best_state = {key: value.detach().clone() for key, value in self.predictor.state_dict().items()}
            self.curve.append({"step": done, "lr": lr, "train_loss": loss.item(), "windows_seen": windows_seen,
                               "tokens_seen": windows_seen * hidden.shape[1],
                               **{f"val_{k}": v for k, v in scores.items()}})
            log.info("%s: step %d  train loss %.5g  val mse %.5g  r2 %.4f", self.name, done, loss.item(),
                     scores["mse"], scores["r2"])
            if self.plateau.decays > decays_before:
                # the lower rate starts from the best weights, not from wherever the plateau wandered
                self.predictor.load_state_dict(self.best_state)
                log.info("%s: val MSE plateau at step %d: learning rate %.3g from the next step, from step %d's "
                         "weights", self.name, done, get_lr(done, cfg, self.plateau.decays), self.plateau.best_step)
            if self.plateau.stopped:
                log.info("%s: stopped at step %d: %d evaluations without a val MSE %.3g%% below %.5g; keeping "
                         "step %d (val MSE %.5g)", self.name, done, cfg.stop_patience, 100 * cfg.stop_rel_tol,
                         self.plateau.reference_val_mse, self.plateau.best_step, self.plateau.best_val_mse)
        due = done % cfg.checkpoint_every == 0 or self.plateau.stopped  # a stop is saved for a joint run's resume
        if self.resume_path is not None and due and done < cfg.steps:
            with atomic_path(self.resume_path) as tmp:
                torch.save({"model": self.predictor.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "step": done, "curve": self.curve, "fingerprint": self.fingerprint,
                            "plateau": asdict(self.plateau), "best_model": self.best_state,
                            "train_seconds": self.train_seconds}, tmp)

    def result(self) -> tuple[torch.nn.Module, pd.DataFrame]:
        """The trained predictor (the best evaluation's weights with a stopping rule) and its learning curve."""
        if self.best_state is not None:
            self.predictor.load_state_dict(self.best_state)
        self.predictor.eval()
        curve = pd.DataFrame(self.curve, columns=CURVE_COLUMNS[:-1])
        kept = self.plateau.best_step if self.cfg.stop_patience is not None else curve["step"].max()
        return self.predictor, curve.assign(kept=curve["step"] == kept)

    def stop_summary(self) -> dict:
        """How training ended, for the weights' metadata: the last step, the kept step, the best val MSE and
        whether the run reached train.steps (the cap) rather than a plateau."""
        kept = self.plateau.best_step if self.cfg.stop_patience is not None else self.next_step
        return {"stopping_rule": self.cfg.stop_patience is not None, "last_step": self.next_step,
                "kept_step": kept, "best_val_mse": self.plateau.best_val_mse,
                "hit_cap": not self.plateau.stopped, "lr_decays": self.plateau.decays}


def train_predictors(trainers: Mapping[str, PredictorTrainer], cfg: TrainConfig,
                     next_batch: Callable[[int], Mapping[str, torch.Tensor]],
                     n_windows: int) -> dict[str, tuple[torch.nn.Module, pd.DataFrame]]:
    """Run every trainer to ``cfg.steps``; ``next_batch(step)`` gives each trainer's hidden [batch, T, d_model].

    ``n_windows``: the windows batches are drawn from (the stream pool, or the cached windows), for the
    curve's distinct windows seen (min(steps · batch, n_windows)) and the log line of every new pass.
    Returns {name: (trained predictor, learning curve, one row per evaluation)}.
    """
    first_step = min(trainer.next_step for trainer in trainers.values())
    for step in range(first_step, cfg.steps):
        if all(trainer.done for trainer in trainers.values()):
            break
        passes = -(-(step + 1) * cfg.batch_size // n_windows)  # passes over the windows begun by this step
        if step == first_step or passes > -(-step * cfg.batch_size // n_windows):
            log.info("step %d: pass %d over the %d windows", step + 1, passes, n_windows)
        batch = next_batch(step)
        windows_seen = min((step + 1) * cfg.batch_size, n_windows)
        for name, trainer in trainers.items():
            # a trainer resumed further along skips the steps it has done; a stopped one takes no more
            if trainer.next_step == step and not trainer.done:
                trainer.step(step, batch[name], windows_seen)
    return {name: trainer.result() for name, trainer in trainers.items()}


def train_predictor(predictor_cfg, cfg: TrainConfig, next_batch: Callable[[int], torch.Tensor],
                    val_hidden: torch.Tensor, *, n_windows: int, device: str | torch.device = "cpu",
                    resume_path: Path | None = None, data_id: str = "") -> tuple[torch.nn.Module, pd.DataFrame]:
    """Train one f_θ for ``cfg.steps`` steps; ``next_batch(step)`` returns hidden [batch, T, d_model] drawn
    from ``n_windows`` windows. Returns the trained predictor and its learning curve on ``val_hidden``."""
    trainer = PredictorTrainer(predictor_cfg, cfg, val_hidden, device=device, resume_path=resume_path,
                               data_id=data_id)
    return train_predictors({"predictor": trainer}, cfg, lambda step: {"predictor": next_batch(step)},
                            n_windows)["predictor"]


def fit_predictor(predictor_cfg, train_batches: Callable[[], Iterable[torch.Tensor]], val_hidden: torch.Tensor, *,
                  eval_batch_size: int = 32,
                  device: str | torch.device = "cpu") -> tuple[torch.nn.Module, pd.DataFrame]:
    """Fit a closed-form predictor (a kind with ``fit``) on one pass over ``train_batches()`` (hidden
    [batch, T, d_model] tensors: every predictor_train window once), then score it on a second pass (the
    train loss) and on ``val_hidden``. Returns the fitted predictor and a curve of one row: step 0, lr
    NaN, the train loss and the eval scores, with :data:`CURVE_COLUMNS`."""
    device = torch.device(device)
    predictor = kind_of(predictor_cfg).fit_function()(predictor_cfg, train_batches(), device=device)
    predictor = predictor.to(device).requires_grad_(False)
    sse, values, windows, length = 0.0, 0, 0, 0
    with torch.no_grad():
        for batch in train_batches():
            batch = batch.to(device)
            residual = batch[:, 1:].to(torch.float64) - predictor(batch[:, :-1].float()).to(torch.float64)
            sse += float((residual ** 2).sum())
            values, windows, length = values + residual.numel(), windows + batch.shape[0], batch.shape[1]
    scores = evaluate(predictor, val_hidden, eval_batch_size, device)
    predictor.eval()
    train_loss = sse / values if values else math.nan
    log.info("%s fitted on %d windows: train loss %.5g  val mse %.5g  r2 %.4f  (%s)", predictor_cfg.kind, windows,
             train_loss, scores["mse"], scores["r2"],
             {key: value for key, value in getattr(predictor, "fit_info", {}).items() if key != "grid_scores"})
    curve = pd.DataFrame([{"step": 0, "lr": math.nan, "train_loss": train_loss, "windows_seen": windows,
                           "tokens_seen": windows * length, **{f"val_{k}": v for k, v in scores.items()},
                           "kept": True}],
                         columns=CURVE_COLUMNS)
    return predictor, curve
