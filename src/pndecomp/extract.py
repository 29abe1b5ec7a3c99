"""Running the frozen LM over windows: whole-window hidden states for the predictor splits, and
last-position features (h_T, ĥ_T, r_T, and the mean of h_1..h_{T-1}) for the probe windows.

All requested layers come from one forward pass, which stops after the deepest requested block
(after the final norm for ``final`` or for surprisal, whose logits come from a float32 final norm
and LM head). Outputs stream to disk batch by batch, so peak memory is one batch whatever the
number of windows.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .lm import ResidualCapture, surprisal
from .model_files import LAYER_CONVENTION, Layer
from .storage import (
    StreamingTensorsWriter,
    StreamingTensorWriter,
    WriteBehind,
    hidden_batches,
    release_freed_memory,
    tensor_shape,
)
from .windows import tokens_array

log = logging.getLogger(__name__)


class NonFiniteHiddenState(FloatingPointError):
    """A hidden state that is not finite in the storage dtype (e.g. fp16 overflow of massive activations)."""


def _check_finite(stored: torch.Tensor, layer: Layer, window_offset: int, max_abs_hidden: torch.Tensor) -> None:
    """``stored``: a batch of hidden states in the storage dtype; ``max_abs_hidden``: their largest |h| before."""
    if torch.isfinite(stored).all():
        return
    bad = (~torch.isfinite(stored)).nonzero()[0].tolist()
    raise NonFiniteHiddenState(
        f"layer {layer}: non-finite hidden state at window {window_offset + bad[0]}, position {bad[1] + 1} "
        f"when stored as {stored.dtype} (max |h| in the batch: {float(max_abs_hidden):.4g}); "
        "set extraction.dtype to bfloat16 or float32")


def _to_host(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], torch.cuda.Event | None]:
    """The tensors on the host, and on a GPU the event a writer waits for before reading them: there the copies
    are non-blocking into pinned memory (PyTorch pins the destination of a non-blocking device-to-host copy),
    so the next batch's forward is queued while they run."""
    if tensors[0].device.type != "cuda":
        return [tensor.cpu() for tensor in tensors], None
    host = [tensor.to("cpu", non_blocking=True) for tensor in tensors]
    event = torch.cuda.Event()
    event.record()
    return host, event


def _write_copied(writer: StreamingTensorWriter, batch: torch.Tensor, copied: torch.cuda.Event | None,
                  check: Callable[[torch.Tensor], None] | None = None) -> None:
    """On the writer thread: wait for the batch's copy to the host, ``check`` it, write it."""
    if copied is not None:
        copied.synchronize()
    if check is not None:
        check(batch)
    writer.write(batch)


#: ``extraction.dtype: auto`` keeps float16 while the first batch's largest |h|, times this margin, stays
#: below float16's largest finite value (65504), i.e. |h| < 32752: later windows may reach beyond the
#: first batch's states, and float16 overflows to inf where bfloat16 (float32's range) only rounds. The
#: largest states are a model's massive first-position (attention-sink) states, much alike in every window:
#: over SmolLM2's 1,152 eval and train windows of the embedded default the largest is 1.07 x the first
#: batch's (29,248 against 27,328 at block 15); a later overflow still stops the job (NonFiniteHiddenState).
AUTO_DTYPE_MARGIN = 2.0


def choose_storage_dtype(hidden: Mapping[Layer, torch.Tensor]) -> dict:
    """``extraction.dtype: auto`` from one batch of every layer's hidden states: float16 (3 more
    significant bits) when they fit it with :data:`AUTO_DTYPE_MARGIN`, else bfloat16; the record of the
    choice and of what it rests on (max |h| per layer)."""
    max_abs = {str(layer): h.abs().max().item() for layer, h in hidden.items()}
    float16_max = torch.finfo(torch.float16).max
    # Written as "all below" so that a NaN (never below anything) chooses bfloat16, not float16.
    fits = all(value * AUTO_DTYPE_MARGIN < float16_max for value in max_abs.values())
    return {"dtype": "float16" if fits else "bfloat16", "max_abs_hidden": max_abs, "margin": AUTO_DTYPE_MARGIN,
            "float16_max": float16_max, "windows": int(next(iter(hidden.values())).shape[0]),
            "rule": "float16 if max |h| of the first batch × margin < float16_max, else bfloat16"}


def batches(tokens: np.ndarray, batch_size: int, description: str):
    """(offset, input_ids [batch, T] int64) over the windows, with a progress bar; between batches the
    C heap's free pages go back to the OS (:func:`pndecomp.storage.release_freed_memory`)."""
    for start in tqdm(range(0, len(tokens), batch_size), desc=description, unit="batch", mininterval=5):
        yield start, torch.from_numpy(np.ascontiguousarray(tokens[start:start + batch_size])).long()
        release_freed_memory()


@torch.no_grad()
def extract_hidden_states(model, tokens: np.ndarray, layers: Sequence[Layer], out_paths: Mapping[Layer, str], *,
                          surprisal_path: str | None, batch_size: int, device: torch.device,
                          storage_dtype: torch.dtype | None, metadata: Mapping) -> dict | None:
    """hidden [n_windows, T, d_model] per layer to ``out_paths``; surprisal [n_windows, T-1] if asked.

    ``storage_dtype`` None (``extraction.dtype: auto``) chooses it from the first batch with
    :func:`choose_storage_dtype` and returns the choice (the stage records it).
    """
    capture = ResidualCapture(model, layers)
    n_windows, length = tokens.shape
    d_model = model.config.hidden_size
    choice = None
    with contextlib.ExitStack() as stack:
        writers = None  # opened at the first batch, once the storage dtype is known
        surprisal_writer = stack.enter_context(StreamingTensorWriter(
            surprisal_path, "surprisal", (n_windows, length - 1), torch.float32,
            {**metadata, "positions": "2..T", "unit": "nats"})) if surprisal_path else None
        layer_writers = stack.enter_context(contextlib.ExitStack())  # filled at the first batch
        # Entered after the writers, so every pending write finishes before they close.
        behind = stack.enter_context(WriteBehind())
        for offset, input_ids in batches(tokens, batch_size, "extract"):
            input_ids = input_ids.to(device, non_blocking=True)
            if surprisal_writer is not None:
                hidden, logits = capture.run(input_ids, logits=True)
                [host], copied = _to_host(surprisal(logits, input_ids))
                behind.submit(_write_copied, surprisal_writer, host, copied)
                del logits  # [batch, T, vocab] float32: not alive during the next batch's forward
            else:
                hidden = capture.run(input_ids)
            if writers is None:
                if storage_dtype is None:
                    choice = choose_storage_dtype(hidden)
                    storage_dtype = getattr(torch, choice["dtype"])
                    log.info("extraction.dtype auto: %s (max |h| per layer in the first batch: %s)",
                             choice["dtype"], choice["max_abs_hidden"])
                # The choice is recorded once, in activations/storage_dtype.json (the stage); the files carry
                # the dtype in their header, and are the bytes an explicit extraction.dtype would write.
                layer_metadata = {**metadata, "convention": LAYER_CONVENTION}
                writers = {layer: layer_writers.enter_context(StreamingTensorWriter(
                    out_paths[layer], "hidden", (n_windows, length, d_model), storage_dtype,
                    {**layer_metadata, "layer": layer})) for layer in layers}
            for layer in layers:
                (stored, max_abs), copied = _to_host(hidden[layer].to(storage_dtype), hidden[layer].abs().amax())
                behind.submit(_write_copied, writers[layer], stored, copied, functools.partial(
                    _check_finite, layer=layer, window_offset=offset, max_abs_hidden=max_abs))
            del hidden
    return choice


PROBE_FEATURES = ("h", "h_mean", "hhat", "r")


def _probe_feature_writers(stack: contextlib.ExitStack, out_paths: Mapping[Layer, str], n_windows: int,
                           d_model: int, metadata: Mapping) -> dict:
    return {layer: stack.enter_context(StreamingTensorsWriter(
        path, {name: ((n_windows, d_model), torch.float32) for name in PROBE_FEATURES},
        {**metadata, "layer": layer, "convention": LAYER_CONVENTION, "position": "T (last)"}))
        for layer, path in out_paths.items()}


def _probe_features(predictor: torch.nn.Module, stored: torch.Tensor) -> dict[str, torch.Tensor]:
    """h_T, h_mean, ĥ_T and r_T of a batch of windows' states ``stored`` [batch, T, d], already rounded
    through the storage dtype (the predictor was trained on stored hidden states)."""
    h = stored.to(next(predictor.parameters()).dtype)
    h_last = h[:, -1].float().cpu()
    hhat = predictor(h[:, :-1])[:, -1].float().cpu()
    return {"h": h_last, "h_mean": h[:, :-1].float().mean(dim=1).cpu(), "hhat": hhat, "r": h_last - hhat}


@torch.no_grad()
def extract_probe_features(model, tokens: np.ndarray, predictors: Mapping[Layer, torch.nn.Module],
                           out_paths: Mapping[Layer, str], *, batch_size: int, device: torch.device,
                           storage_dtype: torch.dtype, metadata: Mapping) -> None:
    """h_T, ĥ_T = f(h_{≤T-1}), r_T = h_T − ĥ_T and h_mean = mean(h_1..h_{T-1}) per layer, each
    [n_windows, d_model] float32, streamed to disk batch by batch (memory: one batch).

    Only these are kept: whole probe windows would be ~290 GB of fp16 at paper scale. h_mean (the
    comparator of ĥ_T, which summarises the same h_1..h_{T-1}) is the float32 mean of the states
    rounded through the storage dtype, the very inputs the predictor sees.
    """
    capture = ResidualCapture(model, list(predictors))
    with contextlib.ExitStack() as stack:
        writers = _probe_feature_writers(stack, out_paths, len(tokens), model.config.hidden_size, metadata)
        for _, input_ids in batches(tokens, batch_size, "probe features"):
            hidden = capture.run(input_ids.to(device, non_blocking=True))
            for layer, predictor in predictors.items():
                writers[layer].write(_probe_features(predictor, hidden[layer].to(storage_dtype)))
            del hidden  # not alive during the next batch's forward


@torch.no_grad()
def probe_features_from_states(hidden_paths: Mapping[Layer, str], predictors: Mapping[Layer, torch.nn.Module],
                               out_paths: Mapping[Layer, str], *, batch_size: int, device: torch.device,
                               metadata: Mapping) -> None:
    """The features of :func:`extract_probe_features` from the probe windows' stored states
    (``probes.shared_states``: one LM pass for every predictor), bit for bit the same values."""
    for layer, predictor in predictors.items():
        with contextlib.ExitStack() as stack:
            n_windows, _, d_model = tensor_shape(hidden_paths[layer], "hidden")
            writer = _probe_feature_writers(stack, {layer: out_paths[layer]}, n_windows, d_model, metadata)[layer]
            for stored in hidden_batches(hidden_paths[layer], batch_size):
                writer.write(_probe_features(predictor, stored.to(device)))


def window_tokens(windows_path: str) -> np.ndarray:
    """The token ids of a windows Parquet file: [n_windows, T] int64."""
    return tokens_array(pd.read_parquet(windows_path, columns=["tokens"]))
