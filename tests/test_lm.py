"""Residual-stream capture and surprisal on a tiny random GPT-NeoX loaded through from_pretrained."""
import pytest
import torch

from pndecomp import adapters, lm, model_files


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    source = model_files.ModelSource(str(tiny_model_dir))
    return lm.load_model(source), lm.load_tokenizer(source)


def test_capture_is_block_output_before_final_norm(tiny):
    model, _ = tiny
    ids = torch.randint(0, model.config.vocab_size, (2, 10))
    n = model.config.num_hidden_layers
    captured = lm.ResidualCapture(model, ["embed", 0, n - 1]).run(ids)
    reference = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding output and hidden_states[ℓ+1] the output of block ℓ ...
    torch.testing.assert_close(captured["embed"], reference[0])
    torch.testing.assert_close(captured[0], reference[1])
    # ... except the last entry, to which HF applies the final norm: ours must not have it.
    assert not torch.allclose(captured[n - 1], reference[n])
    torch.testing.assert_close(model.gpt_neox.final_layer_norm(captured[n - 1]), reference[n])


def test_early_exit_skips_later_blocks(tiny):
    model, _ = tiny
    calls = []
    handle = model.gpt_neox.layers[2].register_forward_hook(lambda *args: calls.append(1))
    try:
        lm.ResidualCapture(model, [0, 1]).run(torch.zeros((1, 4), dtype=torch.long))
        assert calls == []
        lm.ResidualCapture(model, [0, 1]).run(torch.zeros((1, 4), dtype=torch.long), logits=True)
        assert calls == [1]
    finally:
        handle.remove()


def test_surprisal_equals_hf_loss(tiny):
    model, _ = tiny
    ids = torch.randint(0, model.config.vocab_size, (3, 12))
    _, logits = lm.ResidualCapture(model, [1]).run(ids, logits=True)
    values = lm.surprisal(logits, ids)
    assert values.shape == (3, 11)
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    torch.testing.assert_close(values.mean(), loss)


def test_surprisal_of_a_bf16_model_comes_from_a_float32_norm_and_head(tiny_model_dir):
    """In a bfloat16 LM the final norm and LM head run in float32 on the bf16 last-block state; the
    all-bf16 logits would give other surprisal."""
    import copy

    model = lm.load_model(model_files.ModelSource(str(tiny_model_dir)), dtype=torch.bfloat16)
    with torch.no_grad():  # logits of magnitude ~10, as in a trained LM, where bf16 rounding shows
        model.get_output_embeddings().weight.mul_(20)
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(4))
    last_block = model.config.num_hidden_layers - 1
    hidden, logits = lm.ResidualCapture(model, [last_block]).run(ids, logits=True)
    assert hidden[last_block].dtype == torch.bfloat16 and logits.dtype == torch.float32
    values = lm.surprisal(logits, ids)

    float32 = copy.deepcopy(model).float()
    with torch.no_grad():
        reference = float32.get_output_embeddings()(float32.gpt_neox.final_layer_norm(hidden[last_block].float()))
    torch.testing.assert_close(values, lm.surprisal(reference, ids), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        all_bf16 = lm.surprisal(model(ids).logits, ids)
    assert (values - all_bf16).abs().max() > 1e-2


def test_config_helpers(tiny):
    model, _ = tiny
    assert adapters.n_blocks(model.config) == 4
    assert adapters.attention_width(model.config) == 32
    assert adapters.context_length(model.config) == 256
    assert len(adapters.block_modules(model)) == 4


def test_resolve_source_gguf_and_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        model_files.resolve_source({"id": str(tmp_path / "missing.gguf")})
    source = model_files.resolve_source({"id": "EleutherAI/pythia-410m-deduped", "revision": "step143000"})
    assert source.revision == "step143000" and source.kwargs() == {"trust_remote_code": False}
    with pytest.warns(UserWarning, match="trust_remote_code"):
        model_files.resolve_source({"id": "some/model", "trust_remote_code": True})


@pytest.mark.slow
def test_embedded_smollm2_scores_its_corpus_far_below_chance(tmp_path):
    """The real embedded model: mean surprisal on embedded-corpus text is far below ln(vocab)."""
    import math

    from pndecomp import corpus
    from pndecomp.embedded_corpus import build_embedded_corpus

    source = model_files.resolve_source({"id": "embedded"})
    model, tokenizer = lm.load_model(source), lm.load_tokenizer(source)
    jsonl, manifest = tmp_path / "docs.jsonl", tmp_path / "manifest.tsv"
    build_embedded_corpus(jsonl, manifest, max_files_per_domain=3)
    documents = list(corpus.iter_documents({"source": "files", "on_bad_record": "error", "max_documents": None,
                                            "files": {"paths": [str(jsonl)], "text_field": "text",
                                                      "label_field": "meta.pile_set_name", "id_field": "meta.doc_id",
                                                      "group_field": "meta.group"}}))
    windows = []
    for doc in documents[:40]:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= 64:
            windows.append(ids[:64])
        if len(windows) == 8:
            break
    ids = torch.tensor(windows)
    _, logits = lm.ResidualCapture(model, [0]).run(ids, logits=True)
    mean = lm.surprisal(logits, ids).mean().item()
    assert mean < 0.5 * math.log(len(tokenizer)), mean


def test_random_init_keeps_the_shape_and_draws_fresh_seeded_weights(tiny_model_dir):
    """model.random_init: the same config, dtype and outputs' shape, other weights, the same for the same seed."""
    import torch

    model = lm.load_model(model_files.ModelSource(str(tiny_model_dir)))
    # (the tiny model itself was drawn with seed 0)
    first, again, other = (lm.reinitialised(model, seed) for seed in (5, 5, 6))
    assert first.config.to_dict() == model.config.to_dict() and first.dtype == model.dtype
    weights = {name: dict(m.named_parameters()) for name, m in
               {"trained": model, "first": first, "again": again, "other": other}.items()}
    for name, value in weights["first"].items():
        torch.testing.assert_close(value, weights["again"][name])
    assert any(not torch.equal(value, weights["trained"][name]) for name, value in weights["first"].items())
    assert any(not torch.equal(value, weights["other"][name]) for name, value in weights["first"].items())
    ids = torch.tensor([[1, 2, 3, 4]])
    assert first(ids).logits.shape == model(ids).logits.shape
    assert not first.training and not any(p.requires_grad for p in first.parameters())


def _tiny_llama():
    import transformers

    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])
def test_final_is_hf_last_hidden_state_and_stops_before_the_lm_head(family, tiny):
    """'final' = the last block's output after the final norm = HF's hidden_states[-1]; without logits the
    pass runs the final norm and stops before the LM head, and gives the same states as with logits. With
    logits the pass stops there too, and the float32 head (here the model's own) runs on the norm's input."""
    model = tiny[0] if family == "gpt_neox" else _tiny_llama()
    assert model.config.model_type == family and model.dtype == torch.float32
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    reference = model(ids, output_hidden_states=True).hidden_states
    head_calls, norm_calls = [], []
    handles = [model.get_output_embeddings().register_forward_hook(lambda *args: head_calls.append(1)),
               adapters.final_norm(model).register_forward_hook(lambda *args: norm_calls.append(1))]
    try:
        capture = lm.ResidualCapture(model, [0, "final"])
        without_logits = capture.run(ids)
        assert (head_calls, norm_calls) == ([], [1])
        with_logits, logits = capture.run(ids, logits=True)
        assert (head_calls, norm_calls) == ([1], [1, 1, 1])  # the model's pass, then the float32 head's
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(without_logits["final"], reference[-1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(without_logits[0], reference[1], atol=1e-5, rtol=1e-5)
    for layer in (0, "final"):
        torch.testing.assert_close(with_logits[layer], without_logits[layer], atol=0, rtol=0)
    torch.testing.assert_close(logits, model(ids).logits, atol=0, rtol=0)
    # ... and it differs from the last block's own output (before the norm), which is layer n - 1.
    last = lm.ResidualCapture(model, [adapters.n_blocks(model.config) - 1]).run(ids)
    assert not torch.allclose(last[adapters.n_blocks(model.config) - 1], without_logits["final"])


def test_parse_layer_knows_every_layer_kind():
    assert [model_files.parse_layer(value) for value in (0, "7", "embed", "final")] == [0, 7, "embed", "final"]
    with pytest.raises(ValueError):
        model_files.parse_layer("last")
