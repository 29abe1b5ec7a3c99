"""Extraction throughput: pndecomp's extract_hidden_states vs the bare forward pass vs a naive loop.

    .venv/bin/python bench/extract.py            # both models, 5 rounds, ~2-3 min on 2 shared CPU cores
    .venv/bin/python bench/extract.py --quick    # smoke run, well under a minute

Three variants run on the same token windows, interleaved, and are reported as tokens/s (median
over rounds); each ratio is the median over rounds of that round's ratio (variants of one round run
back to back, so load that drifts between rounds cancels), with the ratio of medians as a cross-check
and the same ratios in CPU time (``time.process_time``; with the default single torch thread it is
wall time minus the time other processes held the core; the SUMMARY gives it in parentheses):

* ``bare``  -- the limit: ``model.base_model(input_ids=ids, use_cache=False)`` under
  ``torch.no_grad()``: token embedding, ALL transformer blocks and the final norm of the base
  model (``LlamaModel`` / ``GPTNeoXModel``); no LM head, no hooks, no output kept, no dtype
  conversion, no I/O. Same for both layer sets.
* ``ours``  -- ``pndecomp.extract.extract_hidden_states(model, tokens, layers, paths, surprisal_path=None,
  storage_dtype=float16, ...)`` into a temporary directory: forward hooks on the requested blocks,
  early exit after the deepest one, finiteness check, fp16 safetensors streamed to disk.
* ``naive`` -- what a user would write: ``out = model(input_ids=ids, output_hidden_states=True)``
  (the full causal-LM forward, LM head included, default ``use_cache``), then
  ``torch.save({layer: out.hidden_states[layer + 1].to(float16)})`` per batch. It does the same
  work whichever layers are requested (all blocks, the head, the same bytes saved), so it is run
  once per round and compared with both layer sets.

Layer sets: ``full`` = [0, last block]; ``half`` = [0, n_blocks/2 - 1] (the deepest requested block
is exactly half the model's depth). Targets: ours/bare >= 0.9 (full set); ours/naive >= 1.3 (half set).

Models: ``smollm2`` = the embedded SmolLM2-135M-Instruct (30 blocks, d 576) in bfloat16, batch 16 x 128
(the default config's extraction batch); ``pythia-dims`` = a randomly initialised GPTNeoXForCausalLM
with Pythia-410m's exact dimensions (24 blocks, d 1024), bfloat16, two batches of 4 x 128 per call. Token ids are
uniform random (the cost of a forward pass does not depend on them).
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _common as C  # noqa: I001  (sets TQDM_DISABLE before pndecomp imports tqdm)
import numpy as np
import torch

from pndecomp.extract import extract_hidden_states

MODELS = {
    # name: (builder, batch_size, n_batches per call, length)
    "smollm2": (C.load_smollm2, 16, 1, 128),
    "pythia-dims": (C.build_pythia_dims, 4, 2, 128),
}


def run_model(name: str, args, workdir: Path) -> dict:
    builder, batch_size, n_batches, length = MODELS[name]
    if args.quick:
        batch_size, n_batches, length = 2, 1, 64
    batch_size = args.batch_size or batch_size
    n_batches = args.batches or n_batches
    length = args.length or length
    device = torch.device(args.device)
    model, note = builder(C.torch_dtype(args.dtype), device)
    n_blocks = model.config.num_hidden_layers
    layer_sets = {"full": [0, n_blocks - 1], "half": [0, n_blocks // 2 - 1]}
    n_windows = batch_size * n_batches
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (n_windows, length), dtype=np.int64)
    C.say(f"\n== {name}: {note}; {n_blocks} blocks, d_model {model.config.hidden_size}, {args.dtype}, "
          f"{device}; {n_batches} batch(es) of {batch_size} x {length} tokens per call; layer sets {layer_sets}")

    def bare():
        with torch.no_grad():
            for start in range(0, n_windows, batch_size):
                ids = torch.from_numpy(tokens[start:start + batch_size]).to(device)
                model.base_model(input_ids=ids, use_cache=False)

    def ours(layers):
        def run():
            out = workdir / "ours"
            out.mkdir(exist_ok=True)
            extract_hidden_states(model, tokens, layers, {layer: str(out / f"layer-{layer}.safetensors")
                                                          for layer in layers},
                                  surprisal_path=None, batch_size=batch_size, device=device,
                                  storage_dtype=torch.float16, metadata={"bench": True})
            shutil.rmtree(out)
        return run

    def naive(layers):
        def run():
            out = workdir / "naive"
            out.mkdir(exist_ok=True)
            with torch.no_grad():
                for i, start in enumerate(range(0, n_windows, batch_size)):
                    ids = torch.from_numpy(tokens[start:start + batch_size]).to(device)
                    hidden_states = model(input_ids=ids, output_hidden_states=True).hidden_states
                    torch.save({layer: hidden_states[layer + 1].to(torch.float16).cpu() for layer in layers},
                               out / f"batch-{i}.pt")
            shutil.rmtree(out)
        return run

    variants = {"bare": bare, "ours_full": ours(layer_sets["full"]), "ours_half": ours(layer_sets["half"]),
                "naive": naive(layer_sets["full"])}
    # One untimed naive call builds every kernel the others use (same shapes; naive adds the head).
    C.say("  warm-up: one untimed naive call")
    variants["naive"]()
    times, cpu_times = C.interleaved(variants, args.rounds, device, log=C.say)
    n_tokens = n_windows * length
    tps = {k: n_tokens / C.median(v) for k, v in times.items()}
    for k, v in times.items():
        C.say(f"  {k:10s} median {C.median(v):.3f} s/call ({C.spread(v)})  {tps[k]:9.0f} tokens/s; "
              f"CPU {C.median(cpu_times[k]):.3f} s/call  {n_tokens / C.median(cpu_times[k]):9.0f} tokens/CPU-s")
    # Primary: the median over rounds of each round's ratio (the variants of one round ran back to
    # back, so a load change between rounds cancels); the ratio of the medians is printed as well,
    # and the same ratios in CPU time, which other processes on the machine disturb far less.
    pairs = {"ours_full/bare": ("ours_full", "bare"), "ours_full/naive": ("ours_full", "naive"),
             "ours_half/naive": ("ours_half", "naive"), "ours_half/bare": ("ours_half", "bare"),
             "naive/bare": ("naive", "bare")}
    ratios = {k: C.median([tb / ta for ta, tb in zip(times[a], times[b])]) for k, (a, b) in pairs.items()}
    cpu_ratios = {k: C.median([tb / ta for ta, tb in zip(cpu_times[a], cpu_times[b])]) for k, (a, b) in pairs.items()}
    of_medians = {k: tps[a] / tps[b] for k, (a, b) in pairs.items()}
    C.say("  ratios, median of per-round tokens/s ratios: " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    C.say("  ratios of median tokens/s (cross-check):    " + "  ".join(f"{k} {v:.2f}" for k, v in of_medians.items()))
    C.say("  the same in CPU time (tokens/CPU-s):        " + "  ".join(f"{k} {v:.2f}" for k, v in cpu_ratios.items()))
    def verdict(value: float, target: float) -> str:
        return "met" if value >= target else "MISSED"
    C.say(f"  targets (wall / CPU time): ours_full/bare >= 0.9 -> {verdict(ratios['ours_full/bare'], 0.9)} / "
          f"{verdict(cpu_ratios['ours_full/bare'], 0.9)}; ours_half/naive >= 1.3 -> "
          f"{verdict(ratios['ours_half/naive'], 1.3)} / {verdict(cpu_ratios['ours_half/naive'], 1.3)}")
    return ratios, cpu_ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; 1 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="batches per timed call")
    parser.add_argument("--length", type=int, default=None, help="tokens per window")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help=C.THREADS_HELP)
    parser.add_argument("--quick", action="store_true", help="tiny batches, one round: a smoke run")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 5)
    C.set_threads(args.threads)
    C.say(f"machine: {C.machine()}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="pndecomp-bench-extract-") as tmp:
        for name in args.models:
            results[name] = run_model(name, args, Path(tmp))
    C.say("SUMMARY extract tokens/s ratios, wall (CPU time) " + " | ".join(
        f"{name}: ours/bare(full) {r['ours_full/bare']:.2f} ({c['ours_full/bare']:.2f}) [>=0.9], "
        f"ours/naive(full) {r['ours_full/naive']:.2f} ({c['ours_full/naive']:.2f}), "
        f"ours/naive(half) {r['ours_half/naive']:.2f} ({c['ours_half/naive']:.2f}) [>=1.3]"
        for name, (r, c) in results.items())
        + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
