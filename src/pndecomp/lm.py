"""Loading the frozen LM and capturing its residual stream (docs/method.md §2).

Layer ``ℓ`` is the output of transformer block ℓ before any final norm (TransformerLens'
``blocks.ℓ.hook_resid_post``); ``"embed"`` is the token-embedding output and ``"final"`` the last
block's output after the final norm (HF's ``hidden_states[-1]``). Hidden states are captured with
forward hooks on the block modules (and on the embedding and final norm), never through
``output_hidden_states``, which is off by one and applies the final norm to its last entry.

:func:`logits_from_layer` runs only the blocks above a layer from given states (the fast path of patching
and steering): blocks 0..ℓ are swapped for stand-ins that return the given block-ℓ output, so the model's
own forward still builds the masks and rotary embeddings; :func:`patched_block_output` is the reference
path, a forward hook on block ℓ in a full forward pass from the tokens.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from . import adapters
from .model_files import EMBED, FINAL, NAMED_LAYERS, Layer, ModelSource, model_directory, weights_file

log = logging.getLogger(__name__)


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_directory(source)), **source.kwargs())


def load_model(source: ModelSource, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """The frozen LM: ``eval()``, gradients off. GGUF weights are dequantized on load.

    Safetensors weights are preferred; a checkpoint that ships only a pickled ``pytorch_model.bin`` (as
    older hub revisions do) is read with ``torch.load(weights_only=True)``, which rebuilds tensors only
    and refuses any other object, so no code in the file runs.
    """
    from transformers import AutoModelForCausalLM

    directory = model_directory(source)
    if source.gguf_file:
        weights = {}
    else:
        path = weights_file(directory)
        log.info("loading the LM's weights from %s", path)
        weights = {"use_safetensors": ".safetensors" in path.name, "weights_only": True}
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype, **weights, **source.kwargs())
    model.eval().requires_grad_(False)
    return model.to(device)


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A model of the same config, dtype and device with fresh random weights (its own initialiser,
    seeded): the untrained control of ``model.random_init``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    fresh = AutoModelForCausalLM.from_config(model.config, dtype=model.dtype)
    return fresh.to(model.device).eval().requires_grad_(False)


def materialize(source: ModelSource, out_dir: str | Path) -> None:
    """Save a GGUF model's weights and config as an ordinary safetensors model directory.

    Dequantizing GGUF takes ~20 s per load; every later stage loads the saved directory in well
    under a second instead. The weights are those transformers dequantized, bit for bit. The
    tokenizer has its own directory (:func:`materialize_tokenizer`): the windows need only it, and
    need not wait for the weights.
    """
    model = load_model(source)
    # transformers refuses to serialise a model it loaded through its GGUF quantizer, although the
    # weights it holds are plain dequantized tensors; detach the quantizer record to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from .storage import atomic_path

    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)


def materialize_tokenizer(source: ModelSource, out_dir: str | Path) -> None:
    """Save a GGUF model's tokenizer as an ordinary tokenizer directory (read in ~0.2 s, not ~5 s)."""
    from .storage import atomic_path

    tokenizer = load_tokenizer(source)
    with atomic_path(out_dir, directory=True) as tmp:
        tokenizer.save_pretrained(tmp)


class _StopForward(Exception):
    """Raised by the deepest hook to end the forward pass early (no later block or norm, no LM head)."""


class Float32Head:
    """The model's final norm and LM head in float32, whatever the LM's dtype: logits for surprisal.

    bfloat16 keeps 8 significant bits: logits of magnitude ~10 are rounded by up to 0.03, and so is
    the surprisal computed from them; float32 copies of the two modules avoid that (a model in float32
    uses its own, so its logits are bit for bit those of its forward).

    Gemma 2 and Gemma 3 (text) soft-cap their logits, c·tanh(logits / c), with c from the config's
    ``final_logit_softcapping``, as HF's forward does; the other families' configs have no such key
    (nor does Gemma3ForConditionalGeneration's top-level config, whose forward does not cap).
    tests/test_adapters.py checks the logits against the model's own for every registered family.
    """

    def __init__(self, model: nn.Module):
        def in_float32(module: nn.Module) -> nn.Module:
            return module if model.dtype == torch.float32 else copy.deepcopy(module).float()

        self.norm = in_float32(adapters.final_norm(model))
        self.head = in_float32(model.get_output_embeddings())
        self.softcap = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, last_block_output: torch.Tensor) -> torch.Tensor:
        """[..., d_model] the input of the final norm -> [..., vocab] float32 logits."""
        logits = self.head(self.norm(last_block_output.float()))
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


_FINAL_NORM_INPUT = "final norm input"  # a capture key that is not a layer name


class ResidualCapture:
    """Capture the residual stream at several layers in one forward pass.

    ``run(input_ids)`` returns ``{layer: hidden [batch, pos, d_model]}``; the pass stops right after
    the deepest requested layer (a block, or the final norm for ``"final"``), never reaching the
    model's LM head. With ``logits=True`` it runs to the final norm and also returns float32 logits
    [batch, pos, vocab], computed from the final norm's input by :class:`Float32Head`.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer]):
        self.model = model
        self.layers = list(layers)
        self.blocks = adapters.block_modules(model)
        self.block_layers = sorted(layer for layer in self.layers if layer not in NAMED_LAYERS)
        self._captured: dict[Layer, torch.Tensor] = {}

    @functools.cached_property
    def float32_head(self) -> Float32Head:
        """Built on first use: only surprisal needs it, and its copies take memory in a bf16 model."""
        return Float32Head(self.model)

    def _hook(self, layer: Layer, is_deepest: bool):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            self._captured[layer] = hidden.detach()
            if is_deepest:
                raise _StopForward
        return hook

    def _final_norm_hook(self, _module, inputs, output):
        self._captured[FINAL] = output.detach()
        self._captured[_FINAL_NORM_INPUT] = inputs[0].detach()
        raise _StopForward

    @torch.no_grad()
    def run(self, input_ids: torch.Tensor, logits: bool = False):
        # Before any hook is registered: a copy of a hooked final norm would carry the hook.
        head = self.float32_head if logits else None
        self._captured = {}
        if logits or FINAL in self.layers:
            deepest = FINAL
        else:
            deepest = self.block_layers[-1] if self.block_layers else EMBED
        handles = [self.blocks[layer].register_forward_hook(self._hook(layer, layer == deepest))
                   for layer in self.block_layers]
        if EMBED in self.layers:
            handles.append(adapters.embedding(self.model).register_forward_hook(
                self._hook(EMBED, deepest == EMBED)))
        if deepest == FINAL:
            handles.append(adapters.final_norm(self.model).register_forward_hook(self._final_norm_hook))
        try:
            self.model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        hidden = {layer: self._captured[layer] for layer in self.layers}
        return (hidden, head(self._captured[_FINAL_NORM_INPUT])) if logits else hidden


def surprisal(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """s_{t+1} = -log p(x_{t+1} | x_{≤t}) in nats for t+1 = 2..T: [batch, T-1] float32, from the float32
    logits of ``ResidualCapture.run(..., logits=True)``.

    One window at a time: a float32 log-softmax of the whole batch's logits would hold two copies of
    [batch, T, vocab] (~760 MB for SmolLM2 at 16 × 128; ~6.6 GB at the paper's 64 × 256).
    """
    return torch.stack([
        -torch.log_softmax(window_logits[:-1].float(), dim=-1).gather(-1, window_ids[1:, None]).squeeze(-1)
        for window_logits, window_ids in zip(logits, input_ids)])


# -------------------------------------------------------------------------------- running the blocks above a layer

def _layer_module(model: nn.Module, layer: Layer) -> nn.Module:
    """The module whose output is ``layer``: block ℓ, or the token embedding for ``"embed"``."""
    if layer == EMBED:
        return adapters.embedding(model)
    if layer == FINAL or isinstance(layer, str):
        raise ValueError(f"interventions act on a block index or {EMBED!r}, not {layer!r} (the final norm's "
                         "output feeds only the LM head: patch the last block instead)")
    blocks = adapters.block_modules(model)
    if not 0 <= int(layer) < len(blocks):
        raise ValueError(f"layer {layer} is not a block of this model (0..{len(blocks) - 1})")
    return blocks[int(layer)]


@contextlib.contextmanager
def patched_block_output(model: nn.Module, layer: Layer,
                         fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the ``with``, block ``layer``'s hidden-state output h [batch, T, d] is replaced by fn(h).

    The block's output structure is kept (a tensor, or a tuple whose first item is the hidden
    state). The hook is removed on leaving, also when the forward pass raises.
    """
    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    handle = _layer_module(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _StandIn(nn.Module):
    """Takes the place of blocks 0..ℓ: ignores its input and returns the block-ℓ output it was given."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, *_args, **_kwargs) -> torch.Tensor:
        return self.hidden


_HEADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _float32_head(model: nn.Module) -> Float32Head:
    """One :class:`~pndecomp.lm.Float32Head` per model (its float32 copies cost memory in a bf16 LM)."""
    if model not in _HEADS:
        _HEADS[model] = Float32Head(model)
    return _HEADS[model]


@torch.no_grad()
def logits_from_layer(model: nn.Module, layer: Layer, hidden: torch.Tensor, input_ids: torch.Tensor | None = None,
                      first_position: int = 1) -> torch.Tensor:
    """The LM's float32 next-token logits [batch, T − first_position + 1, vocab] (positions
    first_position..T) when block ``layer`` outputs ``hidden`` [batch, T, d].

    Only blocks ℓ+1.. run: blocks 0..ℓ are swapped for stand-ins for the duration of the call (and
    restored in ``finally``), so the model's own forward still builds the attention masks and rotary
    embeddings. ``input_ids`` only feed the (discarded) embedding; zeros are used when omitted. For
    ``"embed"`` the embedding's output is replaced and every block runs. The logits come from the
    final norm's input through :class:`~pndecomp.lm.Float32Head`, for the positions asked only (the
    final norm and head act position by position). Hooks on blocks above ℓ still fire.
    """
    module = _layer_module(model, layer)  # validates the layer
    param = next(model.parameters())
    hidden = hidden.to(device=param.device, dtype=param.dtype)
    if input_ids is None:
        input_ids = torch.zeros(hidden.shape[:2], dtype=torch.long, device=param.device)
    captured = {}

    def at_final_norm(_module, inputs, _output):
        captured["final norm input"] = inputs[0]
        raise _StopForward

    handles = [adapters.final_norm(model).register_forward_hook(at_final_norm)]
    blocks, originals = adapters.block_modules(model), []
    try:
        if layer == EMBED:
            handles.append(module.register_forward_hook(lambda *_: hidden))
        else:
            stand_in = _StandIn(hidden)
            for index in range(int(layer) + 1):
                originals.append(blocks[index])
                blocks[index] = stand_in
        try:
            model(input_ids=input_ids.to(param.device), use_cache=False)
        except _StopForward:
            pass
    finally:
        for index, block in enumerate(originals):
            blocks[index] = block
        for handle in handles:
            handle.remove()
    return _float32_head(model)(captured["final norm input"][:, first_position - 1:])
