from dataclasses import replace

import numpy as np
import pytest
import torch

from pndecomp.baselines import lag_features
from pndecomp.predictor import (
    CausalPredictor,
    build_predictor,
    kind_name,
    lag_stack,
    load_predictor,
    parameter_count,
    prediction_loss,
    residuals,
    save_predictor,
)
from pndecomp.predictor_kinds import (
    AttentionConfig,
    MLPConfig,
    TransformerConfig,
    predictor_kind,
    predictor_settings,
)
from pndecomp.storage import load_metadata


@pytest.mark.parametrize("rotary,input_norm", [(False, False), (True, True)])
def test_strictly_causal(rotary, input_norm):
    """Changing h_{t+1..T} must not change ĥ_{≤t+1} (the outputs at positions ≤ t)."""
    torch.manual_seed(0)
    predictor = CausalPredictor(AttentionConfig(d_model=16, n_heads=4, d_head=8, rotary=rotary, input_norm=input_norm))
    hidden = torch.randn(2, 12, 16)
    for t in range(1, 12):
        perturbed = hidden.clone()
        perturbed[:, t:] += torch.randn_like(perturbed[:, t:]) * 10
        before, after = predictor(hidden), predictor(perturbed)
        torch.testing.assert_close(before[:, :t], after[:, :t])
        assert not torch.allclose(before[:, t:], after[:, t:])


def test_loss_and_residuals_against_direct_computation():
    torch.manual_seed(1)
    predictor = CausalPredictor(AttentionConfig(d_model=8, n_heads=2, d_head=4))
    hidden = torch.randn(3, 6, 8)
    predicted = predictor(hidden)[:, :-1]  # row t predicts h_{t+1}
    expected = ((hidden[:, 1:] - predicted) ** 2).sum(-1).mean() / 8
    torch.testing.assert_close(prediction_loss(predictor, hidden), expected)
    torch.testing.assert_close(residuals(predictor, hidden), hidden[:, 1:] - predicted)


def test_save_load_roundtrip(tmp_path):
    predictor = CausalPredictor(AttentionConfig(d_model=8, n_heads=2, d_head=4, rotary=True))
    save_predictor(predictor, tmp_path / "p.safetensors", {"layer": 3})
    loaded = load_predictor(tmp_path / "p.safetensors")
    assert loaded.config == predictor.config
    hidden = torch.randn(1, 5, 8)
    torch.testing.assert_close(loaded(hidden), predictor(hidden))


# ---------------------------------------------------------------- every kind of the registry

SECTION = {"d_head": 4, "n_heads": 2, "width_multiplier": 1, "rotary": False, "input_norm": False,
           "mlp_hidden": None}
KINDS = ["attn1", "attn1_rope", "attn1_local4", "attn2", "mlp_k3", "ridge_ar2"]
D, T = 8, 12


def build(name, seed=0):
    """A predictor of kind ``name`` on d = 8 with random weights (ridge_ar: fitted on random states)."""
    torch.manual_seed(seed)
    settings = predictor_settings(name, SECTION, D, D)
    kind = predictor_kind(name)
    if kind.closed_form:
        return kind.fit_function()(settings, torch.randn(16, T, D)).eval()
    return build_predictor(settings).eval()


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_is_strictly_causal(name):
    """Changing h_{t+1..T} leaves the outputs at rows ≤ t unchanged (row t predicts h_{t+1})."""
    predictor = build(name)
    assert kind_name(predictor) == name
    hidden = torch.randn(2, T, D)
    with torch.no_grad():
        before = predictor(hidden)
        assert before.shape == hidden.shape
        for t in (0, 3, 6, 10):
            perturbed = hidden.clone()
            perturbed[:, t + 1:] += torch.randn_like(perturbed[:, t + 1:]) * 10
            after = predictor(perturbed)
            torch.testing.assert_close(after[:, :t + 1], before[:, :t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(after[:, t + 1:], before[:, t + 1:])


@pytest.mark.parametrize("window", [1, 4])
def test_local_attention_sees_only_the_last_w_positions(window):
    predictor = build(f"attn1_local{window}")
    assert predictor.config.window == window
    hidden = torch.randn(2, T, D)
    with torch.no_grad():
        before = predictor(hidden)
        for t in range(window, T):  # row t (0-based) sees positions t-w+1..t
            too_old = hidden.clone()
            too_old[:, :t - window + 1] += torch.randn_like(too_old[:, :t - window + 1]) * 10
            torch.testing.assert_close(predictor(too_old)[:, t], before[:, t], rtol=0, atol=1e-6)
            oldest_seen = hidden.clone()
            oldest_seen[:, t - window + 1] += 1.0
            assert not torch.allclose(predictor(oldest_seen)[:, t], before[:, t], atol=1e-4)


def test_local_attention_wider_than_the_window_is_attn1():
    local = build("attn1_local64")
    plain = build_predictor(replace(local.config, window=None)).eval()
    plain.load_state_dict(local.state_dict())
    hidden = torch.randn(2, T, D)
    torch.testing.assert_close(local(hidden), plain(hidden))


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_round_trips_through_its_file(tmp_path, name):
    predictor = build(name)
    save_predictor(predictor, tmp_path / "p.safetensors", {"layer": 3})
    assert load_metadata(tmp_path / "p.safetensors")["predictor_kind"] == name
    loaded = load_predictor(tmp_path / "p.safetensors")
    assert type(loaded) is type(predictor) and loaded.config == predictor.config
    hidden = torch.randn(2, T, D)
    assert torch.equal(loaded(hidden), predictor(hidden))


def test_names_with_a_suffix_and_their_settings():
    assert predictor_settings("attn1_local16", SECTION, D, D).window == 16
    assert predictor_settings("attn1_rope", SECTION, D, D).rotary
    assert predictor_settings("mlp_k4", SECTION, D, D) == MLPConfig(d_model=D, k=4, hidden=D)
    assert predictor_settings("mlp_k4", {**SECTION, "mlp_hidden": 5}, D, D).hidden == 5
    assert predictor_settings("ridge_ar4", SECTION, D, D).k == 4
    assert predictor_settings("attn2", SECTION, D, 16) == TransformerConfig(d_model=D, n_heads=2, d_head=4)
    assert predictor_settings("attn2", {**SECTION, "n_heads": None}, D, 16).n_heads == 4  # 1 × 16 / 4


@pytest.mark.parametrize(("mlp_hidden", "width"), [(None, 4 * D), (5, 5)])
def test_attn2_mlp_width_is_configurable(mlp_hidden, width):
    """predictor.mlp_hidden sets each attn2 block's MLP width (None: 4 × d_model); the parameters are two
    blocks of (attention, two LayerNorms, MLP) plus the final LayerNorm and head."""
    settings = predictor_settings("attn2", {**SECTION, "mlp_hidden": mlp_hidden}, D, 16)
    attention = D * 3 * 8 + 3 * 8 + 8 * D + D  # qkv and out at n_heads × d_head = 2 × 4
    mlp = D * width + width + width * D + D
    block = attention + 2 * (2 * D) + mlp
    assert parameter_count(build_predictor(settings)) == 2 * block + 2 * D + D * D + D


@pytest.mark.parametrize("name", ["attn1_local", "attn1_local0", "attn1_local-2", "mlp_kx", "mlp_k", "ridge_ar04",
                                  "lstm", "attn3", "attn1_rope2", None])
def test_bad_names_are_refused_naming_the_valid_forms(name):
    with pytest.raises(ValueError) as raised:
        predictor_kind(name)
    message = str(raised.value)
    assert repr(name) in message
    for form in ("'attn1'", "'attn1_rope'", "'attn1_local<w>'", "'attn2'", "'mlp_k<k>'", "'ridge_ar<k>'"):
        assert form in message


def test_lag_stack_matches_the_baselines_lag_features():
    """The predictors' lag features of rows 1..T-1 are the baselines' (which predict positions 2..T)."""
    hidden = torch.randn(3, 7, 4, dtype=torch.float64)
    np.testing.assert_array_equal(lag_stack(hidden, 3)[:, :-1].numpy(), lag_features(hidden.numpy(), 3))
    np.testing.assert_array_equal(lag_stack(hidden, 9)[:, :-1].numpy(), lag_features(hidden.numpy(), 9))


def test_parameter_counts():
    assert parameter_count(build("attn1")) == 8 * 24 + 24 + 8 * 8 + 8
    assert parameter_count(build("mlp_k3")) == 24 * 8 + 8 + 8 * 8 + 8
    assert parameter_count(build("ridge_ar2")) == 16 * 8 + 8


@pytest.mark.parametrize("name", KINDS)
@pytest.mark.parametrize("section", [SECTION, {**SECTION, "input_norm": True, "mlp_hidden": 5}])
def test_the_settings_count_the_parameters_of_the_module_they_build(name, section):
    """Resource requests count parameters from the settings alone (torch-free, when Snakemake builds the DAG):
    the count must be the built module's, for every kind and its optional layers."""
    settings = predictor_settings(name, section, D, 2 * D)
    assert settings.parameter_count == parameter_count(build_predictor(settings))
