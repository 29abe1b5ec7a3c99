"""The data of an estimate: :class:`Sizes` (what the config and the model say), :class:`Estimate` (a
rule's peak memory and work, as named terms) and :class:`Request` (what SLURM gets)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .constants import (
    ASSUMED_CLASSES,
    ASSUMED_LM_HEAD_SIZE,
    GENEROSITY,
    MARGIN,
    MB,
    MIN_MEM_MB,
    MIN_RUNTIME,
    SNAKEMAKE_MB,
    STARTUP_MINUTES,
)


@dataclass(frozen=True)
class Request:
    mem_mb: int
    runtime: int  # minutes


@dataclass(frozen=True)
class Sizes:
    """What the estimates read: the config's sizes and the model's."""

    windows: Mapping[str, int]  # predictor_train/_val/_eval, probe (an upper bound), probe_task (largest)
    length: int  # T
    extraction_batch: int
    train_batch: int
    eval_windows: int  # train.eval_windows
    steps: int
    eval_every: int
    stream: bool  # train.data == stream
    n_layers: int
    storage_bytes: int  # 2 for float16/bfloat16/auto, 4 for float32
    model_bytes: int  # the LM's dtype; auto counts 4 (float32 on the CPU)
    device_is_cpu: bool
    d_model: int
    n_blocks: int
    attention_width: int
    vocab: int
    ffn_width: int
    predictor_params: int
    predictor_width: int  # what a predictor's forward holds per token: n_heads × d_head per layer, an MLP's width
    predictor_heads: int  # attention heads over all its layers (0: no attention)
    predictor_fit_lags: int  # k of a predictor fitted in closed form (ridge_ar<k>), else 0
    ridge_lags: int  # the largest k of the ridge_ar<k> baselines (0: none)
    n_baselines: int
    baseline_train_windows: int
    bootstrap: int
    documents: int  # what make_windows reads (bound)
    corpus_bytes: int | None  # the text of local corpus files, when known
    windows_per_document: int
    dedup_near: bool
    embedded_files: int  # files the embedded corpus reads (0 for other sources)
    c_grid: int
    max_iter: int
    probe_classes: int = ASSUMED_CLASSES
    shared_probe_states: bool = False  # probes.shared_states: probe_features reads stored states, runs no LM
    intervention_batch: int = 8
    scored_positions: int = 96  # positions ≥ interventions.from_position that are scored (T − from_position)
    patching_windows: int = 16
    steering_windows_per_domain: int = 2
    steering_alphas: int = 2  # nonzero α: α = 0 is the clean run
    inspect_tokens: int = 0  # the longest text of inspect.texts, in tokens (an upper bound: its UTF-8 bytes)
    main_predictor_params: int = 0  # the first predictor entry's parameters (inspect_text runs it)

    @property
    def lm_params(self) -> int:
        """An upper estimate: n_blocks × (4·d·attention width + 3·d·FFN width) + 2·vocab·d. Counts the
        attention's four projections at full width (grouped-query attention has smaller k, v), a gated
        MLP's three matrices (GPT-NeoX has two) and an untied LM head (Pythia's; SmolLM2 ties it):
        Pythia-410m 505 M against its 405 M, SmolLM2-135M 176 M against 135 M."""
        d = self.d_model
        return self.n_blocks * (4 * d * self.attention_width + 3 * d * self.ffn_width) + 2 * self.vocab * d

    @property
    def lm_block_params(self) -> int:
        return self.lm_params - 2 * self.vocab * self.d_model

    @property
    def lm_heads(self) -> int:
        return max(1, self.attention_width // ASSUMED_LM_HEAD_SIZE)


@dataclass
class Estimate:
    """A rule's script: its peak resident memory as named terms in bytes, its work as named terms in seconds."""

    memory: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def script_mb(self) -> float:
        return sum(self.memory.values()) / MB

    def request(self) -> Request:
        mem_mb = max(MIN_MEM_MB, 100 * math.ceil(MARGIN * (SNAKEMAKE_MB + self.script_mb) / 100))
        minutes = STARTUP_MINUTES + GENEROSITY * sum(self.seconds.values()) / 60
        return Request(mem_mb, max(MIN_RUNTIME, math.ceil(minutes)))
