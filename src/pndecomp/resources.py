"""What each rule asks SLURM for, ``mem_mb`` and ``runtime`` (minutes), computed from the config's sizes.

The rules in ``workflow/rules`` read these once, when Snakemake builds the DAG (``stage_mem_mb`` and
``stage_runtime`` in ``common.smk``), so a config at the paper's scale asks for what its jobs need and
the tiny test config for little. One function per rule in :data:`STAGES` turns :class:`Sizes` into an
:class:`Estimate`: the peak resident memory of the rule's script, as named terms in bytes, and its
work, as named terms in seconds. Then

    mem_mb  = MARGIN × (SNAKEMAKE_MB + the script's peak)          (MiB, rounded up to 100)
    runtime = STARTUP_MINUTES + GENEROSITY × the work in minutes  (at least MIN_RUNTIME)

The memory terms follow the code, one batch at a time where the code streams (extraction, probe
features, decomposition, per-position metrics, the scores) and whole where it keeps O(windows)
arrays. Working sets are sized for the CPU, in float32 or float64 as the code computes, whatever
``device`` says: on a GPU the host holds less, so the request is an upper bound there. The LM's
weights, which transformers memory-maps, are counted; the hidden states are read through a fresh
mapping per batch (``stages.hidden_batches``), and the stream-mode token store's pages are clean page
cache, which the kernel reclaims under a cgroup limit: neither is counted.

Runtimes are deliberately generous (assumed throughputs well below a current CPU core or GPU, then
doubled): a job killed for time is worse than one that waits a little longer in the queue.

The model's shape is always known at DAG time: a hub model must be in the local hub cache by then
(:func:`pndecomp.config.model_shape`).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import config as pnconfig
from . import lm, tasks

MB = 2**20

# ---- measured bases (2-core EPYC, torch 2.13 CPU, transformers 5.24, Snakemake 9.27) -------------------
#: The job's own Snakemake process, which runs the rule's script as a child: `snakemake -n` of the default
#: config peaked at 432 MB (it parses the workflow, whose common.smk imports torch through pndecomp.config).
SNAKEMAKE_MB = 450
#: A script that imports pndecomp.stages and transformers (every torch rule): RSS 371 MB after the
#: imports (torch alone 220 MB, torch + transformers 240 MB).
TORCH_PROCESS_MB = 400
#: A script that also loads an LM: transformers' model classes add 111 MB (462 MB measured).
LM_PROCESS_MB = 500
#: A torch-free script (fit_probe: numpy, pandas, pyarrow, scikit-learn): RSS 188 MB after the imports.
NUMPY_PROCESS_MB = 200
#: A tokenizer in memory (layer_scores, make_windows: a ~50k-entry BPE vocabulary with its merges).
TOKENIZER_MB = 150

#: Over the estimated peak: the estimates' own error and what allocators keep between frees (glibc's heap,
#: pyarrow's pool). tests/test_resources.py measures peaks of 0.4-0.67 × MARGIN × the estimate; the
#: tightest, probe_features on the tiny model, peaked at the estimate itself (503 vs 502 MB).
MARGIN = 1.5
MIN_MEM_MB = 1000

# ---- assumed throughputs for the runtimes (deliberately low) -------------------------------------------------
#: float32 matmul throughput of one job on its CPU cores: 20 GFLOP/s. One core of a 2-core AVX2 EPYC ran
#: SmolLM2's float32 forward at ~330 tokens/s (6.2 s per 16 × 128 batch, ~70 GFLOP/s); an AVX512-BF16 core
#: ~1,450 tokens/s in bfloat16.
CPU_FLOPS = 2e10
#: Effective GPU throughput: 30 TFLOP/s, a tenth of the 300 TFLOP/s sustained bf16 the README's paper-scale
#: estimate assumes for an H100/H200, and below an A100's tf32 peak (156).
GPU_FLOPS = 3e13
#: float64 numpy values processed per second, temporaries included (elementwise passes, sorts per value).
NUMPY_VALUES_PER_S = 5e7
#: Tokenizer throughput (fast BPE tokenizers do ~0.5-1 M tokens/s on one core), and per candidate window
#: the labels, the decode and the hash of make_windows.
TOKENS_PER_S = 3e5
SECONDS_PER_CANDIDATE_WINDOW = 2e-3
#: Two Snakemake start-ups (the submitting one and the one inside the job), imports, model load.
STARTUP_MINUTES = 3
GENEROSITY = 2.0
MIN_RUNTIME = 10

# ---- assumptions where the config says nothing -----------------------------------------------------------
#: Documents read by make_windows from files or hf without corpus.max_documents: The Pile's val + test
#: shards, the paper's corpus, hold ~429,000, of ~1,450-2,200 GPT-NeoX tokens each (README).
ASSUMED_DOCUMENTS = 500_000
ASSUMED_TOKENS_PER_DOCUMENT = 2_200
#: Local corpus files (corpus.source: files) bound the count instead when they exist at DAG time: their text
#: (zstd-compressed JSON lines count 4x their size) holds at most one window per T bytes (a token is at least
#: a byte) and one document per 50 bytes; tokenizing takes ~4 bytes per token.
ZSTD_RATIO = 4
BYTES_PER_TOKEN = 4
#: Classes of a per-class probe task (The Pile has 22 subsets; the embedded corpus 8 domains) and of any
#: task in the probe fits' cost.
ASSUMED_CLASSES = 22
#: Vocabulary when the model's config cannot be read: the largest among the adapter families (Gemma's).
ASSUMED_VOCAB = 256_000
#: The LM's attention head size, for the number of heads (attention width / 64: Pythia, SmolLM2, Llama).
ASSUMED_LM_HEAD_SIZE = 64
#: lbfgs iterations per probe fit: bench/probes.py counted 35-270 (about 100 on average) on synthetic
#: data of the paper's shapes, and 10-143 on SmolLM2's real features.
ASSUMED_PROBE_ITERATIONS = 300
#: scikit-learn's lbfgs logistic regression, CPU seconds per iteration per (row x feature), a + b x classes:
#: bench/probes.py measured 0.096-0.395 s per iteration at 40,000 rows x 1,024-2,048 features x 8-22 classes.
PROBE_SECONDS_PER_ROW_FEATURE = (1.25e-9, 1.6e-10)
#: float64 values of one chunk of lag features (pndecomp.baselines._CHUNK_VALUES).
RIDGE_CHUNK_VALUES = 2**24
#: Patch kinds of pndecomp.interventions.PATCHES (a test keeps the two equal; importing it would import torch).
PATCH_KINDS = 5


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


# ---------------------------------------------------------------- building blocks (bytes, seconds)

def _lm(s: Sizes, batch: int, n_captured: int, estimate: Estimate, *, surprisal: bool = False) -> None:
    """The frozen LM: weights, and one batch's forward pass on the CPU in float32.

    Per token: ~8 residual-width tensors alive in a block (input, norm, q, k, v, attention output, block
    output, a capture's copy) and 3 FFN-width ones (a gated MLP's gate, up and their product), plus the
    attention scores and probabilities (2 × heads × T per token) and the captured layers in float32.
    Checked against bench/memory.py: SmolLM2's float32 extraction at 8 × 128 (5 layers, surprisal on)
    peaked +869-907 MB over the loaded process, its mapped weights' pages included, where these terms give
    974 MB (672 of them the weights).
    """
    tokens = batch * s.length
    estimate.memory["process"] = LM_PROCESS_MB * MB  # transformers' model classes besides torch
    estimate.memory["lm weights"] = s.lm_params * s.model_bytes
    estimate.memory["lm forward"] = (tokens * (8 * s.d_model + 3 * s.ffn_width) * 4
                                     + 2 * batch * s.lm_heads * s.length**2 * 4)
    estimate.memory["captured layers"] = n_captured * tokens * s.d_model * 4
    if surprisal:
        # Float32Head: float32 logits [batch, T, vocab], one window's log-softmax at a time, and float32
        # copies of the final norm and LM head when the LM is not float32.
        estimate.memory["surprisal logits"] = tokens * s.vocab * 4 + 2 * s.length * s.vocab * 4
        if s.model_bytes != 4:
            estimate.memory["float32 head"] = s.vocab * s.d_model * 4


def _lm_seconds(s: Sizes, tokens: float, *, surprisal: bool = False) -> float:
    flops = tokens * (2 * s.lm_block_params + 4 * s.n_blocks * s.length * s.attention_width)
    if surprisal:
        flops += tokens * 2 * s.vocab * s.d_model
    return _device_seconds(s, flops)


def _tokens(s: Sizes, windows: int) -> float:
    """A windows Parquet file's token ids: the pandas column (an int32 array per window, ~100 B overhead
    each), their int64 copies and the stacked int64 array (pndecomp.windows.tokens_array)."""
    return windows * (s.length * (4 + 8 + 8) + 200)


def _predictor_forward(s: Sizes, batch: int) -> float:
    """One predictor forward in float32: input copy, q/k/v, attention scores, attended values and their
    reshaped copy, output."""
    tokens = batch * s.length
    return tokens * (2 * s.d_model + 5 * s.predictor_width) * 4 + batch * s.predictor_heads * s.length**2 * 4


def _predictor_flops_per_token(s: Sizes) -> float:
    return 2 * s.predictor_params + 4 * s.length * s.predictor_width


def _device_seconds(s: Sizes, flops: float) -> float:
    return flops / (CPU_FLOPS if s.device_is_cpu else GPU_FLOPS)


def _training(s: Sizes, estimate: Estimate, n_layers: int) -> None:
    """Per trained layer its predictor_val hidden states (train.eval_windows, read whole) and the predictor with its
    gradient and two Adam moments; and one step's activations at a time (the layers step one after another:
    the forward kept for backward and its gradients, 3 × a forward), or an evaluation batch of 32."""
    eval_hidden = s.eval_windows * s.length * s.d_model * s.storage_bytes
    if s.predictor_fit_lags:  # ridge_ar<k>: one pass over the cached states, as score_baselines' ridge fit
        p = s.predictor_fit_lags * s.d_model
        estimate.memory["predictors and eval states"] = n_layers * (eval_hidden + 6 * p * p * 8)
        estimate.memory["lag features"] = 3 * min(RIDGE_CHUNK_VALUES, s.train_batch * s.length * p) * 8
        rows = s.windows["predictor_train"] * (s.length - 1)
        estimate.seconds["ridge fit"] = n_layers * (2 * rows * p * p + 10 * p**3) / CPU_FLOPS
        return
    estimate.memory["predictors and eval states"] = n_layers * (eval_hidden + 4 * s.predictor_params * 4)
    estimate.memory["training step"] = max(3 * _predictor_forward(s, s.train_batch), _predictor_forward(s, 32))
    tokens = s.steps * s.train_batch * s.length
    evaluated = (s.steps // s.eval_every + 1) * s.eval_windows * s.length
    estimate.seconds["predictor steps"] = n_layers * _device_seconds(
        s, 3 * tokens * _predictor_flops_per_token(s) + evaluated * _predictor_flops_per_token(s))


# ---------------------------------------------------------------- one function per rule

def materialize_model(s: Sizes) -> Estimate:
    """GGUF → float32 weights (dequantized), saved as safetensors (a serialised copy)."""
    e = Estimate({"process": LM_PROCESS_MB * MB, "dequantized weights": 2 * s.lm_params * 4})
    e.seconds["dequantize and save"] = s.lm_params / 1e7  # ~20 s for SmolLM2 measured
    return e


def materialize_tokenizer(s: Sizes) -> Estimate:
    """The GGUF header's vocabulary arrays parsed into a tokenizer (~5 s for SmolLM2)."""
    return Estimate({"process": LM_PROCESS_MB * MB, "tokenizer": 4 * TOKENIZER_MB * MB}, {"parse": 30})


def embedded_corpus(s: Sizes) -> Estimate:
    """Text files of the virtual environment and the standard library, ~100 kB each, held per domain."""
    return Estimate({"process": TORCH_PROCESS_MB * MB, "files": s.embedded_files * 200_000},
                    {"read": s.embedded_files * 0.05})


def make_windows(s: Sizes) -> Estimate:
    """Every candidate window of every document (a DataFrame row with its int32 tokens, ids and labels,
    ~1 kB besides the tokens, twice while it is split and selected), the duplicate index (sha1 per
    document, or MinHash signatures with corpus.dedup: near, ~10 kB), and the tokenizer."""
    candidates = s.documents * s.windows_per_document
    if s.corpus_bytes is not None:
        candidates = min(candidates, s.corpus_bytes // s.length)
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "tokenizer": TOKENIZER_MB * MB,
                  "candidate windows": 2 * candidates * (s.length * 4 + 1_000),
                  "duplicate index": s.documents * (10_000 if s.dedup_near else 200)})
    tokens = s.documents * ASSUMED_TOKENS_PER_DOCUMENT if s.corpus_bytes is None else s.corpus_bytes / BYTES_PER_TOKEN
    e.seconds["tokenize"] = tokens / TOKENS_PER_S
    e.seconds["label and select"] = candidates * SECONDS_PER_CANDIDATE_WINDOW
    if s.dedup_near:
        e.seconds["near duplicates"] = s.documents * 0.004 * 3  # ~4 ms per 3 kB document (README)
    return e


def _extract(s: Sizes, split: str, surprisal: bool) -> Estimate:
    """One LM pass per batch; every layer's batch streams to its file (memory: one batch whatever the
    number of windows), plus the windows' token ids."""
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "token ids": _tokens(s, s.windows[split])})
    _lm(s, s.extraction_batch, s.n_layers, e, surprisal=surprisal)
    e.memory["stored batch"] = s.n_layers * s.extraction_batch * s.length * s.d_model * s.storage_bytes
    e.seconds["lm"] = _lm_seconds(s, s.windows[split] * s.length, surprisal=surprisal)
    return e


def extract_train_activations(s: Sizes) -> Estimate:
    return _extract(s, "predictor_train", surprisal=False)


def extract_val_activations(s: Sizes) -> Estimate:
    return _extract(s, "predictor_val", surprisal=False)


def extract_eval_activations(s: Sizes) -> Estimate:
    return _extract(s, "predictor_eval", surprisal=True)


def extract_probe_activations(s: Sizes) -> Estimate:
    return _extract(s, "probe", surprisal=False)


def train_predictor(s: Sizes, n_layers: int = 1) -> Estimate:
    """Cache mode reads the layer's predictor_train activations whole (O(windows): 4.3 GB of float16 at
    8,192 × 256 × 1,024); stream mode runs the LM once per step instead (the token store is memory-mapped)."""
    e = Estimate({"process": TORCH_PROCESS_MB * MB})
    if s.stream:
        _lm(s, s.train_batch, n_layers, e)
        e.seconds["lm"] = _lm_seconds(s, s.steps * s.train_batch * s.length)
    else:
        e.memory["train activations"] = s.windows["predictor_train"] * s.length * s.d_model * s.storage_bytes
        e.memory["batch"] = s.train_batch * s.length * s.d_model * (s.storage_bytes + 4)
    _training(s, e, n_layers)
    return e


def train_predictors_joint(s: Sizes) -> Estimate:
    return train_predictor(s, n_layers=s.n_layers)


def score_baselines(s: Sizes) -> Estimate:
    """Fit on at most metrics.baseline_train_windows windows, one batch at a time in float64: the ridge
    moments (p = k·d: train and held-out XᵀX, the pooled copy, the eigendecomposition), a chunk of lag
    features, and per eval batch its float64 copy, prediction and squared error."""
    batch_values = s.extraction_batch * s.length * s.d_model
    p = s.ridge_lags * s.d_model
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "batches in float64": 4 * batch_values * 8,
                  "ridge moments": 6 * p * p * 8,
                  "lag features": 3 * min(RIDGE_CHUNK_VALUES, batch_values * max(1, s.ridge_lags)) * 8,
                  "sse per window": s.n_baselines * s.windows["predictor_eval"] * 8})
    train_windows = min(s.baseline_train_windows, s.windows["predictor_train"])
    if s.stream:
        e.memory["token ids"] = _tokens(s, s.windows["predictor_train"])
        _lm(s, s.extraction_batch, 1, e)
        e.seconds["lm"] = _lm_seconds(s, train_windows * s.length)
    rows = train_windows * (s.length - 1)
    e.seconds["ridge fit"] = (2 * rows * p * p + 10 * p**3) / CPU_FLOPS
    e.seconds["eval passes"] = (s.n_baselines * s.windows["predictor_eval"] * s.length * s.d_model * 10
                                / NUMPY_VALUES_PER_S + 2 * s.windows["predictor_eval"] * s.length * p * s.d_model
                                / CPU_FLOPS)
    return e


def decompose_eval(s: Sizes) -> Estimate:
    """Per batch: the stored states, their float32 copy, ĥ, r and the target (float32), the metric
    accumulator's float64 copies and squares (6 × float64), and the predictor's forward; per window one SSE."""
    batch_values = s.extraction_batch * s.length * s.d_model
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "predictor": s.predictor_params * 4,
                  "batch": batch_values * (s.storage_bytes + 4 * 4 + 6 * 8),
                  "predictor forward": _predictor_forward(s, s.extraction_batch),
                  "sse per window": s.windows["predictor_eval"] * 40})
    tokens = s.windows["predictor_eval"] * s.length
    e.seconds["predictor"] = _device_seconds(s, tokens * _predictor_flops_per_token(s))
    e.seconds["metrics"] = tokens * s.d_model * 10 / NUMPY_VALUES_PER_S
    return e


def probe_features(s: Sizes) -> Estimate:
    """One LM pass per batch over the probe windows; each layer's h_T, ĥ_T, r_T and mean of h_<T stream to
    its file (memory: one batch), the predictors run one layer at a time. With shared states the LM pass
    is a read of one stored batch instead."""
    windows = s.windows["probe"]
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "predictors": s.n_layers * s.predictor_params * 4,
                  "predictor forward": _predictor_forward(s, s.extraction_batch)})
    if s.shared_probe_states:
        e.memory["stored batch"] = s.extraction_batch * s.length * s.d_model * (s.storage_bytes + 4)
    else:
        e.memory["token ids"] = _tokens(s, windows)
        _lm(s, s.extraction_batch, s.n_layers, e)
        e.seconds["lm"] = _lm_seconds(s, windows * s.length)
    e.seconds["predictors"] = _device_seconds(s, s.n_layers * windows * s.length * _predictor_flops_per_token(s))
    return e


def _interventions_lm(s: Sizes, estimate: Estimate) -> None:
    """The LM run from block ℓ on (bounded by a whole forward) with float32 logits at the scored positions:
    the logits, the clean and the patched log-probabilities of one batch."""
    _lm(s, s.intervention_batch, 1, estimate, surprisal=True)
    estimate.memory["log-probabilities"] = 3 * s.intervention_batch * s.scored_positions * s.vocab * 4


def patch_layer(s: Sizes) -> Estimate:
    """The train mean over the baselines' windows (a batch at a time), the patched windows' states, and per
    batch the clean run and one run per patch kind."""
    windows = s.patching_windows
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "token ids": _tokens(s, s.windows["predictor_eval"]),
                  "states, ĥ and patches": 4 * windows * s.length * s.d_model * 4,
                  "train mean batch": s.extraction_batch * s.length * s.d_model * 2 * 8,
                  "predictor": s.predictor_params * 4,
                  "predictor forward": _predictor_forward(s, s.intervention_batch)})
    _interventions_lm(s, e)
    train_windows = min(s.baseline_train_windows, s.windows["predictor_train"])
    e.seconds["train mean"] = train_windows * s.length * s.d_model * 4 / NUMPY_VALUES_PER_S
    e.seconds["lm runs"] = (PATCH_KINDS + 1) * _lm_seconds(s, windows * s.length, surprisal=True)
    return e


def steer_layer(s: Sizes) -> Estimate:
    """The probe features of two layers, the domain probes' fits, the steered windows' states, and per
    (source, domain, nonzero α) one run of the blocks above ℓ over the steered windows."""
    windows = s.steering_windows_per_domain * s.probe_classes
    runs = 1 + 2 * s.probe_classes * s.steering_alphas
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "token ids": _tokens(s, s.windows["probe"]),
                  "probe features": 2 * 4 * s.windows["probe"] * s.d_model * 4,
                  "probe fit": 2 * s.windows["probe_task"] * s.d_model * 8,
                  "steered states": 2 * windows * s.length * s.d_model * 4})
    _interventions_lm(s, e)
    e.seconds["lm runs"] = runs * _lm_seconds(s, windows * s.length, surprisal=True)
    a, b = PROBE_SECONDS_PER_ROW_FEATURE
    e.seconds["probe fits"] = (2 * ASSUMED_PROBE_ITERATIONS * s.windows["probe_task"] * s.d_model
                               * (a + b * s.probe_classes))
    return e


def fit_probe(s: Sizes) -> Estimate:
    """The layer's features file read whole (4 × [probe windows, d] float32), [ĥ, r] built from it, the
    float64 copies of the task's train/val/test rows and the scaler's standardised copy of the train rows
    ([rows, 2d] each for [ĥ, r]), and lbfgs's per-row class scores."""
    windows, task = s.windows["probe"], s.windows["probe_task"]
    e = Estimate({"process": NUMPY_PROCESS_MB * MB, "features": 4 * windows * s.d_model * 4,
                  "[hhat, r]": windows * 2 * s.d_model * 4, "float64 copies": 2 * task * 2 * s.d_model * 8,
                  "class scores": 4 * task * s.probe_classes * 8})
    a, b = PROBE_SECONDS_PER_ROW_FEATURE
    iterations = min(s.max_iter, ASSUMED_PROBE_ITERATIONS)
    train_rows = task  # the train split is the bulk of a task's windows
    features = 4 * s.d_model + 2 * s.d_model  # h, h_mean, ĥ, r at d; [ĥ, r] at 2d
    e.seconds["lbfgs"] = s.c_grid * (5 * 2.0 + iterations * train_rows * features * (a + b * s.probe_classes))
    return e


def layer_scores(s: Sizes) -> Estimate:
    """Two passes over hidden states and residuals, a batch at a time (float64 copies and squares), the
    per-window statistics (means [W, d], norms and squared residuals [W, P]), the masks of the robust
    views, the bootstrap's resample weights [resamples, W] and the tokenizer for the tail table."""
    windows = s.windows["predictor_eval"]
    positions = s.length - 1
    batch_values = s.extraction_batch * s.length * s.d_model
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "tokenizer": TOKENIZER_MB * MB,
                  "batch": batch_values * (2 * s.storage_bytes + 6 * 8),
                  "window statistics": 3 * windows * s.d_model * 8 + 6 * windows * positions * 8,
                  "bootstrap weights": 4 * s.bootstrap * windows * 8,
                  "windows table": _tokens(s, windows)})
    e.seconds["passes"] = 2 * windows * s.length * s.d_model * 20 / NUMPY_VALUES_PER_S
    e.seconds["bootstrap"] = s.bootstrap * windows * (2 * s.d_model + s.n_baselines + 1) * 2 / CPU_FLOPS
    return e


def per_position_metrics(s: Sizes) -> Estimate:
    """A batch of hidden states and residuals at a time (their float64 copies and squares: 5, and 2 more for
    what the allocator keeps, as measured), and whole
    [windows, positions] arrays: ‖r‖² (and its concatenation), ‖r‖, surprisal, and per bootstrap resample
    their resampled copies and Spearman ranks (8 B × W × P: 16 MB at the paper's 8,192 × 255)."""
    windows, positions = s.windows["predictor_eval"], s.length - 1
    batch_values = s.extraction_batch * s.length * s.d_model
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "batch": batch_values * (2 * s.storage_bytes + 7 * 8),
                  "[windows, positions] arrays": 11 * windows * positions * 8,
                  "bootstrap samples": 2 * s.bootstrap * positions * 8})
    e.seconds["pass"] = windows * s.length * s.d_model * 10 / NUMPY_VALUES_PER_S
    log_windows = math.log2(max(windows, 2))
    e.seconds["bootstrap"] = s.bootstrap * windows * positions * (2 * log_windows + 10) / NUMPY_VALUES_PER_S
    return e


#: One estimate per rule that runs as a job (the local rules, run by Snakemake itself, have none).
STAGES: dict[str, Callable[[Sizes], Estimate]] = {
    stage.__name__: stage for stage in (
        materialize_model, materialize_tokenizer, embedded_corpus, make_windows, extract_train_activations,
        extract_val_activations, extract_eval_activations, extract_probe_activations, train_predictor,
        train_predictors_joint, score_baselines,
        decompose_eval, probe_features, fit_probe, layer_scores, per_position_metrics, patch_layer, steer_layer)}


#: The rules whose jobs run one predictor (a ``{predictor}`` wildcard) and whose estimate depends on it: each
#: job asks for its own predictor's memory and time (attn2's for attn2's jobs), not the ``predictor`` section's.
PREDICTOR_RULES = frozenset({"train_predictor", "train_predictors_joint", "decompose_eval", "probe_features",
                             "patch_layer"})


# ---------------------------------------------------------------- from the config

def probe_windows(config: Mapping) -> tuple[int, int]:
    """(probe windows, the largest task's windows), upper bounds from the caps: per-class caps × the
    assumed number of classes, summed over the splits; the union over tasks at most their sum."""
    per_task = {}
    for name, caps in pnconfig.probe_caps(config).items():
        task = tasks.get(name)
        classes = ASSUMED_CLASSES if task.cap_kind == "per_class" else 1
        per_task[name] = sum(caps.values()) * classes
    bases = [n for name, n in per_task.items() if tasks.get(name).control is None]
    return sum(bases), max(per_task.values(), default=0)


def model_extras(config: Mapping, materialized_dir: str | None = None) -> dict[str, int]:
    """{vocab, ffn_width} of the model where its config can be read without loading it (a config.json,
    a GGUF header or the local hub cache); a missing one is left out."""
    try:
        source = (lm.ModelSource(str(materialized_dir))
                  if materialized_dir and (Path(materialized_dir) / "config.json").is_file()
                  else lm.resolve_source(config["model"]))
        if source.gguf_file:
            metadata = lm.gguf_metadata(Path(source.path) / source.gguf_file)
            arch = metadata["general.architecture"]
            values = {"vocab": metadata.get(f"{arch}.vocab_size"),
                      "ffn_width": metadata.get(f"{arch}.feed_forward_length")}
        else:
            model_config = json.loads((lm.model_directory(source) / "config.json").read_text())
            model_config = model_config.get("text_config") or model_config
            values = {"vocab": model_config.get("vocab_size"),
                      "ffn_width": model_config.get("intermediate_size") or model_config.get("n_inner")}
    except (OSError, ValueError, KeyError):
        return {}
    return {key: int(value) for key, value in values.items() if value}


def corpus_bytes(corpus: Mapping) -> int | None:
    """The text of ``corpus.source: files`` (a .zst file counts :data:`ZSTD_RATIO` × its size), or None
    when the source is another or a file is not there (yet)."""
    if corpus["source"] != "files":
        return None
    total = 0
    for name in corpus["files"]["paths"]:
        path = Path(name)
        if not path.is_file():
            return None
        total += path.stat().st_size * (ZSTD_RATIO if path.suffix == ".zst" else 1)
    return total


def predictor_sizes(config: Mapping, shape: lm.ModelShape) -> dict[str, int]:
    """The configured predictor's parameters (counted on a module built on the meta device: no memory),
    its per-token width (attention: n_heads × d_head per layer, plus an MLP's hidden width, a transformer
    block's MLP and a lag stack's k × d), its attention heads over all layers, and k when it is fitted in
    closed form."""
    import torch

    from . import predictor

    settings = pnconfig.predictor_config(config, shape)
    with torch.device("meta"):
        params = predictor.parameter_count(predictor.build_predictor(settings))
    layers = int(getattr(settings, "n_layers", 1))
    heads = int(getattr(settings, "n_heads", 0) or 0) * layers
    width = (heads * int(getattr(settings, "d_head", 0) or 0) + int(getattr(settings, "hidden", 0) or 0)
             + int(getattr(settings, "k", 0) or 0) * shape.d_model
             + int(getattr(settings, "mlp_width", 0) or 0) * layers)
    closed_form = predictor.parse_kind(config["predictor"]["kind"])[0].fit is not None
    return {"predictor_params": params, "predictor_width": width or shape.d_model, "predictor_heads": heads,
            "predictor_fit_lags": int(settings.k) if closed_form else 0}


def sizes(config: Mapping, shape: lm.ModelShape, extras: Mapping[str, int] | None = None,
          predictor: str | None = None) -> Sizes:
    """:class:`Sizes` of a validated config (schema defaults filled in) for a model of ``shape``;
    ``extras``: :func:`model_extras` (an unknown vocabulary counts :data:`ASSUMED_VOCAB`, an unknown FFN
    width 4 × d_model). With ``predictor`` (a name of the config's ``predictors``), the predictor's and
    training's sizes are that entry's (its kind, settings and ``train`` override); without, the
    ``predictor`` section's, and the largest training budget of all entries."""
    extras = extras or {}
    if predictor is not None:
        config = pnconfig.with_predictor(config, predictor)
        steps = config["train"]["steps"]
    else:
        names = pnconfig.predictor_names(config)
        steps = max(pnconfig.with_predictor(config, name)["train"]["steps"] for name in names)
    windows, section, interventions = config["windows"], config["train"], config["interventions"]
    probe, probe_task = probe_windows(config)
    corpus = config["corpus"]
    embedded_files = 8 * corpus["embedded"]["max_files_per_domain"] if corpus["source"] == "embedded" else 0
    documents = corpus["max_documents"] or (embedded_files if corpus["source"] == "embedded" else ASSUMED_DOCUMENTS)
    text_bytes = corpus_bytes(corpus)
    if text_bytes is not None:
        documents = min(documents, max(1, text_bytes // 50))
    lags = [int(name.removeprefix("ridge_ar")) for name in config["metrics"]["baselines"]
            if name.startswith("ridge_ar")]
    model_dtype = config["model"]["dtype"]
    return Sizes(
        windows={"predictor_train": windows["predictor_train"], "predictor_val": windows["predictor_val"],
                 "predictor_eval": windows["predictor_eval"],
                 "probe": probe, "probe_task": probe_task},
        length=windows["length"], extraction_batch=config["extraction"]["batch_size"],
        train_batch=section["batch_size"], eval_windows=section["eval_windows"],
        steps=steps,
        eval_every=section["eval_every"], stream=section["data"] == "stream", n_layers=len(config["layers"]),
        storage_bytes=4 if config["extraction"]["dtype"] == "float32" else 2,
        model_bytes=2 if model_dtype in ("bfloat16", "float16") else 4, device_is_cpu=config["device"] == "cpu",
        d_model=shape.d_model, n_blocks=shape.n_blocks, attention_width=shape.attention_width,
        vocab=extras.get("vocab", ASSUMED_VOCAB), ffn_width=extras.get("ffn_width", 4 * shape.d_model),
        **predictor_sizes(config, shape),
        ridge_lags=max(lags, default=0), n_baselines=len(config["metrics"]["baselines"]),
        baseline_train_windows=config["metrics"]["baseline_train_windows"], bootstrap=config["metrics"]["bootstrap"],
        documents=documents, corpus_bytes=text_bytes, windows_per_document=windows["per_document"],
        dedup_near=corpus["dedup"] == "near",
        embedded_files=embedded_files, c_grid=len(config["probes"]["c_grid"]), max_iter=config["probes"]["max_iter"],
        shared_probe_states=config["probes"]["shared_states"], intervention_batch=interventions["batch_size"],
        scored_positions=max(1, windows["length"] - interventions["from_position"]),
        patching_windows=interventions["patching_windows"],
        steering_windows_per_domain=interventions["steering_windows_per_domain"],
        steering_alphas=sum(alpha != 0 for alpha in interventions["alphas"]))


def estimates(config: Mapping, shape: lm.ModelShape, extras: Mapping[str, int] | None = None,
              predictor: str | None = None) -> dict[str, Estimate]:
    """{rule: Estimate} of every rule in :data:`STAGES`; with ``predictor``, the :data:`PREDICTOR_RULES`'
    are that predictor's (:func:`sizes`)."""
    s = sizes(config, shape, extras, predictor)
    return {rule: stage(s) for rule, stage in STAGES.items()}


def requests(config: Mapping, shape: lm.ModelShape, materialized_dir: str | None = None,
             predictor: str | None = None) -> dict[str, Request]:
    """{rule: Request} for every rule that runs as a job, from the config's sizes and the model's; with
    ``predictor``, a :data:`PREDICTOR_RULES` job of that predictor asks for what that predictor needs."""
    found = estimates(config, shape, model_extras(config, materialized_dir), predictor)
    return {rule: estimate.request() for rule, estimate in found.items()}


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.resources CONFIG``: every rule's request and its largest memory terms."""
    import argparse

    from .config_files import compose
    from .config_schema import check
    from .overrides import load_schema

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/paper.yaml")
    parser.add_argument("--predictor", help="the requests of this entry of the config's predictors (the rules that run "
                                            "one predictor ask for its own); default: the predictor section's")
    parser.add_argument("--shape", help="the model's n_blocks,d_model,attention_width[,vocab,ffn_width] when it is not "
                                        "in the local hub cache, e.g. 24,1024,1024,50304,4096 for Pythia-410m")
    args = parser.parse_args(argv)
    config, _ = compose([args.config])  # as the workflow reads it with --configfile: extends included
    check(config, load_schema(Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"))
    if args.shape:
        values = [int(v) for v in args.shape.split(",")]
        shape, extras = lm.ModelShape(values[0], None, values[1], values[2], "given"), {}
        extras.update(zip(("vocab", "ffn_width"), values[3:], strict=False))
    else:
        try:
            shape = pnconfig.model_shape(config)
        except lm.ModelNotDownloaded as error:
            parser.error(f"{error}\nor give the model's shape with --shape")
        extras = model_extras(config)
    print("| rule | mem_mb | runtime (min) | largest memory terms (MB) |\n|---|---:|---:|---|")
    if args.predictor is not None and args.predictor not in pnconfig.predictor_names(config):
        parser.error(f"--predictor {args.predictor!r} is not one of the config's predictors: "
                     f"{', '.join(pnconfig.predictor_names(config))}")
    for rule, estimate in estimates(config, shape, extras, args.predictor).items():
        request = estimate.request()
        terms = sorted(estimate.memory.items(), key=lambda item: -item[1])[:3]
        print(f"| `{rule}` | {request.mem_mb:,} | {request.runtime:,} | "
              + ", ".join(f"{name} {value / MB:,.0f}" for name, value in terms) + " |")


if __name__ == "__main__":
    main()
