"""The predictor f_θ (SPEC §3): one layer of causally masked multi-head self-attention.

The output at position t attends to h_1..h_t only and is the prediction ĥ_{t+1} of the hidden
state at position t+1.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
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


def _attention_config(section: Mapping, d_model: int, attention_width: int) -> PredictorConfig:
    """Paper rule: n_heads × d_head = width_multiplier (4) × the LM's own attention width."""
    d_head, n_heads = section["d_head"], section["n_heads"]
    if n_heads is None:
        n_heads = max(1, round(section["width_multiplier"] * attention_width / d_head))
    return PredictorConfig(d_model=d_model, n_heads=int(n_heads), d_head=int(d_head), rotary=section["rotary"],
                           input_norm=section["input_norm"])


@dataclass(frozen=True)
class PredictorKind:
    """A predictor architecture: its module, its settings dataclass, and how the config section
    (``predictor``) and the LM's widths make those settings."""

    module: type[nn.Module]
    settings: type
    from_config: Callable[[Mapping, int, int], object]  # (predictor section, d_model, LM attention width)


# The single place to add a predictor architecture (``predictor.kind`` in the config).
PREDICTORS: dict[str, PredictorKind] = {
    "attn1": PredictorKind(CausalPredictor, PredictorConfig, _attention_config),
}


def predictor_kind(name: str) -> PredictorKind:
    if name not in PREDICTORS:
        raise ValueError(f"predictor.kind: unknown predictor {name!r}; known are {sorted(PREDICTORS)} "
                         "(add one in src/pndecomp/predictor.py)")
    return PREDICTORS[name]


def kind_name(predictor: nn.Module) -> str:
    return next(name for name, kind in PREDICTORS.items() if isinstance(predictor, kind.module))


def build_predictor(settings) -> nn.Module:
    """The untrained predictor of the kind whose settings dataclass ``settings`` is."""
    return next(kind.module(settings) for kind in PREDICTORS.values() if type(settings) is kind.settings)


def save_predictor(predictor: nn.Module, path, metadata: dict | None = None) -> None:
    """Weights as safetensors; the architecture (kind and settings) travels in the file's metadata."""
    from .storage import save_tensors

    save_tensors(predictor.state_dict(), path, {"predictor_kind": kind_name(predictor),
                                                "predictor_config": asdict(predictor.config), **(metadata or {})})


def load_predictor(path, device: str | torch.device = "cpu") -> nn.Module:
    from safetensors.torch import load_file

    from .storage import load_metadata

    metadata = load_metadata(path)
    kind = predictor_kind(metadata.get("predictor_kind", "attn1"))
    predictor = kind.module(kind.settings(**metadata["predictor_config"]))
    predictor.load_state_dict(load_file(str(path)))
    return predictor.to(device).eval().requires_grad_(False)
