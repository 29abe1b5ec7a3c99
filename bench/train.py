"""Predictor training speed: steps/s and the share of each step spent waiting for data, from the
cache (in-memory fp16 hidden states) and in stream mode (the frozen LM runs per batch).

    .venv/bin/python bench/train.py            # both shapes, ~3 min on 2 loaded CPU cores
    .venv/bin/python bench/train.py --quick    # smoke run

Both modes run the package's own loop, ``pndecomp.train.train_predictor(predictor_cfg, train_cfg,
next_batch, eval_hidden)``, with ``next_batch`` wrapped in a timer:

* ``cache``  -- ``next_batch(step) = hidden[batch_indices(n, batch, seed, step)]`` on an in-memory
  fp16 tensor [n_cache, T, d_model], exactly the closure ``stages.train_predictor`` builds
  (random values: the cost of a step does not depend on them).
* ``stream`` -- the LM up to the trained layer per batch: for SmolLM2, ``stages.streamed_batches``
  itself (the materialized model and the windows of results/embedded-smollm2, when present);
  otherwise, and for the Pythia-dims model, the same code built from ``lm.ResidualCapture``
  (``capture.run(tokens[batch_indices(...)])[layer].to(float16)``) on random token windows.

Step time = time between the starts of consecutive ``next_batch`` calls (the last step ends when
``train_predictor`` returns; its one evaluation is on a single 8-token window, negligible). The first
step (optimizer state allocation, kernel set-up) is dropped. Data wait share = time inside
``next_batch`` / step time, summed over the timed steps. Target: cache-mode wait <= 10 %.

Shapes: ``smollm2`` -- d_model 576, predictor 9 heads x 64 and batch 16 x 128 (the default config),
stream LM = the embedded SmolLM2 in bfloat16 up to layer 15. ``pythia-dims`` -- d_model 1024,
predictor 32 heads x 128 and batch 32 windows (the paper's), T = 64 by default on CPU (the paper's
256 is --pythia-length 256, ~4x slower per step); stream LM = a random GPT-NeoX with Pythia-410m's
dimensions in bfloat16 up to layer 12. The predictor trains in fp32 on CPU (autocast is CUDA-only).
"""
from __future__ import annotations

import argparse
import time

import _common as C  # noqa: I001
import torch

from pndecomp import lm, stages
from pndecomp.predictor import PredictorConfig
from pndecomp.train import TrainConfig, batch_indices, train_predictor

RESULTS = C.REPO / "results" / "embedded-smollm2"


class TimedBatches:
    """Wraps next_batch: records when each call starts and how long it takes."""

    def __init__(self, next_batch):
        self.next_batch = next_batch
        self.starts: list[float] = []
        self.waits: list[float] = []

    def __call__(self, step: int) -> torch.Tensor:
        start = time.perf_counter()
        batch = self.next_batch(step)
        self.starts.append(start)
        self.waits.append(time.perf_counter() - start)
        return batch


def cache_batches(hidden: torch.Tensor, cfg: TrainConfig):
    def next_batch(step: int) -> torch.Tensor:  # as in stages.train_predictor
        return hidden[batch_indices(len(hidden), cfg.batch_size, cfg.seed, step)]
    return next_batch


def stream_equivalent(model, tokens: torch.Tensor, layer: int, cfg: TrainConfig, device):
    """stages.streamed_batches without the config plumbing (model and tokens passed in)."""
    capture = lm.ResidualCapture(model, [layer])

    def next_batch(step: int) -> torch.Tensor:
        ids = tokens[batch_indices(len(tokens), cfg.batch_size, cfg.seed, step)]
        return capture.run(ids.to(device, non_blocking=True))[layer].to(torch.float16)
    return next_batch


def run_once(predictor_cfg, cfg: TrainConfig, next_batch, device) -> dict:
    timed = TimedBatches(next_batch)
    eval_hidden = torch.randn(1, 8, predictor_cfg.d_model).to(torch.float16)
    start = time.perf_counter()
    train_predictor(predictor_cfg, cfg, timed, eval_hidden, device=device)
    C.sync(device)
    end = time.perf_counter()
    bounds = timed.starts + [end]
    steps = [b - a for a, b in zip(bounds[:-1], bounds[1:])][1:]  # drop the first step
    waits = timed.waits[1:]
    return {"step_s": C.median(steps), "wait_s": C.median(waits), "wait_share": sum(waits) / sum(steps),
            "total_s": end - start}


def build_shape(name: str, args, device):
    """(predictor_cfg, {mode: (TrainConfig, next_batch)}, note)."""
    if name == "smollm2":
        d_model, heads, d_head, batch, length, layer = 576, 9, 64, 16, 128, 15
        if args.quick:
            batch, length = 4, 32
        steps = {"cache": 8, "stream": 4} if not args.quick else {"cache": 3, "stream": 3}
        cfgs = {mode: TrainConfig(steps=n, batch_size=batch, warmup_steps=1, eval_every=10**9,
                                  checkpoint_every=10**9) for mode, n in steps.items()}
        windows = RESULTS / "windows" / "predictor_train.parquet"
        materialized = RESULTS / "model"
        if (materialized / "config.json").is_file() and windows.is_file() and not args.quick:
            config = {"device": str(device), "model": {"id": "embedded", "dtype": "bfloat16"},
                      "extraction": {"dtype": "float16"}}
            stream = stages.streamed_batches(config, str(materialized), layer, str(windows), cfgs["stream"])
            note = f"stream = stages.streamed_batches on {windows.relative_to(C.REPO)}"
        else:
            model, how = C.load_smollm2(torch.bfloat16, device)
            tokens = torch.randint(0, model.config.vocab_size, (256, length))
            stream = stream_equivalent(model, tokens, layer, cfgs["stream"], device)
            note = f"stream = ResidualCapture equivalent ({how}), random tokens"
    else:
        d_model, heads, d_head, batch, length, layer = 1024, 32, 128, 32, args.pythia_length, 12
        if args.quick:
            batch, length = 4, 32
        steps = {"cache": 4, "stream": 3} if not args.quick else {"cache": 3, "stream": 3}
        cfgs = {mode: TrainConfig(steps=n, batch_size=batch, warmup_steps=1, eval_every=10**9,
                                  checkpoint_every=10**9) for mode, n in steps.items()}
        model, how = C.build_pythia_dims(torch.bfloat16, device)
        tokens = torch.randint(0, model.config.vocab_size, (256, length))
        stream = stream_equivalent(model, tokens, layer, cfgs["stream"], device)
        note = f"stream = ResidualCapture equivalent ({how}), random tokens"
    n_cache = 64 if args.quick else 256
    hidden = torch.randn(n_cache, length, d_model, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    predictor_cfg = PredictorConfig(d_model=d_model, n_heads=heads, d_head=d_head)
    modes = {"cache": (cfgs["cache"], cache_batches(hidden, cfgs["cache"])), "stream": (cfgs["stream"], stream)}
    C.say(f"== {name}: predictor {heads} heads x {d_head} on d_model {d_model}; batch {batch} x {length}; "
          f"stream layer {layer}; steps/run {steps} (first dropped); cache {n_cache} windows fp16 in memory; {note}")
    return predictor_cfg, modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=["smollm2", "pythia-dims"], default=["smollm2", "pythia-dims"])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)")
    parser.add_argument("--pythia-length", type=int, default=64, help="T for the Pythia shape (paper: 256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help=C.THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    C.set_threads(args.threads)
    device = torch.device(args.device)
    C.say(f"machine: {C.machine()}")
    shapes = {name: build_shape(name, args, device) for name in args.shapes}
    results = {(name, mode): [] for name in shapes for mode in ("cache", "stream")}
    for round_ in range(args.rounds):
        for name, (predictor_cfg, modes) in shapes.items():
            for mode, (cfg, next_batch) in modes.items():
                r = run_once(predictor_cfg, cfg, next_batch, device)
                results[name, mode].append(r)
                C.say(f"  round {round_ + 1}/{args.rounds} {name:11s} {mode:6s} step {r['step_s']:.3f} s  "
                      f"wait {r['wait_s'] * 1e3:.1f} ms  wait share {100 * r['wait_share']:.1f} %  "
                      f"(run {r['total_s']:.1f} s)")
    summary = []
    for name in shapes:
        row = {}
        for mode in ("cache", "stream"):
            rs = results[name, mode]
            step = C.median([r["step_s"] for r in rs])
            share = C.median([r["wait_share"] for r in rs])
            wait = C.median([r["wait_s"] for r in rs])
            row[mode] = (1 / step, share)
            C.say(f"  {name:11s} {mode:6s} {1 / step:7.3f} steps/s  step {step:.3f} s  data wait {wait * 1e3:.1f} ms "
                  f"= {100 * share:.1f} % of step time")
        verdict = "met" if row["cache"][1] <= 0.10 else "MISSED"
        C.say(f"  {name}: cache-mode wait <= 10 % -> {verdict}; "
              f"stream/cache steps/s {row['stream'][0] / row['cache'][0]:.2f}")
        summary.append(f"{name}: cache {row['cache'][0]:.3g} steps/s wait {100 * row['cache'][1]:.1f}% [<=10%], "
                       f"stream {row['stream'][0]:.3g} steps/s wait {100 * row['stream'][1]:.0f}%, "
                       f"stream/cache {row['stream'][0] / row['cache'][0]:.2f}")
    C.say("SUMMARY train " + " | ".join(summary) + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
