"""The closed-form baselines' fit and score on one device: float64 statistics against float32 ones with
compensated sums (what pndecomp.baselines uses on a GPU without fast float64), side by side.

    .venv/bin/python bench/baselines.py                  # CPU, SmolLM2's width, ~1 min on 2 shared cores
    .venv/bin/python bench/baselines.py --device cuda --d 1024 --windows 4096 --length 256   # a GPU, Pythia-410m

States: a stationary VAR(1) per window with per-dimension offsets of 20-40 (so centring matters, as for the
LM's states), stored as float16 like the workflow's; the first ``--windows`` train the baselines, a quarter as
many are scored. For each of ``--baselines`` and each statistics dtype it reports the fit + score seconds
(median over interleaved rounds) and the eval R², then the float32/float64 time ratio and R² difference.
"""
from __future__ import annotations

import argparse

import _common as C  # noqa: I001  (sets TQDM_DISABLE before pndecomp imports tqdm)
import torch

from pndecomp.baselines import make_baseline, score


def states(windows: int, length: int, d: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    transition = torch.randn(d, d, generator=generator, dtype=torch.float64)
    transition *= 0.7 / torch.linalg.matrix_norm(transition, ord=2)
    hidden = torch.empty(windows, length, d, dtype=torch.float64)
    hidden[:, 0] = torch.randn(windows, d, generator=generator, dtype=torch.float64)
    for position in range(1, length):
        hidden[:, position] = hidden[:, position - 1] @ transition.T + torch.randn(
            windows, d, generator=generator, dtype=torch.float64)
    offsets = 20 + 20 * torch.rand(d, generator=generator, dtype=torch.float64)
    return (hidden + offsets).to(torch.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--windows", type=int, default=512, help="train windows (a quarter as many are scored)")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--baselines", nargs="+", default=["mean", "ridge_ar1", "ridge_ar4"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help=C.THREADS_HELP)
    args = parser.parse_args()
    C.set_threads(args.threads)
    device = torch.device(args.device)
    hidden = states(args.windows + args.windows // 4, args.length, args.d)
    train = [hidden[i:i + args.batch] for i in range(0, args.windows, args.batch)]
    evaluation = [hidden[i:i + args.batch] for i in range(args.windows, len(hidden), args.batch)]
    C.say(f"== {C.machine()}; device {device}; {args.windows} train windows x {args.length} x d {args.d}, "
          f"{len(hidden) - args.windows} scored, batches of {args.batch}")
    summary = []
    for name in args.baselines:
        r2 = {}

        def fit_and_score(dtype: torch.dtype, name: str = name, r2: dict = r2) -> None:
            baseline = make_baseline(name, device)
            baseline.dtype = dtype
            r2[dtype] = score(baseline.fit(train), evaluation)["r2"]

        wall, _ = C.interleaved({"float64": lambda: fit_and_score(torch.float64),
                                 "float32": lambda: fit_and_score(torch.float32)}, args.rounds, device, C.say)
        seconds = {dtype: C.median(wall[dtype]) for dtype in ("float64", "float32")}
        difference = r2[torch.float32] - r2[torch.float64]
        C.say(f"  {name}: float64 {seconds['float64']:.2f} s, R² {r2[torch.float64]:.6f}; float32 "
              f"{seconds['float32']:.2f} s, R² {r2[torch.float32]:.6f}")
        ratio = seconds["float32"] / seconds["float64"]
        summary.append(f"{name}: f32/f64 time {ratio:.2f}, f64 {seconds['float64']:.2f} s, "
                       f"R² f32 − f64 {difference:+.1e}")
    C.say(f"SUMMARY baselines ({device}, d {args.d}): " + " | ".join(summary))


if __name__ == "__main__":
    main()
