"""Peak memory of extraction at N and 4N windows: streaming should make it independent of N.

    .venv/bin/python bench/memory.py            # SmolLM2, N = 16 and 64 windows, 2 rounds, ~2-3 min
    .venv/bin/python bench/memory.py --quick    # batch 4, N = 4 and 16, one round

Every measurement is a fresh subprocess (``python bench/memory.py --child ...``), run interleaved
N, 4N, then 4N, N, and so on. The child loads the model, then runs ``pndecomp.extract.extract_hidden_states``
on N random-token windows of 128 tokens into a temporary directory, as the pipeline's eval-split
extraction does: the default config's layers, batch 16, fp16 storage, surprisal on (the LM head runs
and its logits are the largest tensor of a batch). It reports

* ``ru_maxrss`` -- ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end: the process's peak
  resident set, model load included (the number the target is about);
* ``extract_peak`` -- the peak resident set during extraction alone: the kernel's high-water mark
  (VmHWM) is reset through ``/proc/self/clear_refs`` after the model is loaded and read afterwards;
  ``extract_delta`` is that peak minus the resident set just before extraction.

Target: ru_maxrss(4N) / ru_maxrss(N) <= 1.2 (ideally ~1). The extract_peak ratio is the stricter
check, since the load peak can hide growth in ru_maxrss. Model: the embedded SmolLM2-135M-Instruct
in bfloat16 (``--model pythia-dims`` for a random GPT-NeoX with Pythia-410m's dimensions, batch 4).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C  # noqa: I001

LAYERS = {"smollm2": [0, 7, 15, 22, 29], "pythia-dims": [0, 6, 12, 18, 23]}
BATCH = {"smollm2": 16, "pythia-dims": 4}
LENGTH = 128


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> None:
    import numpy as np
    import torch

    from pndecomp.extract import extract_hidden_states

    C.set_threads(args.threads)
    if args.model == "smollm2":
        model, note = C.load_smollm2(torch.bfloat16)
    else:
        model, note = C.build_pythia_dims(torch.bfloat16)
    layers = LAYERS[args.model]
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (args.windows, LENGTH), dtype=np.int64)
    rss_before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pndecomp-bench-memory-") as tmp:
        extract_hidden_states(
            model, tokens, layers, {layer: f"{tmp}/layer-{layer}.safetensors" for layer in layers},
            surprisal_path=None if args.no_surprisal else f"{tmp}/surprisal.safetensors",
            batch_size=args.batch_size, device=torch.device("cpu"), storage_dtype=torch.float16, metadata={})
        out_bytes = sum(p.stat().st_size for p in Path(tmp).iterdir())
    seconds = time.perf_counter() - start
    hwm = _status_kb("VmHWM")
    print("RESULT " + json.dumps({
        "windows": args.windows, "note": note, "seconds": seconds, "out_mb": out_bytes / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024,
        "extract_peak_mb": hwm / 1024 if reset else None,
        "extract_delta_mb": (hwm - rss_before) / 1024 if reset else None}), flush=True)


def measure(args, windows: int) -> dict:
    command = [sys.executable, __file__, "--child", "--windows", str(windows), "--model", args.model,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    command += ["--no-surprisal"] if args.no_surprisal else []
    proc = subprocess.run(command, capture_output=True, text=True, cwd=C.REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(LAYERS), default="smollm2")
    parser.add_argument("--windows", type=int, default=None, help="N (default: one batch)")
    parser.add_argument("--rounds", type=int, default=None, help="default 2; 1 with --quick")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per batch (default 16 for smollm2, 4 for pythia-dims; 4 with --quick)")
    parser.add_argument("--no-surprisal", action="store_true", help="block outputs only (the train-split extraction)")
    parser.add_argument("--threads", type=int, default=1, help=C.THREADS_HELP)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    args.batch_size = args.batch_size or (4 if args.quick else BATCH[args.model])
    n = args.windows or args.batch_size
    rounds = args.rounds or (1 if args.quick else 2)
    C.set_threads(args.threads)  # the children set it too; here it only makes the machine line true
    C.say(f"machine: {C.machine()}")
    C.say(f"model {args.model}, layers {LAYERS[args.model]}, batch {args.batch_size} x {LENGTH}, "
          f"surprisal {'off' if args.no_surprisal else 'on'}; N = {n}, 4N = {4 * n}; {rounds} round(s), "
          "one fresh process per measurement")
    results: dict[int, list[dict]] = {n: [], 4 * n: []}
    for round_ in range(rounds):
        for windows in (n, 4 * n) if round_ % 2 == 0 else (4 * n, n):
            r = measure(args, windows)
            results[windows].append(r)
            C.say(f"  round {round_ + 1}/{rounds} windows {windows:4d}: ru_maxrss {r['ru_maxrss_mb']:.0f} MB, "
                  f"rss before extraction {r['rss_before_mb']:.0f} MB, extraction peak {r['extract_peak_mb']:.0f} MB "
                  f"(+{r['extract_delta_mb']:.0f} MB), output {r['out_mb']:.0f} MB, {r['seconds']:.1f} s")
    C.say(f"  ({results[n][0]['note']})")
    med = {w: {k: C.median([r[k] for r in rs]) for k in ("ru_maxrss_mb", "extract_peak_mb", "extract_delta_mb",
                                                            "out_mb")} for w, rs in results.items()}
    ratio = med[4 * n]["ru_maxrss_mb"] / med[n]["ru_maxrss_mb"]
    peak_ratio = med[4 * n]["extract_peak_mb"] / med[n]["extract_peak_mb"]
    growth = (med[4 * n]["extract_peak_mb"] - med[n]["extract_peak_mb"]) / (3 * n)
    for w in (n, 4 * n):
        C.say(f"  N={w:4d}: median ru_maxrss {med[w]['ru_maxrss_mb']:.0f} MB, extraction peak "
              f"{med[w]['extract_peak_mb']:.0f} MB (+{med[w]['extract_delta_mb']:.0f} MB over the loaded model), "
              f"output {med[w]['out_mb']:.0f} MB")
    C.say(f"  ru_maxrss ratio 4N/N {ratio:.3f} (target <= 1.2 -> {'met' if ratio <= 1.2 else 'MISSED'}); "
          f"extraction-peak ratio {peak_ratio:.3f}; growth {growth:.2f} MB per extra window "
          f"(output grows {(med[4 * n]['out_mb'] - med[n]['out_mb']) / (3 * n):.2f} MB per window)")
    C.say(f"SUMMARY memory {args.model} N={n}/4N={4 * n}: ru_maxrss 4N/N {ratio:.3f} [<=1.2], extraction-peak 4N/N "
          f"{peak_ratio:.3f}, {med[n]['ru_maxrss_mb']:.0f} -> {med[4 * n]['ru_maxrss_mb']:.0f} MB"
          + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
