"""The predictor f_θ (docs/method.md §3) and the other architectures of the architecture study.

Every predictor maps hidden states [batch, pos, d_model] to predictions [batch, pos, d_model]: the
output at position t sees h_1..h_t only and is the prediction ĥ_{t+1} of the hidden state at t+1.
The architectures, by name (``predictor.kind`` in the config; <w>, <k> positive integers):

- ``attn1``: one layer of causally masked multi-head self-attention, the paper's f_θ;
- ``attn1_rope``: attn1 with rotary position embeddings on queries and keys;
- ``attn1_local<w>``: attn1 whose position t attends to the last w positions t−w+1..t only;
- ``attn2``: a small pre-LN transformer: two blocks of causal self-attention + MLP (``predictor.mlp_hidden``
  wide, 4 × d_model by default, GELU),
  a final LayerNorm and a linear output (nanoGPT's layout, without embeddings);
- ``mlp_k<k>``: an MLP on the last k states (h_t, h_{t−1}, …, h_{t−k+1}; zeros before position 1);
- ``ridge_ar<k>``: ĥ_{t+1} = Σ_{j<k} A_j h_{t−j} + b, one linear map of the same lag features, fitted in
  closed form by :class:`pndecomp.baselines.RidgeARBaseline` instead of trained by SGD.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn

from .baselines import RidgeARBaseline
from .predictor_kinds import (
    AttentionConfig,
    MLPConfig,
    RidgeARConfig,
    TransformerConfig,
    kind_of,
    predictor_kind,
)

# ---------------------------------------------------------------- attention: attn1, attn1_rope, attn1_local<w>

def _rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding over the last axis of x [batch, heads, pos, d_head] (d_head even)."""
    d_head, n_pos = x.shape[-1], x.shape[-2]
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=x.device, dtype=torch.float32) / d_head)
    angles = torch.arange(n_pos, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


@functools.lru_cache(maxsize=16)
def banded_causal_mask(n_pos: int, window: int, device: torch.device) -> torch.Tensor:
    """[n_pos, n_pos] bool, True where query t may attend to key s: t − window < s ≤ t."""
    offset = torch.arange(n_pos, device=device)[:, None] - torch.arange(n_pos, device=device)[None, :]
    return (offset >= 0) & (offset < window)


class CausalPredictor(nn.Module):
    def __init__(self, config: AttentionConfig):
        super().__init__()
        if config.rotary and config.d_head % 2:
            raise ValueError(f"predictor.d_head must be even with rotary embeddings, got {config.d_head}")
        if config.window is not None and config.window < 1:
            raise ValueError(f"attn1_local: the window must be a positive integer, got {config.window}")
        self.config = config
        width = config.n_heads * config.d_head
        self.norm = nn.LayerNorm(config.d_model) if config.input_norm else nn.Identity()
        self.qkv = nn.Linear(config.d_model, 3 * width)
        self.out = nn.Linear(width, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, pos, d_model] -> predictions [batch, pos, d_model]; row t predicts h_{t+1}."""
        batch, n_pos, _ = hidden.shape
        q, k, v = self.qkv(self.norm(hidden)).split(self.config.n_heads * self.config.d_head, dim=-1)
        q, k, v = (t.view(batch, n_pos, self.config.n_heads, self.config.d_head).transpose(1, 2) for t in (q, k, v))
        if self.config.rotary:
            q, k = _rotate(q, self.config.rotary_base), _rotate(k, self.config.rotary_base)
        if self.config.window is not None and self.config.window < n_pos:
            mask = banded_causal_mask(n_pos, self.config.window, hidden.device)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, n_pos, -1))


# ---------------------------------------------------------------- attn2: a two-block pre-LN transformer

class _Block(nn.Module):
    """x + attn(LN(x)), then x + MLP(LN(x)); the attention is one :class:`CausalPredictor`."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalPredictor(AttentionConfig(config.d_model, config.n_heads, config.d_head,
                                                    rotary=config.rotary, rotary_base=config.rotary_base))
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, config.mlp_width), nn.GELU(),
                                 nn.Linear(config.mlp_width, config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class TransformerPredictor(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [batch, pos, d_model] -> predictions [batch, pos, d_model]; row t predicts h_{t+1}."""
        x = hidden
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_final(x))


# ---------------------------------------------------------------- lag-feature models: mlp_k<k>, ridge_ar<k>

def lag_stack(hidden: torch.Tensor, k: int) -> torch.Tensor:
    """[batch, pos, d] -> [batch, pos, k·d]: row t is (h_t, h_{t−1}, …, h_{t−k+1}), zeros before position 1
    (the layout of :func:`pndecomp.baselines.lag_features`)."""
    n_pos = hidden.shape[1]
    return torch.cat([F.pad(hidden, (0, 0, lag, 0))[:, :n_pos] for lag in range(k)], dim=-1)


class LagMLPPredictor(nn.Module):
    """Linear(k·d -> hidden), GELU, Linear(hidden -> d) on the last k states."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        if config.k < 1:
            raise ValueError(f"mlp_k: k must be a positive integer, got {config.k}")
        self.config = config
        self.mlp = nn.Sequential(nn.Linear(config.k * config.d_model, config.hidden), nn.GELU(),
                                 nn.Linear(config.hidden, config.d_model))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(lag_stack(hidden, self.config.k))


class RidgeARPredictor(nn.Module):
    """ĥ_{t+1} = Σ_{j<k} A_j h_{t−j} + b: one Linear(k·d, d) on the lag features, set by :func:`fit_ridge_ar`.

    ``fit_info`` (after fitting): the chosen α, λ, the rows fitted on and the held-out grid scores."""

    def __init__(self, config: RidgeARConfig):
        super().__init__()
        if config.k < 1:
            raise ValueError(f"ridge_ar: k must be a positive integer, got {config.k}")
        self.config = config
        self.linear = nn.Linear(config.k * config.d_model, config.d_model)
        self.fit_info: dict = {}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(lag_stack(hidden, self.config.k))


def fit_ridge_ar(settings: RidgeARConfig, batches: Iterable, device: str | torch.device = "cpu") -> RidgeARPredictor:
    """The closed-form ridge fit on train hidden states (``batches``: [n, T, d] tensors, read once), its
    statistics on ``device`` (:mod:`pndecomp.baselines`)."""
    baseline = RidgeARBaseline(settings.k, settings.alphas, settings.holdout_every, device=device).fit(batches)
    predictor = RidgeARPredictor(settings)
    with torch.no_grad():
        predictor.linear.weight.copy_(torch.from_numpy(baseline.coef_.T))
        predictor.linear.bias.copy_(torch.from_numpy(baseline.intercept_))
    predictor.fit_info = {"alpha": baseline.alpha_, "lambda": baseline.lambda_,
                          "n_train_rows": baseline.n_train_rows_, "n_holdout_rows": baseline.n_holdout_rows_,
                          "grid_scores": baseline.grid_scores_}
    return predictor


# ---------------------------------------------------------------- training in a normalised space

def _rms(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.pow(2).mean().sqrt()


def _typical_rows(hidden: torch.Tensor, outlier_norm_ratio: float) -> torch.Tensor:
    """The rows [n, d] whose ‖h‖ is at most outlier_norm_ratio × the median ‖h‖ (the metrics' outlier rule)."""
    norms = hidden.norm(dim=-1)
    return hidden[norms <= outlier_norm_ratio * norms.median()]


def _scalar(value: torch.Tensor, d_model: int) -> torch.Tensor:
    return value.expand(d_model).clone()


def _rms_stats(rows: torch.Tensor, _ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(rows.shape[-1], dtype=rows.dtype), _scalar(_rms(rows), rows.shape[-1])


def _robust_rms_stats(rows: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _rms_stats(_typical_rows(rows, ratio), ratio)


def _standardize_stats(rows: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    typical = _typical_rows(rows, ratio)
    return typical.mean(0), typical.std(0)


# train.normalize: (train rows [n, d] float64, outlier_norm_ratio) -> (center [d], scale [d]). The predictor
# sees (h − center) / scale and its output is mapped back, so the optimiser's steps are of the order of the
# states whatever their scale. The single place to add a candidate.
NORMALIZATIONS: dict[str, Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]] = {
    "rms": _rms_stats,  # one scalar: the RMS of every train state (TemporalFeatureAnalysis's input scaling)
    # one scalar: the RMS of the rows that are not outliers (attention-sink and massive-activation rows)
    "robust_rms": _robust_rms_stats,
    # per dimension: mean and standard deviation of the rows that are not outliers
    "standardize": _standardize_stats,
}


def check_normalization(kind: str) -> None:
    if kind != "none" and kind not in NORMALIZATIONS:
        raise ValueError(f"train.normalize: unknown normalisation {kind!r}; known are "
                         f"{', '.join(map(repr, ['none', *NORMALIZATIONS]))}")


def normalization_stats(kind: str, hidden: torch.Tensor,
                        outlier_norm_ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(center, scale) [d_model] float32 of ``train.normalize`` = kind, from train states [..., d_model]."""
    check_normalization(kind)
    center, scale = NORMALIZATIONS[kind](hidden.reshape(-1, hidden.shape[-1]).double(), outlier_norm_ratio)
    tiny = torch.finfo(torch.float32).tiny ** 0.5
    return center.float(), scale.clamp_min(tiny).float()  # a constant dimension keeps scale > 0


class Normalized(nn.Module):
    """f(h) = center + scale · g((h − center) / scale): the predictor g in a normalised space, in and out.

    Predictions, residuals and saved weights are in the LM's units; ``center`` and ``scale`` are buffers,
    saved with the weights. ``loss_unit`` (mean scale²) divides the paper's loss while training: the same
    minimiser, gradients of order 1, so gradient clipping and AdamW act alike at every scale.

    With ``outlier_limit`` (``train.outlier_rows: robust``) a normalised input row longer than the limit is
    scaled down to it before g sees it (a massive first-position or attention-sink state cannot swamp the
    prediction; every other row passes unchanged, bit for bit), and :func:`prediction_loss` leaves target
    rows beyond it out of the loss (the metrics report them apart)."""

    def __init__(self, inner: nn.Module, center: torch.Tensor, scale: torch.Tensor, kind: str,
                 outlier_limit: float | None = None):
        super().__init__()
        self.inner, self.config, self.normalization = inner, inner.config, kind
        self.register_buffer("center", center.clone())
        self.register_buffer("scale", scale.clone())
        if outlier_limit is None:
            self.outlier_limit = None
        else:
            self.register_buffer("outlier_limit", torch.tensor(float(outlier_limit)))

    @property
    def loss_unit(self) -> torch.Tensor:
        return self.scale.pow(2).mean()

    def normalized(self, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden - self.center.to(hidden.dtype)) / self.scale.to(hidden.dtype)

    def typical(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d_model] -> [...] bool: rows whose normalised norm is within the outlier limit (one is set)."""
        return self.normalized(hidden).norm(dim=-1) <= self.outlier_limit

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.normalized(hidden)
        if self.outlier_limit is not None:
            # factor 1 exactly for every row within the limit, so those rows are left as they were
            x = x * (self.outlier_limit.to(x.dtype) / x.norm(dim=-1, keepdim=True)).clamp(max=1.0)
        return self.center.to(hidden.dtype) + self.scale.to(hidden.dtype) * self.inner(x)


def outlier_limit(center: torch.Tensor, scale: torch.Tensor, hidden: torch.Tensor, outlier_norm_ratio: float) -> float:
    """``outlier_norm_ratio`` × the median norm of the rows of ``hidden`` [..., d_model] in the normalised space
    (the metrics' outlier rule, applied where the predictor works)."""
    rows = ((hidden.reshape(-1, hidden.shape[-1]).double() - center.double()) / scale.double()).norm(dim=-1)
    return float(outlier_norm_ratio * rows.median())


def loss_unit(predictor: nn.Module) -> torch.Tensor | float:
    """What the training loss is divided by: mean scale² for a :class:`Normalized` predictor, else 1."""
    return predictor.loss_unit if isinstance(predictor, Normalized) else 1.0


# ---------------------------------------------------------------- loss and residuals

def prediction_loss(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """L = mean over windows and positions 2..T of ||h_{t+1} - ĥ_{t+1}||² / d_model; for a :class:`Normalized`
    predictor with an outlier limit, over the target rows within it."""
    hidden = hidden.to(_param_dtype(predictor))
    predicted = predictor(hidden[:, :-1])
    if isinstance(predictor, Normalized) and predictor.outlier_limit is not None:
        keep = predictor.typical(hidden[:, 1:])
        return F.mse_loss(predicted.float()[keep], hidden[:, 1:].float()[keep])
    return F.mse_loss(predicted.float(), hidden[:, 1:].float())


@torch.no_grad()
def residuals(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """r_{t+1} = h_{t+1} - ĥ_{t+1} for positions 2..T: [batch, T-1, d_model] float32."""
    hidden = hidden.to(_param_dtype(predictor))
    return hidden[:, 1:].float() - predictor(hidden[:, :-1]).float()


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def parameter_count(predictor: nn.Module) -> int:
    return sum(parameter.numel() for parameter in predictor.parameters())


def kind_name(predictor: nn.Module) -> str:
    return predictor.config.kind


def build_predictor(settings) -> nn.Module:
    """The untrained (unfitted) predictor of the kind ``settings`` describe."""
    return kind_of(settings).module_class()(settings)


def save_predictor(predictor: nn.Module, path, metadata: dict | None = None) -> None:
    """Weights as safetensors; the architecture (kind name and settings) travels in the file's metadata, and
    so does a :class:`Normalized` predictor's normalisation (its center and scale are tensors of the file)."""
    from .storage import save_tensors

    normalization = {}
    if isinstance(predictor, Normalized):
        normalization = {"normalization": predictor.normalization,
                         **({"outlier_rows": "robust"} if predictor.outlier_limit is not None else {})}
    save_tensors(predictor.state_dict(), path, {"predictor_kind": kind_name(predictor),
                                                "predictor_config": asdict(predictor.config), **normalization,
                                                **(metadata or {})})


def load_predictor(path, device: str | torch.device = "cpu") -> nn.Module:
    from safetensors.torch import load_file

    from .storage import load_metadata

    metadata = load_metadata(path)
    kind = predictor_kind(metadata.get("predictor_kind", "attn1"))
    predictor = kind.module_class()(kind.settings(**metadata["predictor_config"]))
    normalization = metadata.get("normalization", "none")
    if normalization != "none":
        d_model = predictor.config.d_model
        limit = 0.0 if metadata.get("outlier_rows") == "robust" else None  # the file holds its value
        predictor = Normalized(predictor, torch.zeros(d_model), torch.ones(d_model), normalization, limit)
    predictor.load_state_dict(load_file(str(path)))
    return predictor.to(device).eval().requires_grad_(False)
