"""Where each model family keeps its transformer blocks, final norm and token embedding.

One table, :data:`ADAPTERS`, maps a Hugging Face ``model_type`` to an :class:`Adapter`: the dotted
attribute paths (from the ``*ForCausalLM`` model) of the block list, the final norm and the
token-embedding module, and the config keys that give the block count, d_model, the attention
width and the context length. To support a new family, add one entry here: a family whose layout
matches an existing one reuses its instance.

The functions below read configs in two forms: a transformers config object, or the plain dict
of a ``config.json`` (read when Snakemake builds the DAG, without importing transformers).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the config-reading functions serve the DAG, which imports no torch
    from torch import nn

ADAPTERS_FILE = "src/pndecomp/adapters.py"


class UnknownModelType(ValueError):
    """A ``model_type`` with no entry in :data:`ADAPTERS`."""


@dataclass(frozen=True)
class Adapter:
    """How to find one family's parts: module paths from the ``*ForCausalLM`` model, config keys."""

    blocks: str
    final_norm: str
    embedding: str
    #: Path from the config to the LM's own config (multimodal models), or None when it is the config.
    text_config: str | None = None
    n_blocks_key: str = "num_hidden_layers"
    d_model_key: str = "hidden_size"
    n_heads_key: str = "num_attention_heads"
    #: None where the family ignores ``head_dim`` (d_head is always d_model / n_heads).
    head_dim_key: str | None = "head_dim"
    context_key: str | None = "max_position_embeddings"


DECODER = Adapter("model.layers", "model.norm", "model.embed_tokens")
GPT_NEOX = Adapter("gpt_neox.layers", "gpt_neox.final_layer_norm", "gpt_neox.embed_in", head_dim_key=None)
GPT2 = Adapter("transformer.h", "transformer.ln_f", "transformer.wte", n_blocks_key="n_layer",
               d_model_key="n_embd", n_heads_key="n_head", head_dim_key=None, context_key="n_positions")
# Gemma3ForConditionalGeneration (what AutoModelForCausalLM builds for a multimodal gemma3 config):
# the language model sits under model.language_model and its config under text_config.
GEMMA3_MULTIMODAL = Adapter("model.language_model.layers", "model.language_model.norm",
                            "model.language_model.embed_tokens", text_config="text_config")

ADAPTERS: dict[str, Adapter] = {
    "llama": DECODER,
    "mistral": DECODER,
    "qwen2": DECODER,
    "qwen3": DECODER,
    "gemma": DECODER,
    "gemma2": DECODER,
    "gemma3_text": DECODER,
    "gemma3": GEMMA3_MULTIMODAL,
    "phi3": DECODER,
    "olmo2": DECODER,
    "gpt_neox": GPT_NEOX,
    "gpt2": GPT2,
}

#: llama.cpp's ``general.architecture`` in a GGUF header -> the HF model_type transformers loads it as.
#: (llama.cpp also writes Mistral and SmolLM models as ``llama``; their layouts are the same.)
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",  # a Gemma 3 GGUF holds the text backbone only
    "phi3": "phi3",
    "olmo2": "olmo2",
    "gptneox": "gpt_neox",
    "gpt2": "gpt2",
}


def adapter_for(model_type: str | None) -> Adapter:
    try:
        return ADAPTERS[model_type]
    except KeyError:
        raise UnknownModelType(
            f"model_type {model_type!r} has no adapter; known model types: {', '.join(sorted(ADAPTERS))}. "
            f"To support it, add an entry to ADAPTERS in {ADAPTERS_FILE} (the module paths of its blocks, "
            "final norm and token embedding)") from None


def model_type_for_gguf(architecture: str) -> str:
    try:
        return GGUF_ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownModelType(
            f"GGUF architecture {architecture!r} has no adapter; known GGUF architectures: "
            f"{', '.join(sorted(GGUF_ARCHITECTURES))}. To support it, add it to GGUF_ARCHITECTURES "
            f"(and its model_type to ADAPTERS) in {ADAPTERS_FILE}") from None


def _get(config, key: str, default=None):
    """One key of a config object or of a config.json dict."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _require(config, key: str) -> int:
    value = _get(config, key)
    if value is None:
        raise ValueError(f"the {_get(config, 'model_type')!r} config has no {key!r}")
    return int(value)


def model_type(config) -> str | None:
    return _get(config, "model_type")


def _resolve(config) -> tuple[Adapter, object]:
    """The family's adapter and the config of its language model (the config itself, or a part)."""
    adapter = adapter_for(model_type(config))
    text = config
    if adapter.text_config:
        for key in adapter.text_config.split("."):
            text = _get(text, key)
            if text is None:
                raise ValueError(f"the {model_type(config)!r} config has no {adapter.text_config!r}: cannot reach "
                                 "the language model's config")
    return adapter, text


def n_blocks(config) -> int:
    adapter, text = _resolve(config)
    return _require(text, adapter.n_blocks_key)


def d_model(config) -> int:
    adapter, text = _resolve(config)
    return _require(text, adapter.d_model_key)


def context_length(config) -> int | None:
    adapter, text = _resolve(config)
    value = _get(text, adapter.context_key) if adapter.context_key else None
    return int(value) if value else None


def attention_width(config) -> int:
    """n_heads × d_head of one attention layer (the predictor's default is 4× this)."""
    adapter, text = _resolve(config)
    n_heads = _require(text, adapter.n_heads_key)
    head_dim = _get(text, adapter.head_dim_key) if adapter.head_dim_key else None
    return n_heads * (int(head_dim) if head_dim else _require(text, adapter.d_model_key) // n_heads)


def _module(model: nn.Module, path: str) -> nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"{type(model).__name__} has no module {path!r} (model_type "
                         f"{model_type(model.config)!r}): fix its entry in {ADAPTERS_FILE}") from error


def block_modules(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks, in order."""
    return _module(model, adapter_for(model_type(model.config)).blocks)


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block, before the LM head."""
    return _module(model, adapter_for(model_type(model.config)).final_norm)


def embedding(model: nn.Module) -> nn.Module:
    """The token-embedding module, whose output is the ``"embed"`` layer.

    For the Gemma families its output includes the sqrt(d_model) scale, so it equals HF's
    ``hidden_states[0]``; for GPT-2 it excludes the learned position embeddings, which
    ``hidden_states[0]`` includes.
    """
    return _module(model, adapter_for(model_type(model.config)).embedding)
