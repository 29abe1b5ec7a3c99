"""The model-adapter table: for every registered model_type, a tiny random model's captured residual
stream matches HF's ``output_hidden_states``, and its shape is read right from config.json and GGUF."""
import json

import pytest
import torch
import transformers
from torch import nn

from pndecomp import adapters, lm, model_files
from pndecomp import config as pnconfig

VOCAB = 100
SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# head_dim 16 with 4 heads: an attention width of 64, twice d_model (as in Gemma and Qwen3 checkpoints).
WIDE = dict(SMALL, head_dim=16)
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                   image_size=28, patch_size=14)

# model_type -> (tiny config, expected attention width)
FAMILIES = {
    "llama": (lambda: transformers.LlamaConfig(**SMALL), 32),
    "mistral": (lambda: transformers.MistralConfig(**SMALL), 32),
    "qwen2": (lambda: transformers.Qwen2Config(**SMALL), 32),
    "qwen3": (lambda: transformers.Qwen3Config(**WIDE), 64),
    "gemma": (lambda: transformers.GemmaConfig(**WIDE), 64),
    "gemma2": (lambda: transformers.Gemma2Config(**WIDE), 64),
    "gemma3_text": (lambda: transformers.Gemma3TextConfig(**WIDE), 64),
    "gemma3": (lambda: transformers.Gemma3Config(text_config=WIDE, vision_config=TINY_VISION, mm_tokens_per_image=4),
               64),
    "phi3": (lambda: transformers.Phi3Config(**SMALL), 32),
    "olmo2": (lambda: transformers.Olmo2Config(**SMALL), 32),
    "gpt_neox": (lambda: transformers.GPTNeoXConfig(**SMALL), 32),
    "gpt2": (lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=128,
                                             bos_token_id=1, eos_token_id=2), 32),
}


def test_every_registered_model_type_is_tested():
    assert set(FAMILIES) == set(adapters.ADAPTERS)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    make_config, width = FAMILIES[request.param]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_config(), dtype=torch.float32)
    model.eval().requires_grad_(False)
    assert model.config.model_type == request.param
    return request.param, model, width


def test_adapter_modules(family):
    model_type, model, _ = family
    n = adapters.n_blocks(model.config)
    assert n == 3
    assert len(adapters.block_modules(model)) == n
    assert adapters.embedding(model) is model.get_input_embeddings()
    assert isinstance(adapters.final_norm(model), nn.Module)


def test_capture_matches_hf_hidden_states(family):
    model_type, model, _ = family
    n = adapters.n_blocks(model.config)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    captured = lm.ResidualCapture(model, ["embed", *range(n)]).run(ids)
    reference = model(ids, output_hidden_states=True).hidden_states
    assert len(reference) == n + 1

    def close(actual, expected):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)

    # hidden_states[ℓ+1] is the output of block ℓ ...
    for layer in range(n - 1):
        close(captured[layer], reference[layer + 1])
    # ... except the last entry, to which HF applies the final norm: the capture is before it.
    assert not torch.allclose(captured[n - 1], reference[n])
    close(adapters.final_norm(model)(captured[n - 1]), reference[n])
    # 'embed' is the token-embedding module's output (Gemma's sqrt(d_model) scale is inside that module).
    if model_type == "gpt2":
        # GPT-2 adds learned position embeddings after the token embedding: hidden_states[0] has them.
        close(captured["embed"], model.transformer.wte(ids))
        close(reference[0], captured["embed"] + model.transformer.wpe(torch.arange(ids.shape[1])))
    else:
        close(captured["embed"], reference[0])


def _query_width(model: nn.Module) -> int:
    """The attention's query width as built, read off the first block's projection weights."""
    block = adapters.block_modules(model)[0]
    for name, module in block.named_modules():
        if name.endswith("q_proj"):
            return module.out_features
        if name.endswith("qkv_proj"):  # Phi-3: q, k and v fused, k and v with the kv heads
            config = model.config
            kv_width = 2 * config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
            return module.out_features - kv_width
        if name.endswith("query_key_value"):  # GPT-NeoX: q, k, v fused, as many kv heads as heads
            return module.out_features // 3
        if name.endswith("c_attn"):  # GPT-2: a Conv1D
            return module.nf // 3
    raise AssertionError(f"no query projection in {type(block).__name__}")


def test_attention_width_is_heads_times_head_dim(family):
    _, model, width = family
    assert adapters.attention_width(model.config) == width == _query_width(model)


def test_read_model_shape_from_saved_directory(family, tmp_path):
    model_type, model, width = family
    model.save_pretrained(tmp_path)
    shape = model_files.read_model_shape(model_files.ModelSource(str(tmp_path)))
    assert shape == model_files.ModelShape(n_blocks=3, context_length=128, d_model=32, attention_width=width,
                                  model_type=model_type)
    assert shape == model_files.shape_from_config(model.config)


def test_unknown_model_type_fails_naming_it_and_the_adapter_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not_a_model", "hidden_size": 32}))
    with pytest.raises(adapters.UnknownModelType, match=r"'not_a_model'.*llama.*src/pndecomp/adapters\.py"):
        model_files.read_model_shape(model_files.ModelSource(str(tmp_path)))
    with pytest.raises(pnconfig.ConfigError, match=r"model\.id.*'not_a_model'.*adapters\.py"):
        pnconfig.model_shape({"model": {"id": str(tmp_path)}})


def _write_gguf(path, arch: str, **fields) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    for key, value in fields.items():
        writer.add_uint32(f"{arch}.{key}", value)
    # Arrays like a tokenizer's, which the header reader skips.
    writer.add_token_list(["<s>", "a", "bc"])
    writer.add_token_scores([0.0, -1.0, -2.0])
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_reader_scalars(path) -> dict:
    """The non-array fields as the gguf package reads them (slow on a real model's header)."""
    import gguf

    return {key: field.contents() for key, field in gguf.GGUFReader(str(path)).fields.items()
            if not key.startswith("GGUF.") and field.types[0] != gguf.GGUFValueType.ARRAY}


def test_gguf_shape_reads_head_count_and_key_length(tmp_path):
    header = {"block_count": 2, "context_length": 64, "embedding_length": 32, "attention.head_count": 4}
    _write_gguf(tmp_path / "wide.gguf", "qwen3", **header, **{"attention.key_length": 16})
    _write_gguf(tmp_path / "plain.gguf", "gemma3", **header)
    _write_gguf(tmp_path / "odd.gguf", "rwkv6", **header)
    shape = model_files.read_model_shape(model_files.ModelSource(str(tmp_path), "wide.gguf"))
    assert shape == model_files.ModelShape(2, 64, 32, 64, "qwen3")
    assert model_files.gguf_metadata(tmp_path / "wide.gguf") == _gguf_reader_scalars(tmp_path / "wide.gguf")
    # Without key_length, d_head is d_model / n_heads; a Gemma 3 GGUF holds the text model alone.
    assert model_files.read_model_shape(model_files.ModelSource(str(tmp_path), "plain.gguf")) == model_files.ModelShape(
        2, 64, 32, 32, "gemma3_text")
    with pytest.raises(adapters.UnknownModelType, match=r"'rwkv6'.*adapters\.py"):
        model_files.read_model_shape(model_files.ModelSource(str(tmp_path), "odd.gguf"))


def test_embedded_gguf_shape():
    """SmolLM2-135M: 30 llama blocks, d_model 576, 9 heads × 64."""
    shape = model_files.read_model_shape(model_files.resolve_source({"id": "embedded"}))
    assert (shape.model_type, shape.n_blocks, shape.d_model, shape.attention_width) == ("llama", 30, 576, 576)


@pytest.mark.slow
def test_gguf_metadata_matches_the_gguf_package_on_the_embedded_model():
    source = model_files.resolve_source({"id": "embedded"})
    path = f"{source.path}/{source.gguf_file}"
    assert model_files.gguf_metadata(path) == _gguf_reader_scalars(path)


def test_adapter_for_unknown_lists_the_known_types():
    with pytest.raises(adapters.UnknownModelType, match=r"'mamba'.*gemma3_text.*gpt_neox"):
        adapters.adapter_for("mamba")
    assert issubclass(adapters.UnknownModelType, ValueError)


def test_final_layer_matches_hf_last_hidden_state(family):
    """'final' (a hook on the adapter's final norm) is HF's hidden_states[-1] for every family, with or
    without logits."""
    _, model, _ = family
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    reference = model(ids, output_hidden_states=True).hidden_states[-1]
    capture = lm.ResidualCapture(model, [0, "final"])
    without_logits = capture.run(ids)["final"]
    with_logits = capture.run(ids, logits=True)[0]["final"]
    torch.testing.assert_close(without_logits, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(with_logits, without_logits, atol=0, rtol=0)


def test_float32_head_gives_the_models_own_logits(family):
    """Surprisal's logits (the final norm and LM head run on the final norm's input, plus Gemma 2's
    soft-capping) equal the float32 model's own, bit for bit, for every family."""
    _, model, _ = family
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    _, logits = lm.ResidualCapture(model, [0]).run(ids, logits=True)
    torch.testing.assert_close(logits, model(ids).logits, atol=0, rtol=0)
