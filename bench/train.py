"""Predictor training speed: steps/s and the share of each step spent waiting for data, from the
cache (in-memory fp16 hidden states) and in stream mode (the frozen LM runs per batch); and for the
paper's five layers, stream mode with one job per layer against one joint job (``train.joint_layers``).

    .venv/bin/python bench/train.py            # both shapes, ~3 min on 2 loaded CPU cores
    .venv/bin/python bench/train.py --quick    # smoke run

Both modes run the package's own loop, ``pndecomp.train.train_predictor(predictor_cfg, train_cfg,
next_batch, eval_hidden)``, with ``next_batch`` wrapped in a timer:

* ``cache``  -- ``next_batch(step) = hidden[batch_indices(n, batch, seed, step)]`` on an in-memory
  fp16 tensor [n_cache, T, d_model], exactly the closure ``pndecomp.stages.train.train_predictor`` builds
  (random values: the cost of a step does not depend on them).
* ``stream`` -- the LM up to the trained layer per batch: for SmolLM2, ``pndecomp.stages.common.streamed_batches``
  itself (the materialized model and the token store of results/embedded-smollm2, when present);
  otherwise, and for the Pythia-dims model, the same code built from ``lm.ResidualCapture``
  (``capture.run(tokens[batch_indices(...)])[layer].to(float16)``) on random token windows.

Joint vs per-layer (Pythia-dims shape, layers 0, 6, 12, 18, 23): ``per-layer`` runs five stream runs
of ``train_predictor``, each with the LM up to its layer; ``joint`` runs ``pndecomp.train.train_predictors``
with five predictors fed by one ``ResidualCapture`` pass up to layer 23 per step, as the
``train_predictors_joint`` job does, at --joint-batch windows per batch (default 4: ten LM-bound runs).
Ratio = (sum of the five per-layer step times) / (joint step time), target >= 2.5; the LM-time ratio
(sum of the per-layer data waits / the joint data wait) is at most (1 + 7 + 13 + 19 + 24) / 24 = 2.67
(block passes), and the five predictor steps cost the same in both.

Step time = time between the starts of consecutive ``next_batch`` calls (the last step ends when
``train_predictor`` returns; its one evaluation is on a single 8-token window, negligible). The first
step (optimizer state allocation, kernel set-up) is dropped. Data wait share = time inside
``next_batch`` / step time, summed over the timed steps. Target: cache-mode wait <= 10 %.

Shapes: ``smollm2`` -- d_model 576, predictor 9 heads x 64 and batch 16 x 128 (the default config),
stream LM = the embedded SmolLM2 in bfloat16 up to layer 15. ``pythia-dims`` -- d_model 1024,
predictor 32 heads x 128 and batch 32 windows (the paper's; --pythia-batch), T = 64 by default on CPU
(the paper's 256 is --pythia-length 256, ~4x slower per step); stream LM = a random GPT-NeoX with Pythia-410m's
dimensions in bfloat16 up to layer 12. The predictor trains in fp32 on CPU (autocast is CUDA-only).
"""
from __future__ import annotations

import argparse
import time

import _common as C  # noqa: I001
import torch

from pndecomp import lm, token_store
from pndecomp.predictor_kinds import AttentionConfig
from pndecomp.stages import common as common_stages
from pndecomp.train import PredictorTrainer, TrainConfig, batch_indices, train_predictor, train_predictors

RESULTS = C.REPO / "results" / "embedded-smollm2"
PAPER_LAYERS = [0, 6, 12, 18, 23]


class TimedBatches:
    """Wraps next_batch: records when each call starts and how long it takes."""

    def __init__(self, next_batch):
        self.next_batch = next_batch
        self.starts: list[float] = []
        self.waits: list[float] = []

    def __call__(self, step: int):
        start = time.perf_counter()
        batch = self.next_batch(step)
        self.starts.append(start)
        self.waits.append(time.perf_counter() - start)
        return batch


def cache_batches(hidden: torch.Tensor, cfg: TrainConfig):
    def next_batch(step: int) -> torch.Tensor:  # as in pndecomp.stages.train.train_predictor
        return hidden[batch_indices(len(hidden), cfg.batch_size, cfg.seed, step)]
    return next_batch


def stream_states(model, tokens: torch.Tensor, layers: list[int], cfg: TrainConfig, device):
    """pndecomp.stages.common.streamed_batches without the config plumbing (model and token windows passed
    in): next_batch(step) -> {layer name: states}, one LM pass up to the deepest of ``layers``."""
    capture = lm.ResidualCapture(model, layers)

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        ids = tokens[batch_indices(len(tokens), cfg.batch_size, cfg.seed, step)]
        return {str(layer): hidden.to(torch.float16)
                for layer, hidden in capture.run(ids.to(device, non_blocking=True)).items()}
    return next_batch


def single_layer(next_batch, layer: int):
    """A {layer name: states} next_batch as one layer's batches [batch, T, d_model]."""
    return lambda step: next_batch(step)[str(layer)]


def stream_equivalent(model, tokens: torch.Tensor, layer: int, cfg: TrainConfig, device):
    return single_layer(stream_states(model, tokens, [layer], cfg, device), layer)


def timings(timed: TimedBatches, start: float, device) -> dict:
    """Median step and data-wait seconds, the first step dropped; ``start``: when training began."""
    C.sync(device)
    end = time.perf_counter()
    bounds = timed.starts + [end]
    steps = [b - a for a, b in zip(bounds[:-1], bounds[1:])][1:]  # drop the first step
    waits = timed.waits[1:]
    return {"step_s": C.median(steps), "wait_s": C.median(waits), "wait_share": sum(waits) / sum(steps),
            "total_s": end - start}


def eval_hidden_of(predictor_cfg) -> torch.Tensor:
    return torch.randn(1, 8, predictor_cfg.d_model).to(torch.float16)


def run_once(predictor_cfg, cfg: TrainConfig, next_batch, device, n_windows: int) -> dict:
    timed = TimedBatches(next_batch)
    start = time.perf_counter()
    train_predictor(predictor_cfg, cfg, timed, eval_hidden_of(predictor_cfg), n_windows=n_windows, device=device)
    return timings(timed, start, device)


def run_joint(predictor_cfg, cfg: TrainConfig, next_batch, device, layers: list[int], n_windows: int) -> dict:
    """The train_predictors_joint job's loop: one predictor per layer, one next_batch call per step for all."""
    trainers = {str(layer): PredictorTrainer(predictor_cfg, cfg, eval_hidden_of(predictor_cfg), device=device)
                for layer in layers}
    timed = TimedBatches(next_batch)
    start = time.perf_counter()
    train_predictors(trainers, cfg, timed, n_windows)
    return timings(timed, start, device)


def build_shape(name: str, args, device):
    """(predictor_cfg, {mode: (TrainConfig, next_batch)}, note)."""
    if name == "smollm2":
        d_model, heads, d_head, batch, length, layer = 576, 9, 64, 16, 128, 15
        if args.quick:
            batch, length = 4, 32
        steps = {"cache": 8, "stream": 4} if not args.quick else {"cache": 3, "stream": 3}
        cfgs = {mode: TrainConfig(steps=n, batch_size=batch, warmup_steps=1, eval_every=10**9,
                                  checkpoint_every=10**9) for mode, n in steps.items()}
        store = RESULTS / "windows" / "predictor_train_tokens"
        materialized = RESULTS / "model"
        if (materialized / "config.json").is_file() and store.is_dir() and not args.quick:
            config = {"device": str(device), "model": {"id": "embedded", "dtype": "bfloat16", "random_init": False},
                      "extraction": {"dtype": "float16"}}
            pool = token_store.open_pool(store)
            stream = single_layer(common_stages.streamed_batches(config, str(materialized), [str(layer)], pool,
                                                          cfgs["stream"]), layer)
            n_stream = len(pool)
            note = f"stream = pndecomp.stages.common.streamed_batches on {store.relative_to(C.REPO)}"
        else:
            model, how = C.load_smollm2(torch.bfloat16, device)
            tokens = torch.randint(0, model.config.vocab_size, (256, length))
            stream, n_stream = stream_equivalent(model, tokens, layer, cfgs["stream"], device), len(tokens)
            note = f"stream = ResidualCapture equivalent ({how}), random tokens"
        joint = None
    else:
        d_model, heads, d_head, batch, length, layer = 1024, 32, 128, args.pythia_batch, args.pythia_length, 12
        if args.quick:
            batch, length = 4, 32
        steps = {"cache": 4, "stream": 3} if not args.quick else {"cache": 3, "stream": 3}
        cfgs = {mode: TrainConfig(steps=n, batch_size=batch, warmup_steps=1, eval_every=10**9,
                                  checkpoint_every=10**9) for mode, n in steps.items()}
        model, how = C.build_pythia_dims(torch.bfloat16, device)
        tokens = torch.randint(0, model.config.vocab_size, (256, length))
        stream, n_stream = stream_equivalent(model, tokens, layer, cfgs["stream"], device), len(tokens)
        note = f"stream = ResidualCapture equivalent ({how}), random tokens"
        # Five layers: one stream run per layer, or one joint run; as many steps as a stream run. Both sides
        # scale with the batch, so --joint-batch (small by default) keeps the ten LM-bound runs short.
        cfg = TrainConfig(steps=steps["stream"], batch_size=args.joint_batch if not args.quick else batch,
                          warmup_steps=1, eval_every=10**9, checkpoint_every=10**9)
        joint = {"cfg": cfg, "n_windows": len(tokens),
                 "per_layer": {layer: stream_equivalent(model, tokens, layer, cfg, device) for layer in PAPER_LAYERS},
                 "joint": stream_states(model, tokens, PAPER_LAYERS, cfg, device)}
    n_cache = 64 if args.quick else 256
    hidden = torch.randn(n_cache, length, d_model, generator=torch.Generator().manual_seed(0)).to(torch.float16)
    predictor_cfg = AttentionConfig(d_model=d_model, n_heads=heads, d_head=d_head)
    modes = {"cache": (cfgs["cache"], cache_batches(hidden, cfgs["cache"]), n_cache),
             "stream": (cfgs["stream"], stream, n_stream)}
    C.say(f"== {name}: predictor {heads} heads x {d_head} on d_model {d_model}; batch {batch} x {length}; "
          f"stream layer {layer}; steps/run {steps} (first dropped); cache {n_cache} windows fp16 in memory; {note}"
          + (f"; joint vs per-layer stream over layers {PAPER_LAYERS}, batch {joint['cfg'].batch_size} x {length}"
             if joint else ""))
    return predictor_cfg, modes, joint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=["smollm2", "pythia-dims"], default=["smollm2", "pythia-dims"])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)")
    parser.add_argument("--pythia-length", type=int, default=64, help="T for the Pythia shape (paper: 256)")
    parser.add_argument("--pythia-batch", type=int, default=32, help="batch for the Pythia shape (paper: 32)")
    parser.add_argument("--joint-batch", type=int, default=4, help="batch of the joint vs per-layer comparison")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help=C.THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    C.set_threads(args.threads)
    device = torch.device(args.device)
    C.say(f"machine: {C.machine()}")
    shapes = {name: build_shape(name, args, device) for name in args.shapes}
    results = {(name, mode): [] for name in shapes for mode in ("cache", "stream", "per-layer", "joint")}
    for round_ in range(args.rounds):
        for name, (predictor_cfg, modes, joint) in shapes.items():
            for mode, (cfg, next_batch, n_windows) in modes.items():
                r = run_once(predictor_cfg, cfg, next_batch, device, n_windows)
                results[name, mode].append(r)
                C.say(f"  round {round_ + 1}/{args.rounds} {name:11s} {mode:6s} step {r['step_s']:.3f} s  "
                      f"wait {r['wait_s'] * 1e3:.1f} ms  wait share {100 * r['wait_share']:.1f} %  "
                      f"(run {r['total_s']:.1f} s)")
            if joint is None:
                continue
            runs = [run_once(predictor_cfg, joint["cfg"], next_batch, device, joint["n_windows"])
                    for next_batch in joint["per_layer"].values()]
            # The five per-layer jobs' cost of one step of every layer: their step and wait times summed.
            results[name, "per-layer"].append({key: sum(r[key] for r in runs) for key in ("step_s", "wait_s")})
            results[name, "joint"].append(run_joint(predictor_cfg, joint["cfg"], joint["joint"], device,
                                                    PAPER_LAYERS, joint["n_windows"]))
            for mode in ("per-layer", "joint"):
                r = results[name, mode][-1]
                C.say(f"  round {round_ + 1}/{args.rounds} {name:11s} {mode:9s} 5 layers: step {r['step_s']:.3f} s  "
                      f"LM {r['wait_s']:.3f} s")
    summary = []
    for name, (_, _, joint) in shapes.items():
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
        if joint is not None:
            ratio = C.median([p["step_s"] / j["step_s"] for p, j in zip(results[name, "per-layer"],
                                                                         results[name, "joint"])])
            lm_ratio = C.median([p["wait_s"] / j["wait_s"] for p, j in zip(results[name, "per-layer"],
                                                                            results[name, "joint"])])
            verdict = "met" if ratio >= 2.5 else "MISSED"
            C.say(f"  {name}: joint/per-layer stream throughput, 5 layers {ratio:.2f}x >= 2.5 -> {verdict}; "
                  f"LM time alone {lm_ratio:.2f}x (block passes: 64/24 = 2.67x)")
            summary.append(f"{name} joint/per-layer stream, 5 layers: {ratio:.2f}x [>=2.5], LM time {lm_ratio:.2f}x "
                           "[<=2.67]")
    C.say("SUMMARY train " + " | ".join(summary) + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
