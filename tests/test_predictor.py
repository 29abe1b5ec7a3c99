import pytest
import torch

from pndecomp.predictor import (
    CausalPredictor,
    PredictorConfig,
    load_predictor,
    prediction_loss,
    residuals,
    save_predictor,
)


@pytest.mark.parametrize("rotary,input_norm", [(False, False), (True, True)])
def test_strictly_causal(rotary, input_norm):
    """Changing h_{t+1..T} must not change ĥ_{≤t+1} (the outputs at positions ≤ t)."""
    torch.manual_seed(0)
    predictor = CausalPredictor(PredictorConfig(d_model=16, n_heads=4, d_head=8, rotary=rotary, input_norm=input_norm))
    hidden = torch.randn(2, 12, 16)
    for t in range(1, 12):
        perturbed = hidden.clone()
        perturbed[:, t:] += torch.randn_like(perturbed[:, t:]) * 10
        before, after = predictor(hidden), predictor(perturbed)
        torch.testing.assert_close(before[:, :t], after[:, :t])
        assert not torch.allclose(before[:, t:], after[:, t:])


def test_loss_and_residuals_against_direct_computation():
    torch.manual_seed(1)
    predictor = CausalPredictor(PredictorConfig(d_model=8, n_heads=2, d_head=4))
    hidden = torch.randn(3, 6, 8)
    predicted = predictor(hidden)[:, :-1]  # row t predicts h_{t+1}
    expected = ((hidden[:, 1:] - predicted) ** 2).sum(-1).mean() / 8
    torch.testing.assert_close(prediction_loss(predictor, hidden), expected)
    torch.testing.assert_close(residuals(predictor, hidden), hidden[:, 1:] - predicted)


def test_save_load_roundtrip(tmp_path):
    predictor = CausalPredictor(PredictorConfig(d_model=8, n_heads=2, d_head=4, rotary=True))
    save_predictor(predictor, tmp_path / "p.safetensors", {"layer": 3})
    loaded = load_predictor(tmp_path / "p.safetensors")
    assert loaded.config == predictor.config
    hidden = torch.randn(1, 5, 8)
    torch.testing.assert_close(loaded(hidden), predictor(hidden))
