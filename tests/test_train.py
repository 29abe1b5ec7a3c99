import math

import pytest
import torch

from pndecomp.predictor import PredictorConfig
from pndecomp.train import TrainConfig, batch_indices, get_lr, train_predictor

PREDICTOR = PredictorConfig(d_model=8, n_heads=2, d_head=4)


def predictable_hidden(n_windows=32, length=10, seed=0):
    """h_{t+1} = A h_t: a predictor that sees the past can learn it."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.linalg.qr(torch.randn(8, 8, generator=generator))[0]
    hidden = [torch.randn(n_windows, 8, generator=generator)]
    for _ in range(length - 1):
        hidden.append(hidden[-1] @ a.T)
    return torch.stack(hidden, dim=1)


def test_lr_schedule():
    cfg = TrainConfig(steps=110, batch_size=1, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == pytest.approx(1.0)
    assert get_lr(10, cfg) == pytest.approx(1.0)
    assert get_lr(60, cfg) == pytest.approx(0.1 + 0.5 * 0.9)
    assert get_lr(110, cfg) == pytest.approx(0.1)
    lrs = [get_lr(s, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_batches_depend_only_on_seed_and_step():
    assert torch.equal(batch_indices(100, 8, 0, 5), batch_indices(100, 8, 0, 5))
    assert not torch.equal(batch_indices(100, 8, 0, 5), batch_indices(100, 8, 0, 6))


def test_loss_falls_and_curve_columns():
    hidden = predictable_hidden()
    cfg = TrainConfig(steps=150, batch_size=8, lr=1e-2, warmup_steps=5, eval_every=50)
    _, curve = train_predictor(PREDICTOR, cfg, lambda step: hidden[batch_indices(32, 8, 0, step)], hidden[:8])
    assert list(curve["step"]) == [50, 100, 150]
    assert curve["eval_mse"].iloc[-1] < 0.5 * curve["eval_mse"].iloc[0]
    assert curve["eval_r2"].iloc[-1] > 0.5
    assert all(math.isfinite(v) for v in curve["eval_var"])


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path):
    hidden = predictable_hidden()
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, checkpoint_every=10)

    def batches(step):
        return hidden[batch_indices(32, 8, 0, step)]

    reference, reference_curve = train_predictor(PREDICTOR, cfg, batches, hidden[:8])

    def failing_batches(step):
        if step == 25:
            raise KeyboardInterrupt  # the job dies after the checkpoint at step 20
        return batches(step)

    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_predictor(PREDICTOR, cfg, failing_batches, hidden[:8], resume_path=resume)
    assert torch.load(resume, weights_only=True)["step"] == 20
    resumed, resumed_curve = train_predictor(PREDICTOR, cfg, batches, hidden[:8], resume_path=resume)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert reference_curve.equals(resumed_curve)


def test_resume_ignores_a_checkpoint_of_another_config(tmp_path):
    hidden = predictable_hidden()
    cfg = TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, checkpoint_every=10)
    resume = tmp_path / "resume.pt"

    def stop_at_15(step):
        if step == 15:
            raise KeyboardInterrupt
        return hidden[batch_indices(32, 8, 0, step)]

    with pytest.raises(KeyboardInterrupt):
        train_predictor(PREDICTOR, cfg, stop_at_15, hidden[:8], resume_path=resume)
    other = TrainConfig(steps=20, batch_size=8, lr=5e-3, warmup_steps=3, eval_every=5, checkpoint_every=10)
    _, curve = train_predictor(PREDICTOR, other, lambda s: hidden[batch_indices(32, 8, 0, s)], hidden[:8],
                               resume_path=resume)
    assert list(curve["step"]) == [5, 10, 15, 20]


def test_batches_cover_every_window_once_per_epoch():
    drawn = torch.cat([batch_indices(10, 4, 3, step) for step in range(5)])  # 20 draws = 2 epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:])
