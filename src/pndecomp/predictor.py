"""The predictor f_θ (SPEC §3): one layer of causally masked multi-head self-attention.

The output at position t attends to h_1..h_t only and is the prediction ĥ_{t+1} of the hidden
state at position t+1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class PredictorConfig:
    d_model: int
    n_heads: int
    d_head: int
    rotary: bool = False      # rotary position embedding on queries and keys (off in the paper)
    input_norm: bool = False  # LayerNorm on the input hidden states (off in the paper)
    rotary_base: float = 10000.0

    def to_dict(self) -> dict:
        return asdict(self)


def _rotate(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotary embedding over the last axis of x [batch, heads, pos, d_head] (d_head even)."""
    d_head, n_pos = x.shape[-1], x.shape[-2]
    inv_freq = base ** (-torch.arange(0, d_head, 2, device=x.device, dtype=torch.float32) / d_head)
    angles = torch.arange(n_pos, device=x.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


class CausalPredictor(nn.Module):
    def __init__(self, config: PredictorConfig):
        super().__init__()
        if config.rotary and config.d_head % 2:
            raise ValueError(f"predictor.d_head must be even with rotary embeddings, got {config.d_head}")
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
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(attended.transpose(1, 2).reshape(batch, n_pos, -1))


def prediction_loss(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """L = mean over windows and positions 2..T of ||h_{t+1} - ĥ_{t+1}||² / d_model."""
    hidden = hidden.to(_param_dtype(predictor))
    predicted = predictor(hidden[:, :-1])
    return F.mse_loss(predicted.float(), hidden[:, 1:].float())


@torch.no_grad()
def residuals(predictor: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """r_{t+1} = h_{t+1} - ĥ_{t+1} for positions 2..T: [batch, T-1, d_model] float32."""
    hidden = hidden.to(_param_dtype(predictor))
    return hidden[:, 1:].float() - predictor(hidden[:, :-1]).float()


def _param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def save_predictor(predictor: CausalPredictor, path, metadata: dict | None = None) -> None:
    """Weights as safetensors; the architecture travels in the file's metadata."""
    from .storage import save_tensors

    save_tensors(predictor.state_dict(), path, {"predictor_config": predictor.config.to_dict(), **(metadata or {})})


def load_predictor(path, device: str | torch.device = "cpu") -> CausalPredictor:
    from safetensors.torch import load_file

    from .storage import load_metadata

    predictor = CausalPredictor(PredictorConfig(**load_metadata(path)["predictor_config"]))
    predictor.load_state_dict(load_file(str(path)))
    return predictor.to(device).eval().requires_grad_(False)
