"""The predictor kinds (``predictor.kind``), torch-free: each kind's settings dataclass, how the config makes
them, their parameter count, and the registry :data:`PREDICTORS` that names each kind's module.

Snakemake reads this when it builds the DAG (config checks, resource requests), so it imports no torch: a
kind names its ``nn.Module`` (and a closed-form kind its fitting function) as ``"module:attribute"``, imported
only when a predictor is built (:mod:`pndecomp.predictor`, where the modules live).
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

RIDGE_ALPHAS = tuple(10.0**e for e in range(-6, 3))  # 1e-6 … 1e2, relative to mean diag of centred XᵀX
DEFAULT_HOLDOUT_EVERY = 10  # every n-th train window chooses the ridge α

# train.normalize values that leave out the outlier rows (metrics.outlier_norm_ratio): only their training
# depends on it (the normalisations themselves: pndecomp.predictor.NORMALIZATIONS).
OUTLIER_RULE_NORMALIZATIONS = frozenset({"robust_rms", "standardize"})


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out  # weight and bias


@dataclass(frozen=True)
class AttentionConfig:
    """Settings of one causal attention layer (attn1, attn1_rope, attn1_local<w>)."""

    d_model: int
    n_heads: int
    d_head: int
    rotary: bool = False      # rotary position embedding on queries and keys (off in the paper)
    input_norm: bool = False  # LayerNorm on the input hidden states (off in the paper)
    rotary_base: float = 10000.0
    window: int | None = None  # attend to the last ``window`` positions only (None: all of h_1..h_t)

    @property
    def kind(self) -> str:
        if self.window is not None:
            return f"attn1_local{self.window}"
        return "attn1_rope" if self.rotary else "attn1"

    @property
    def parameter_count(self) -> int:
        width = self.n_heads * self.d_head
        norm = 2 * self.d_model if self.input_norm else 0
        return norm + _linear(self.d_model, 3 * width) + _linear(width, self.d_model)


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int
    n_heads: int
    d_head: int
    n_layers: int = 2
    mlp_hidden: int | None = None  # the MLP's hidden width; None: 4 × d_model (nanoGPT's)
    rotary: bool = False
    rotary_base: float = 10000.0

    @property
    def kind(self) -> str:
        return "attn2"

    @property
    def mlp_width(self) -> int:
        return self.mlp_hidden or 4 * self.d_model

    @property
    def parameter_count(self) -> int:
        d = self.d_model
        attention = AttentionConfig(d, self.n_heads, self.d_head).parameter_count
        block = 2 * d + attention + 2 * d + _linear(d, self.mlp_width) + _linear(self.mlp_width, d)
        return self.n_layers * block + 2 * d + _linear(d, d)  # final LayerNorm and output


@dataclass(frozen=True)
class MLPConfig:
    d_model: int
    k: int        # the last k states are the input
    hidden: int   # width of the hidden layer

    @property
    def kind(self) -> str:
        return f"mlp_k{self.k}"

    @property
    def parameter_count(self) -> int:
        return _linear(self.k * self.d_model, self.hidden) + _linear(self.hidden, self.d_model)


@dataclass(frozen=True)
class RidgeARConfig:
    d_model: int
    k: int  # the last k states are the input
    alphas: tuple[float, ...] = RIDGE_ALPHAS  # ridge penalties tried (see pndecomp.baselines)
    holdout_every: int = DEFAULT_HOLDOUT_EVERY

    def __post_init__(self):
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))  # a JSON list becomes a tuple

    @property
    def kind(self) -> str:
        return f"ridge_ar{self.k}"

    @property
    def parameter_count(self) -> int:
        return _linear(self.k * self.d_model, self.d_model)


# ---------------------------------------------------------------- from the config's predictor section

def _heads(section: Mapping, attention_width: int) -> tuple[int, int]:
    """(n_heads, d_head); paper rule: n_heads × d_head = width_multiplier (4) × the LM's own attention width."""
    d_head, n_heads = section["d_head"], section["n_heads"]
    if n_heads is None:
        n_heads = max(1, round(section["width_multiplier"] * attention_width / d_head))
    return int(n_heads), int(d_head)


def _attention_config(section: Mapping, d_model: int, attention_width: int, _parameter: None = None) -> AttentionConfig:
    n_heads, d_head = _heads(section, attention_width)
    return AttentionConfig(d_model=d_model, n_heads=n_heads, d_head=d_head, rotary=section["rotary"],
                           input_norm=section["input_norm"])


def _rope_config(section: Mapping, d_model: int, attention_width: int, _parameter: None = None) -> AttentionConfig:
    return replace(_attention_config(section, d_model, attention_width), rotary=True)


def _local_config(section: Mapping, d_model: int, attention_width: int, window: int) -> AttentionConfig:
    return replace(_attention_config(section, d_model, attention_width), window=window)


def _transformer_config(section: Mapping, d_model: int, attention_width: int,
                        _parameter: None = None) -> TransformerConfig:
    n_heads, d_head = _heads(section, attention_width)
    return TransformerConfig(d_model=d_model, n_heads=n_heads, d_head=d_head, rotary=section["rotary"],
                             mlp_hidden=section.get("mlp_hidden"))


def _mlp_config(section: Mapping, d_model: int, attention_width: int, k: int) -> MLPConfig:
    return MLPConfig(d_model=d_model, k=k, hidden=section.get("mlp_hidden") or d_model)


def _ridge_config(section: Mapping, d_model: int, attention_width: int, k: int) -> RidgeARConfig:
    return RidgeARConfig(d_model=d_model, k=k)


def _resolve(reference: str):
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class PredictorKind:
    """A predictor architecture: its module, its settings dataclass (with its parameter count), how the
    config section (``predictor``), the LM's widths and the name's integer suffix make those settings, and, for
    a closed-form kind, how it is fitted instead of trained by SGD."""

    module: str  # "module:class" of its nn.Module, imported when one is built
    settings: type
    # (predictor section, d_model, LM attention width, the name's suffix or None) -> settings
    from_config: Callable[[Mapping, int, int, int | None], object]
    parameter: str | None = None  # the name ends in this positive integer (family + <parameter>)
    fit: str | None = None  # "module:function" (settings, train batches, device=) -> fitted predictor; None: SGD

    @property
    def closed_form(self) -> bool:
        return self.fit is not None

    def module_class(self) -> type:
        return _resolve(self.module)

    def fit_function(self) -> Callable:
        return _resolve(self.fit)


_MODULES = "pndecomp.predictor"

# The single place to add a predictor architecture (``predictor.kind`` in the config). A kind with a
# ``parameter`` is a family: its names are the key followed by a positive integer (attn1_local16).
PREDICTORS: dict[str, PredictorKind] = {
    "attn1": PredictorKind(f"{_MODULES}:CausalPredictor", AttentionConfig, _attention_config),
    "attn1_rope": PredictorKind(f"{_MODULES}:CausalPredictor", AttentionConfig, _rope_config),
    "attn1_local": PredictorKind(f"{_MODULES}:CausalPredictor", AttentionConfig, _local_config, parameter="w"),
    "attn2": PredictorKind(f"{_MODULES}:TransformerPredictor", TransformerConfig, _transformer_config),
    "mlp_k": PredictorKind(f"{_MODULES}:LagMLPPredictor", MLPConfig, _mlp_config, parameter="k"),
    "ridge_ar": PredictorKind(f"{_MODULES}:RidgeARPredictor", RidgeARConfig, _ridge_config, parameter="k",
                              fit=f"{_MODULES}:fit_ridge_ar"),
}

_SUFFIXED = re.compile(r"(.*\D)([1-9][0-9]*)")


def known_forms() -> str:
    """'attn1', 'attn1_rope', 'attn1_local<w>', …: every valid form of a predictor name."""
    return ", ".join(repr(name if kind.parameter is None else f"{name}<{kind.parameter}>")
                     for name, kind in PREDICTORS.items())


def parse_kind(name: str) -> tuple[PredictorKind, int | None]:
    """(the kind, its integer suffix or None) of a predictor name such as 'attn1' or 'mlp_k4'."""
    if isinstance(name, str):
        kind = PREDICTORS.get(name)
        if kind is not None and kind.parameter is None:
            return kind, None
        match = _SUFFIXED.fullmatch(name)
        if match and match[1] in PREDICTORS and PREDICTORS[match[1]].parameter is not None:
            return PREDICTORS[match[1]], int(match[2])
    raise ValueError(f"predictor.kind: unknown predictor {name!r}; known are {known_forms()} (<w>, <k>: positive "
                     "integers; add one in src/pndecomp/predictor_kinds.py)")


def predictor_kind(name: str) -> PredictorKind:
    return parse_kind(name)[0]


def predictor_settings(name: str, section: Mapping, d_model: int, attention_width: int):
    """The settings dataclass of the predictor called ``name`` for the ``predictor`` config section and the
    LM's widths."""
    kind, parameter = parse_kind(name)
    return kind.from_config(section, d_model, attention_width, parameter)


def kind_of(settings) -> PredictorKind:
    """The kind whose name the settings carry (``settings.kind``)."""
    return predictor_kind(settings.kind)
