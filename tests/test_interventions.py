"""Patching and steering on tiny random models: the fast path equals the full forward, an
identity patch and α = 0 change nothing exactly, a patch leaves every layer below it alone, hooks never
outlive their ``with``, and the intervals are the document bootstrap."""
import numpy as np
import pytest
import torch
import transformers
from test_adapters import FAMILIES, SMALL

from pndecomp import adapters, bootstrap, lm, model_files, patch_kinds, patching, steering
from pndecomp.predictor import CausalPredictor
from pndecomp.predictor_kinds import AttentionConfig

T, FROM = 16, 5


def _random_model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def llama():
    return _random_model(transformers.LlamaConfig(**dict(SMALL, num_hidden_layers=4)))


@pytest.fixture(scope="module")
def neox(tiny_model_dir):
    return lm.load_model(model_files.ModelSource(str(tiny_model_dir)))


@pytest.fixture(scope="module", params=["llama", "neox"])
def model(request):
    return request.getfixturevalue(request.param)


def _tokens(model, n=6, length=T, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, model.config.vocab_size, (n, length), generator=generator)


def _predictor(d_model) -> CausalPredictor:
    torch.manual_seed(1)
    return CausalPredictor(AttentionConfig(d_model=d_model, n_heads=2, d_head=8)).eval().requires_grad_(False)


def _hidden(model, ids, layer) -> torch.Tensor:
    return lm.ResidualCapture(model, [layer]).run(ids)[layer]


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_logits_from_layer_equals_the_full_forward_for_every_family(model_type):
    model = _random_model(FAMILIES[model_type][0]())
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    full = model(input_ids=ids).logits.float()
    layers = [model_files.EMBED, *range(adapters.n_blocks(model.config))]
    hidden = lm.ResidualCapture(model, layers).run(ids)
    for layer in layers:
        torch.testing.assert_close(lm.logits_from_layer(model, layer, hidden[layer], ids), full,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lm.logits_from_layer(model, layer, hidden[layer], ids, first_position=4),
                                   full[:, 3:], rtol=1e-5, atol=1e-5)
    assert all(a is b for a, b in zip(adapters.block_modules(model), model.get_submodule(
        adapters.adapter_for(model_type).blocks)))


def test_fast_path_equals_the_hook_path_with_a_patch(model):
    ids = _tokens(model)
    layer = 1
    clean = _hidden(model, ids, layer)
    mean = clean.mean(dim=(0, 1))
    patch = lambda h: patching.apply_patch("mean", h, h, h, mean, FROM)  # noqa: E731
    with lm.patched_block_output(model, layer, patch):
        hooked = model(input_ids=ids).logits.float()
    fast = lm.logits_from_layer(model, layer, patch(clean), ids)
    torch.testing.assert_close(fast, hooked, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fast[:, FROM - 1:], model(input_ids=ids).logits[:, FROM - 1:], atol=1e-3)
    torch.testing.assert_close(fast[:, :FROM - 1], model(input_ids=ids).logits[:, :FROM - 1], rtol=1e-5, atol=1e-5)


def test_patching_leaves_every_layer_below_unchanged(model):
    ids = _tokens(model)
    n = adapters.n_blocks(model.config)
    layers = [model_files.EMBED, *range(n)]
    clean = lm.ResidualCapture(model, layers).run(ids)
    layer = 2
    replacement = torch.zeros_like(clean[layer])
    with lm.patched_block_output(model, layer, lambda h: replacement):
        patched = lm.ResidualCapture(model, layers).run(ids)  # its hooks run after the patch's
    for below in [model_files.EMBED, *range(layer)]:
        assert torch.equal(patched[below], clean[below])
    assert torch.equal(patched[layer], replacement)
    assert not torch.allclose(patched[layer + 1], clean[layer + 1])


def test_hooks_and_blocks_are_restored_when_the_forward_raises(model):
    ids = _tokens(model, n=2)
    blocks = adapters.block_modules(model)
    originals = list(blocks)

    def broken(_h):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with lm.patched_block_output(model, 1, broken):
            model(input_ids=ids)
    with pytest.raises(KeyError):
        with steering.steer(model, 1, torch.zeros(model.config.hidden_size), 1.0):
            raise KeyError("inside the with")
    assert all(not block._forward_hooks for block in blocks)
    with pytest.raises(RuntimeError):  # the stand-in's output has the wrong width
        lm.logits_from_layer(model, 1, torch.zeros(2, ids.shape[1], 3), ids)
    assert all(a is b for a, b in zip(blocks, originals))
    assert not adapters.final_norm(model)._forward_hooks
    with pytest.raises(ValueError, match="final"):
        lm.logits_from_layer(model, model_files.FINAL, torch.zeros(2, ids.shape[1], model.config.hidden_size))
    with pytest.raises(ValueError, match="not a block"):
        lm.patched_block_output(model, 99, lambda h: h).__enter__()


def test_identity_patch_changes_nothing_exactly_and_the_others_change_the_loss(model):
    ids = _tokens(model, n=6)
    layer = 1
    hidden = _hidden(model, ids, layer).to(torch.float16).numpy()  # as cached
    predictor = _predictor(model.config.hidden_size)
    mean = hidden.astype(np.float32).mean(axis=(0, 1))
    for recompute in (False, True):
        scores = patching.patching_scores(model, layer, ids.numpy(), hidden, predictor, mean, from_position=FROM,
                                    batch_size=4, recompute_hhat=recompute)
        assert scores.delta_ce["identity"].shape == (6, T - FROM) and list(scores.positions) == list(range(FROM, T))
        assert (scores.delta_ce["identity"] == 0.0).all() and (scores.kl["identity"] == 0.0).all()
        for kind in ("mean", "hhat", "hhat_plus_shuffled_r", "zero_r_norm_matched"):
            assert np.abs(scores.delta_ce[kind]).mean() > 1e-3, kind
            assert scores.kl[kind].mean() > 1e-4 and (scores.kl[kind] > -1e-6).all(), kind
    table = patching.patching_table(scores, documents=["a", "a", "b", "c", "c", "d"], layer=layer, n_resamples=50)
    pooled = table[(table.scope == "pooled") & (table.kind == "identity")]
    assert len(pooled) == 2 and (pooled[["mean", "low", "high"]] == 0).all().all()
    assert set(table.position.dropna()) == set(range(FROM, T))


def test_patch_kinds():
    generator = torch.Generator().manual_seed(0)
    h, hhat, r_other = (torch.randn(3, 10, 8, generator=generator) for _ in range(3))
    mean = torch.randn(8, generator=generator)
    for kind in patch_kinds.PATCHES:
        patched = patching.apply_patch(kind, h, hhat, r_other, mean, from_position=4)
        assert torch.equal(patched[:, :3], h[:, :3]), kind
    at = slice(3, None)
    assert torch.equal(patching.apply_patch("identity", h, hhat, r_other, mean, 4), h)
    assert torch.equal(patching.apply_patch("hhat", h, hhat, r_other, mean, 4)[:, at], hhat[:, at])
    assert torch.equal(patching.apply_patch("hhat_plus_shuffled_r", h, hhat, r_other, mean, 4)[:, at],
                       hhat[:, at] + r_other[:, at])
    assert torch.equal(patching.apply_patch("mean", h, hhat, r_other, mean, 4)[:, at], mean.expand(3, 7, 8))
    matched = patching.apply_patch("zero_r_norm_matched", h, hhat, r_other, mean, 4)[:, at]
    torch.testing.assert_close(matched.norm(dim=-1), h[:, at].norm(dim=-1))
    torch.testing.assert_close(torch.nn.functional.cosine_similarity(matched, hhat[:, at], dim=-1),
                               torch.ones(3, 7))
    with pytest.raises(ValueError, match="known patches"):
        patching.apply_patch("nope", h, hhat, r_other, mean, 4)


def test_aligned_hhat_and_rollout():
    predictor = _predictor(8)
    h = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(0))
    hhat = patching.aligned_hhat(predictor, h)
    assert torch.equal(hhat[:, 0], h[:, 0])
    torch.testing.assert_close(hhat[:, 6], predictor(h[:, :6])[:, -1])  # ĥ_7 = f(h_1..h_6)
    r_other = torch.zeros_like(h)
    rolled = patching.rollout_patch("hhat", h, predictor, r_other, torch.zeros(8), from_position=4)
    torch.testing.assert_close(rolled[:, 3], hhat[:, 3])  # the first patched position sees a clean past
    torch.testing.assert_close(rolled[:, 4], predictor(rolled[:, :4])[:, -1])  # later ones see the patches
    assert not torch.allclose(rolled[:, 4], hhat[:, 4])
    assert torch.equal(patching.rollout_patch("identity", h, predictor, r_other, torch.zeros(8), 4), h)


def test_derangement_has_no_fixed_points():
    for n in range(2, 40):
        for seed in range(3):
            partner = patching.derangement(n, seed)
            assert sorted(partner) == list(range(n)) and not np.any(partner == np.arange(n))
    assert np.array_equal(patching.derangement(50, 7), patching.derangement(50, 7))
    with pytest.raises(ValueError):
        patching.derangement(1, 0)


def test_pooled_and_per_position_intervals_match_a_direct_document_bootstrap():
    rng = np.random.default_rng(0)
    documents = np.repeat([f"doc{i}" for i in range(15)], rng.integers(1, 4, size=15))
    values = rng.normal(size=(len(documents), 5)) + rng.normal(size=15)[bootstrap.groups_of(documents)[0]][:, None]
    frame = bootstrap.mean_with_intervals(values, documents, n_resamples=300, seed=2)
    group, n_groups = bootstrap.groups_of(documents)
    direct_pooled, direct_position = [], []
    for counts in bootstrap.resample_counts(n_groups, 300, seed=2):
        rows = bootstrap.resample_rows(group, counts)
        direct_pooled.append(values[rows].mean())
        direct_position.append(values[rows].mean(axis=0))
    pooled = frame[frame.scope == "pooled"].iloc[0]
    assert pooled["mean"] == pytest.approx(values.mean())
    assert (pooled["low"], pooled["high"]) == pytest.approx(tuple(np.percentile(direct_pooled, [2.5, 97.5])))
    per_position = frame[frame.scope == "position"]
    np.testing.assert_allclose(per_position["low"], np.percentile(direct_position, 2.5, axis=0))
    np.testing.assert_allclose(per_position["high"], np.percentile(direct_position, 97.5, axis=0))
    assert list(per_position["position"]) == [1, 2, 3, 4, 5] and pooled["n_documents"] == 15


def test_domain_directions():
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    directions = steering.domain_directions(features, ["a", "a", "b"])
    np.testing.assert_allclose(directions["a"], [2.0, 0.0] - features.mean(axis=0))
    np.testing.assert_allclose(directions["b"], [0.0, 2.0] - features.mean(axis=0))
    np.testing.assert_allclose(2 * directions["a"] + directions["b"], 0.0, atol=1e-12)  # count-weighted


def test_steering_with_alpha_zero_changes_nothing(model):
    ids = _tokens(model, n=2)
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    clean = model(input_ids=ids).logits
    with steering.steer(model, 1, direction, 0.0):
        assert torch.equal(model(input_ids=ids).logits, clean)
    with steering.steer(model, 1, direction, 1.0):
        assert not torch.allclose(model(input_ids=ids).logits, clean)
    h = _hidden(model, ids, 1)
    assert torch.equal(steering.add_direction(h, direction, 0.0), h)


def test_steering_scores(model):
    layer, n = 1, 12
    ids = _tokens(model, n=n, seed=3)
    labels = np.array(["x", "y", "z"] * 4)
    hidden = _hidden(model, ids, layer)
    # Make the domains readable from h_T at the steered layer.
    offsets = {"x": 0.0, "y": 3.0, "z": -3.0}
    hidden[:, -1, 0] += torch.tensor([offsets[label] for label in labels])
    hidden = hidden.numpy()
    probe_here = steering.fit_domain_probe(hidden[:, -1], labels)
    probe_above = steering.fit_domain_probe(_hidden(model, ids, layer + 1)[:, -1].numpy(), labels)
    directions = {"hhat": steering.domain_directions(hidden[:, -1], labels),
                  "r": steering.domain_directions(hidden[:, -2], labels)}
    scale = steering.typical_norm(hidden)
    assert scale > 0
    table = steering.steering_scores(model, layer, ids.numpy(), hidden, labels, [f"d{i // 2}" for i in range(n)],
                               directions, scale=scale, alphas=(0.0, 4.0),
                               probes={layer: probe_here, layer + 1: probe_above}, n_resamples=50, batch_size=5)
    assert len(table) == 2 * (3 + 1) * 2 * 4  # sources × (domains + pooled) × alphas × metrics
    pooled, table = table[table.scope == "pooled"], table[table.scope == "domain"]
    assert set(pooled.domain) == {steering.POOLED}
    # Balanced domains (4 windows each): a window's pooled value averages the 2 other domains (or its own
    # one), so the pooled mean is the mean of the per-domain means, over all 12 windows.
    keys = ["source", "alpha", "metric", "probe_layer"]
    by_domain = table.groupby(keys, dropna=False)["mean"].mean().rename("by_domain").reset_index()
    merged = pooled.merge(by_domain, on=keys, validate="one_to_one")
    assert len(merged) == 2 * 2 * 4
    np.testing.assert_allclose(merged["mean"], merged["by_domain"], rtol=1e-12)
    assert set(pooled.n_windows) == {n}
    assert (pooled["low"] <= pooled["mean"]).all() and (pooled["mean"] <= pooled["high"]).all()
    assert set(table.metric) == {"delta_ce_other", "delta_logprob_domain", "p_domain"}
    zero = table[table.alpha == 0.0]
    deltas = zero[zero.metric != "p_domain"]
    assert (deltas[["mean", "low", "high"]] == 0.0).all().all()
    assert set(table[table.metric == "p_domain"].n_windows) == {8}
    assert set(table[table.metric == "delta_logprob_domain"].n_windows) == {4}
    strong = table[(table.alpha == 4.0) & (table.metric != "p_domain")]
    assert (strong["mean"] != 0).all() and (strong["low"] <= strong["mean"]).all()
    here = table[(table.metric == "p_domain") & (table.probe_layer == layer) & (table.source == "hhat")]
    p = here.pivot(index="domain", columns="alpha", values="mean")
    assert (p[4.0] > p[0.0]).all()  # steering along a domain's direction raises the probe's p(domain)
    with pytest.raises(ValueError, match="probe layer"):
        steering.steering_scores(model, layer, ids.numpy(), hidden, labels, labels, directions, scale=scale,
                           probes={0: probe_here})


def test_the_torch_free_patch_kinds_clamp_at_float32s_smallest_normal():
    """patch_kinds imports no torch, so it spells torch.finfo(torch.float32).tiny itself."""
    assert patch_kinds.FLOAT32_TINY == torch.finfo(torch.float32).tiny
