import math

import pytest
import torch

from pndecomp.predictor import PredictorConfig
from pndecomp.train import (
    CURVE_COLUMNS,
    NonFiniteLoss,
    PredictorTrainer,
    StreamPoolTooSmall,
    TrainConfig,
    batch_indices,
    check_stream_pool,
    get_lr,
    train_predictor,
    train_predictors,
)

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
    _, curve = train_predictor(PREDICTOR, cfg, lambda step: hidden[batch_indices(32, 8, 0, step)], hidden[:8],
                               n_windows=32)
    assert list(curve.columns) == CURVE_COLUMNS
    assert list(curve["step"]) == [50, 100, 150]
    assert list(curve["windows_seen"]) == [32] * 3 and list(curve["tokens_seen"]) == [320] * 3
    assert curve["eval_mse"].iloc[-1] < 0.5 * curve["eval_mse"].iloc[0]
    assert curve["eval_r2"].iloc[-1] > 0.5
    assert all(math.isfinite(v) for v in curve["eval_var"])


def test_resume_reproduces_uninterrupted_run_bitwise(tmp_path):
    hidden = predictable_hidden()
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, checkpoint_every=10)

    def batches(step):
        return hidden[batch_indices(32, 8, 0, step)]

    reference, reference_curve = train_predictor(PREDICTOR, cfg, batches, hidden[:8], n_windows=32)

    def failing_batches(step):
        if step == 25:
            raise KeyboardInterrupt  # the job dies after the checkpoint at step 20
        return batches(step)

    resume = tmp_path / "resume.pt"
    with pytest.raises(KeyboardInterrupt):
        train_predictor(PREDICTOR, cfg, failing_batches, hidden[:8], n_windows=32, resume_path=resume)
    assert torch.load(resume, weights_only=True)["step"] == 20
    resumed, resumed_curve = train_predictor(PREDICTOR, cfg, batches, hidden[:8], n_windows=32, resume_path=resume)
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
        train_predictor(PREDICTOR, cfg, stop_at_15, hidden[:8], n_windows=32, resume_path=resume)
    other = TrainConfig(steps=20, batch_size=8, lr=5e-3, warmup_steps=3, eval_every=5, checkpoint_every=10)
    _, curve = train_predictor(PREDICTOR, other, lambda s: hidden[batch_indices(32, 8, 0, s)], hidden[:8],
                               n_windows=32, resume_path=resume)
    assert list(curve["step"]) == [5, 10, 15, 20]


def test_batches_cover_every_window_once_per_epoch():
    drawn = torch.cat([batch_indices(10, 4, 3, step) for step in range(5)])  # 20 draws = 2 epochs
    assert sorted(drawn[:10].tolist()) == list(range(10))
    assert sorted(drawn[10:].tolist()) == list(range(10))
    assert not torch.equal(drawn[:10], drawn[10:])


def test_curve_counts_distinct_windows_and_tokens_seen():
    hidden = predictable_hidden(n_windows=40, length=6)
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=2)
    _, curve = train_predictor(PREDICTOR, cfg, lambda step: hidden[batch_indices(40, 8, 0, step)], hidden[:4],
                               n_windows=40)
    assert list(curve["windows_seen"]) == [16, 32, 40, 40, 40, 40]  # min(steps x batch, windows)
    assert list(curve["tokens_seen"]) == [6 * n for n in curve["windows_seen"]]


def test_stream_pool_check_allows_max_epochs_passes_and_names_the_numbers():
    cfg = TrainConfig(steps=10, batch_size=8)  # 80 windows
    check_stream_pool(80, cfg)
    check_stream_pool(40, TrainConfig(steps=10, batch_size=8, max_epochs=2))
    with pytest.raises(StreamPoolTooSmall) as raised:
        check_stream_pool(79, cfg)
    message = str(raised.value)
    assert message.startswith("stream pool: 79 windows, training needs 80 ")
    for hint in ("train.max_epochs = 1.0", "train.steps", "windows.split_fractions.predictor_train"):
        assert hint in message


def test_non_finite_loss_stops_training_naming_predictor_and_step(tmp_path):
    hidden = predictable_hidden()
    cfg = TrainConfig(steps=10, batch_size=8, lr=1e-2, warmup_steps=1, eval_every=5, checkpoint_every=2)

    def batches(step):
        batch = hidden[batch_indices(32, 8, 0, step)].clone()
        if step == 6:
            batch[3, 4, 0] = float("inf")
        return batch

    trainer = PredictorTrainer(PREDICTOR, cfg, hidden[:8], resume_path=tmp_path / "resume.pt", name="layer 7")
    with pytest.raises(NonFiniteLoss, match="layer 7: the training loss is nan at step 7"):
        train_predictors({"7": trainer}, cfg, lambda step: {"7": batches(step)}, 32)
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["step"] == 6  # the bad step never stepped
    assert all(torch.isfinite(value).all() for value in trainer.predictor.state_dict().values())


def test_joint_training_equals_separate_runs_and_resumes_each_predictor(tmp_path):
    """Several predictors in one loop (one batch per step for all) train exactly as each alone; a joint
    run resumes every predictor from its own checkpoint, also when they stopped at different steps."""
    data = {"a": predictable_hidden(seed=1), "b": predictable_hidden(seed=2)}
    cfg = TrainConfig(steps=30, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=5, checkpoint_every=10)

    def batches(step):
        return {name: hidden[batch_indices(32, 8, 0, step)] for name, hidden in data.items()}

    alone = {name: train_predictor(PREDICTOR, cfg, lambda step, h=hidden: h[batch_indices(32, 8, 0, step)],
                                   hidden[:8], n_windows=32) for name, hidden in data.items()}

    def trainers():
        return {name: PredictorTrainer(PREDICTOR, cfg, hidden[:8], resume_path=tmp_path / f"{name}.pt", name=name)
                for name, hidden in data.items()}

    def stop_at(last_step):
        def next_batch(step):
            if step == last_step:
                raise KeyboardInterrupt
            return batches(step)
        return next_batch

    with pytest.raises(KeyboardInterrupt):
        train_predictors(trainers(), cfg, stop_at(25), 32)
    (tmp_path / "b.pt").unlink()  # as if b's checkpoint had never been written: b starts over
    resumed = trainers()
    assert {name: trainer.next_step for name, trainer in resumed.items()} == {"a": 20, "b": 0}
    joint = train_predictors(resumed, cfg, batches, 32)
    for name, (model, curve) in joint.items():
        reference, reference_curve = alone[name]
        for key, value in reference.state_dict().items():
            assert torch.equal(value, model.state_dict()[key]), (name, key)
        assert curve.equals(reference_curve), name
