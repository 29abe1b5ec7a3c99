"""Residual-stream capture and surprisal on a tiny random GPT-NeoX loaded through from_pretrained."""
import pytest
import torch

from pndecomp import lm


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    source = lm.ModelSource(str(tiny_model_dir))
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


def test_config_helpers(tiny):
    model, _ = tiny
    assert lm.n_blocks(model.config) == 4
    assert lm.attention_width(model.config) == 32
    assert lm.context_length(model.config) == 256
    assert len(lm.block_modules(model)) == 4


def test_resolve_source_gguf_and_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        lm.resolve_source({"id": str(tmp_path / "missing.gguf")})
    source = lm.resolve_source({"id": "EleutherAI/pythia-410m-deduped", "revision": "step143000"})
    assert source.kwargs() == {"trust_remote_code": False, "revision": "step143000"}
    with pytest.warns(UserWarning, match="trust_remote_code"):
        lm.resolve_source({"id": "some/model", "trust_remote_code": True})


@pytest.mark.slow
def test_embedded_smollm2_scores_its_corpus_far_below_chance(tmp_path):
    """The real embedded model: mean surprisal on embedded-corpus text is far below ln(vocab)."""
    import math

    from pndecomp import corpus
    from pndecomp.embedded_corpus import build_embedded_corpus

    source = lm.resolve_source({"id": "embedded"})
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
