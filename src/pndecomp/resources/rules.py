"""One estimate per rule: :class:`~pndecomp.resources.estimate.Sizes` in, an
:class:`~pndecomp.resources.estimate.Estimate` of peak memory and work out (:mod:`pndecomp.resources`)."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from ..patch_kinds import PATCHES
from ..registry import RULES
from .constants import (
    ASSUMED_PROBE_ITERATIONS,
    ASSUMED_TOKENS_PER_DOCUMENT,
    BYTES_PER_TOKEN,
    CPU_FLOPS,
    GPU_FLOAT64_FLOPS,
    GPU_FLOPS,
    HOST_TO_DEVICE_BYTES_PER_S,
    LM_PROCESS_MB,
    MB,
    NUMPY_PROCESS_MB,
    NUMPY_VALUES_PER_S,
    PROBE_SECONDS_PER_ROW_FEATURE,
    RIDGE_CHUNK_VALUES,
    SECONDS_PER_CANDIDATE_WINDOW,
    TOKENIZER_MB,
    TOKENS_PER_S,
    TORCH_PROCESS_MB,
)
from .estimate import Estimate, Sizes

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


def _float64_seconds(s: Sizes, flops: float) -> float:
    """The closed-form baselines' float64 work, on the job's device (pndecomp.baselines)."""
    return flops / (CPU_FLOPS if s.device_is_cpu else GPU_FLOAT64_FLOPS)


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
        estimate.seconds["ridge fit"] = n_layers * _float64_seconds(s, 2 * rows * p * p + 10 * p**3)
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
        e.seconds["near duplicates"] = s.documents * 0.004 * 3  # ~4 ms per 3 kB document (docs/choices.md)
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
    """Fit on at most metrics.baseline_train_windows windows, one batch at a time in float64 on the job's
    device: the ridge moments (p = k·d: train and held-out XᵀX, the pooled copy, the eigendecomposition), a
    chunk of lag features, and per eval batch its float64 copy, prediction and squared error."""
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
    e.seconds["ridge fit"] = _float64_seconds(s, 2 * rows * p * p + 10 * p**3)
    eval_values = s.windows["predictor_eval"] * s.length * s.d_model
    ridge_predictions = _float64_seconds(s, 2 * s.windows["predictor_eval"] * s.length * p * s.d_model)
    if s.device_is_cpu:
        e.seconds["eval passes"] = s.n_baselines * eval_values * 10 / NUMPY_VALUES_PER_S + ridge_predictions
    else:  # the stored states copied to the device once per baseline; the elementwise work there is negligible
        e.seconds["eval passes"] = (s.n_baselines * eval_values * s.storage_bytes / HOST_TO_DEVICE_BYTES_PER_S
                                    + ridge_predictions)
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
    e.seconds["lm runs"] = (len(PATCHES) + 1) * _lm_seconds(s, windows * s.length, surprisal=True)
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


def inspect_text(s: Sizes) -> Estimate:
    """One text (the longest of inspect.texts, at least a window) through the LM with float32 logits for surprisal,
    every layer's predictor, h, ĥ and r of every layer in float32 (held twice: tensors and arrays), and plotly
    with the page (its ~5 MB of JavaScript, a few copies while it is written: 40 MB measured)."""
    text = dataclasses.replace(s, length=max(s.length, s.inspect_tokens))
    e = Estimate({"process": TORCH_PROCESS_MB * MB, "tokenizer": TOKENIZER_MB * MB,
                  "predictors": s.n_layers * s.main_predictor_params * 4,
                  "h, hhat and r": 2 * 3 * s.n_layers * text.length * s.d_model * 4, "plotly and the page": 100 * MB})
    _lm(text, 1, s.n_layers, e, surprisal=True)
    e.seconds["lm"] = _lm_seconds(text, text.length, surprisal=True)
    e.seconds["page"] = 10
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


def _estimates_of_job_rules() -> dict[str, Callable[[Sizes], Estimate]]:
    """{rule: its estimate}: the function above named after each job rule of :data:`pndecomp.registry.RULES`."""
    functions = globals()
    missing = [name for name, rule in RULES.items() if not rule.local and not callable(functions.get(name))]
    if missing:
        raise ImportError(f"pndecomp.registry.RULES has job rules without an estimate in {__name__}: {missing} "
                          "(add a function of the rule's name, Sizes -> Estimate, or mark the rule local)")
    return {name: functions[name] for name, rule in RULES.items() if not rule.local}


#: One estimate per rule that runs as a job (the local rules, run by Snakemake itself, have none).
STAGES: dict[str, Callable[[Sizes], Estimate]] = _estimates_of_job_rules()

#: The rules whose jobs run one predictor (a ``{predictor}`` wildcard) and whose estimate depends on it: each
#: job asks for its own predictor's memory and time (attn2's for attn2's jobs), not the ``predictor`` section's.
PREDICTOR_RULES = frozenset(name for name, rule in RULES.items() if rule.per_predictor)
