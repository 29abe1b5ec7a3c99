"""Peak memory of the streaming stages at N and 4N windows: streaming should make it independent of N.

    .venv/bin/python bench/memory.py            # SmolLM2, ~3 min on 2 cores (~290 CPU-s)
    .venv/bin/python bench/memory.py --quick    # smaller batches and N, one round

Four stages, each measured in a fresh subprocess (``python bench/memory.py --child STAGE ...``) at N and 4N
windows, two rounds, interleaved: every round runs every stage at both sizes, the stages in an order rotated
by one each round, N before 4N in even rounds and after it in odd ones. ``--jobs`` (2) children run at once:
a peak is per process, so they do not disturb each other's.

* ``extract`` -- ``pndecomp.extract.extract_hidden_states`` on N random-token windows of 128 tokens, as
  the eval-split extraction does: the default config's layers, fp16 storage, surprisal on (the LM head
  runs and its float32 logits are the largest tensor of a batch). Batch 8; N = one batch.
* ``probe_features`` -- ``pndecomp.extract.extract_probe_features`` on N random-token windows, with a
  random predictor per layer: h_T, ĥ_T, r_T and the mean of h_<T streamed to one file per layer.
  Batch 8; N = one batch.
* ``decompose_eval`` -- ``pndecomp.stages.decompose.decompose_eval`` on N eval windows of random hidden states
  [N, 128, 576] (fp16, as extraction stores them) with a random predictor of the default config's shape,
  saved as the pipeline saves it: residuals streamed to disk, MSE/R² and per-window SSE.
* ``per_position_metrics`` -- ``pndecomp.stages.metrics.per_position_metrics`` on those hidden states,
  their residuals (made once, unmeasured) and random surprisal, with the default 1,000 bootstrap
  resamples.

For the last two, batch 64 and N = two batches: 128 and 512 windows. A stage that loaded its whole input
would show: the residuals of 512 windows are 512 × 127 × 576 × 4 B = 150 MB in float32, and every float64
copy doubles that, against a batch's working set of ~100-250 MB. (At 64 windows a batch's float64 arrays
are 38 MB, above glibc's largest mmap threshold, 32 MB, so they are mapped and unmapped as at the paper's
scale; at 32 windows, 19 MB, they come from the heap, and whether one of them is still resident at the
peak varies from run to run by one array.)

The LM runs in float32, as the embedded default config has it (bfloat16 is ~5.6x slower on AVX2-only
CPUs), loaded from a materialized copy made once per run. Every child reports

* ``ru_maxrss`` -- ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end: the process's peak resident
  set, model load included (extraction's original target);
* ``peak`` -- the peak resident set during the stage alone: the kernel's high-water mark (VmHWM) is
  reset through ``/proc/self/clear_refs`` after the imports, the model load and the inputs' set-up, and
  read afterwards; ``delta`` is that peak minus the resident set just before the stage. The LM's
  weights are memory-mapped by transformers, so their pages arrive with the first forward pass, inside
  the delta.

Targets: extraction ru_maxrss(4N) / ru_maxrss(N) <= 1.2 (ideally ~1); for the other three stages
delta(4N) / delta(N) <= 1.2, the stricter check: a loaded model or the imports would hide growth in a
whole-process number. Each stage's line also prints what ``pndecomp.resources`` estimates for it at these
sizes (its terms beyond the process, the token ids and the predictors, without the margin), to compare
with the measured delta. ``--model pythia-dims`` uses a random GPT-NeoX of Pythia-410m's dimensions
(batch 4) for the LM stages instead.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C  # noqa: I001

LAYERS = {"smollm2": [0, 7, 15, 22, 29], "pythia-dims": [0, 6, 12, 18, 23]}
BATCH = {"smollm2": 8, "pythia-dims": 4}
LENGTH = 128
STAGES = ("extract", "probe_features", "decompose_eval", "per_position_metrics")
LM_STAGES = ("extract", "probe_features")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _measured(run) -> dict:
    """Run ``run()`` with the high-water mark reset first: its peak and its delta over the RSS before it."""
    rss_before = _status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
        reset = True
    except OSError:
        reset = False
    start = time.perf_counter()
    out_mb = run()
    seconds = time.perf_counter() - start
    hwm = _status_kb("VmHWM")
    return {"seconds": seconds, "out_mb": out_mb, "rss_before_mb": rss_before / 1024,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_mb": hwm / 1024 if reset else None, "delta_mb": (hwm - rss_before) / 1024 if reset else None}


def _dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 2**20


def _config(data: Path) -> dict:
    return json.loads((data / "config.json").read_text())


def _load_lm(args):
    if args.model == "pythia-dims":
        return C.build_pythia_dims(C.torch_dtype(args.dtype))
    from pndecomp import lm, model_files

    start = time.perf_counter()
    model = lm.load_model(model_files.ModelSource(str(Path(args.data) / "model")), "cpu", C.torch_dtype(args.dtype))
    return model, (f"SmolLM2-135M-Instruct ({args.dtype}) from a materialized copy, "
                   f"{time.perf_counter() - start:.1f} s to load")


def child(args) -> None:
    import numpy as np
    import torch

    from pndecomp import extract, predictor
    from pndecomp.stages import decompose as decompose_stages
    from pndecomp.stages import metrics as metric_stages

    C.set_threads(args.threads)
    data = Path(args.data)
    note = ""
    with tempfile.TemporaryDirectory(prefix="pndecomp-bench-memory-") as tmp:
        tmp = Path(tmp)
        if args.child in LM_STAGES:
            model, note = _load_lm(args)
            layers = LAYERS[args.model]
            tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (args.windows, LENGTH),
                                                       dtype=np.int64)
            paths = {layer: str(tmp / f"layer-{layer}.safetensors") for layer in layers}
            if args.child == "extract":
                def run():
                    extract.extract_hidden_states(
                        model, tokens, layers, paths,
                        surprisal_path=None if args.no_surprisal else str(tmp / "surprisal.safetensors"),
                        batch_size=args.batch_size, device=torch.device("cpu"), storage_dtype=torch.float16,
                        metadata={})
                    return _dir_mb(tmp)
            else:
                predictors = {layer: predictor.load_predictor(data / f"predictor-{args.model}.safetensors")
                              for layer in layers}

                def run():
                    extract.extract_probe_features(model, tokens, predictors, paths, batch_size=args.batch_size,
                                                   device=torch.device("cpu"), storage_dtype=torch.float16,
                                                   metadata={})
                    return _dir_mb(tmp)
        elif args.child == "decompose_eval":
            config, w = _config(data), args.windows

            def run():
                decompose_stages.decompose_eval(config, str(data / f"hidden-{w}.safetensors"),
                                                str(data / "predictor.safetensors"), str(tmp / "residual.safetensors"),
                                                str(tmp / "scores.json"))
                return _dir_mb(tmp)
        else:
            config, w = _config(data), args.windows

            def run():
                metric_stages.per_position_metrics(
                    config, str(data / f"hidden-{w}.safetensors"), str(data / f"residual-{w}.safetensors"),
                    str(data / f"surprisal-{w}.safetensors"), str(data / f"eval-{w}.parquet"),
                    str(tmp / "per_position.parquet"))
                return _dir_mb(tmp)

        result = _measured(run)
    print("RESULT " + json.dumps({"stage": args.child, "windows": args.windows, "note": note, **result}), flush=True)


def setup(args) -> None:
    """The inputs every measured child reads, made once: a float32 safetensors copy of SmolLM2, random
    predictors (the default config's shape; for probe features one for SmolLM2's or the Pythia-dims
    model's width), and per eval size N and 4N random fp16 hidden states, surprisal, eval windows and the
    residuals (through decompose_eval itself). Prints what pndecomp.resources estimates per stage."""
    import numpy as np
    import pandas as pd
    import torch
    import yaml
    from snakemake.utils import validate

    from pndecomp import config as pnconfig
    from pndecomp import lm, model_files, predictor, resources, storage
    from pndecomp.stages import decompose as decompose_stages

    data = Path(args.data)
    config = yaml.safe_load((C.REPO / "config.yaml").read_text())
    validate(config, str(C.REPO / "workflow" / "schemas" / "config.schema.yaml"))
    config["device"] = "cpu"
    config["extraction"] = {**config["extraction"], "batch_size": args.decompose_batch, "dtype": "float16"}
    (data / "config.json").write_text(json.dumps(config))
    source = model_files.resolve_source({"id": "embedded"})
    materialized = C.MATERIALIZED if (C.MATERIALIZED / "config.json").is_file() else None
    if args.model == "smollm2" and materialized is None:
        lm.materialize(source, data / "model")
    elif args.model == "smollm2":
        (data / "model").symlink_to(materialized)
    shape = model_files.read_model_shape(source)
    torch.manual_seed(0)
    predictor.save_predictor(predictor.build_predictor(pnconfig.predictor_config(config, shape)),
                             data / "predictor.safetensors")
    lm_shape = shape if args.model == "smollm2" else model_files.ModelShape(24, 2048, 1024, 1024, "gpt_neox")
    predictor.save_predictor(predictor.build_predictor(pnconfig.predictor_config(config, lm_shape)),
                             data / f"predictor-{args.model}.safetensors")
    rng = np.random.default_rng(0)
    for w in args.decompose_windows:
        hidden = torch.from_numpy(rng.standard_normal((w, LENGTH, shape.d_model), dtype=np.float32)).half()
        storage.save_tensors({"hidden": hidden}, data / f"hidden-{w}.safetensors", {"layer": 15})
        storage.save_tensors({"surprisal": torch.from_numpy(rng.exponential(3.0, (w, LENGTH - 1))).float()},
                             data / f"surprisal-{w}.safetensors", {})
        pd.DataFrame({"doc_id": [f"doc{i // 2}" for i in range(w)]}).to_parquet(data / f"eval-{w}.parquet")
        decompose_stages.decompose_eval(config, str(data / f"hidden-{w}.safetensors"),
                                        str(data / "predictor.safetensors"), str(data / f"residual-{w}.safetensors"),
                                        str(data / f"scores-{w}.json"))
    # The formula's per-stage terms beyond the process itself, at these sizes (no margin).
    extras = resources.model_extras({"model": {"id": "embedded"}})
    estimate = {}
    for stage, rule, sizes in (("extract", "extract_eval_activations", {"batch_size": args.batch_size}),
                               ("probe_features", "probe_features", {"batch_size": args.batch_size}),
                               ("decompose_eval", "decompose_eval", {}),
                               ("per_position_metrics", "per_position_metrics", {})):
        view = {**config, "extraction": {**config["extraction"], **sizes}}
        terms = resources.STAGES[rule](resources.sizes(view, shape, extras)).memory
        # In place before the high-water mark's reset. The LM's weights are not: transformers maps their
        # safetensors file, and its pages arrive with the first forward pass, inside the measured delta.
        loaded = ("process", "token ids", "predictors")
        estimate[stage] = sum(v for k, v in terms.items() if k not in loaded) / 2**20
    print("RESULT " + json.dumps({"estimate_mb": estimate}), flush=True)


def start_child(args, *extra: str) -> subprocess.Popen:
    command = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
               "--decompose-batch", str(args.decompose_batch), "--threads", str(args.threads), "--dtype", args.dtype,
               "--data", args.data, *extra]
    command += ["--no-surprisal"] if args.no_surprisal else []
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=C.REPO)


def child_result(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"child failed (rc {proc.returncode}):\n{stdout}\n{stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(LAYERS), default="smollm2")
    parser.add_argument("--windows", type=int, default=None, help="N of the LM stages (default: one batch)")
    parser.add_argument("--rounds", type=int, default=None, help="default 2; 1 with --quick")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="windows per LM batch (default 8 for smollm2, 4 for pythia-dims; 4 with --quick)")
    parser.add_argument("--decompose-batch", type=int, default=None,
                        help="windows per batch of decompose_eval and per_position_metrics (default 64; 8 with "
                             "--quick); their N is two batches")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the LM's dtype")
    parser.add_argument("--no-surprisal", action="store_true", help="extraction: block outputs only (the train split)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--threads", type=int, default=1, help=C.THREADS_HELP)
    parser.add_argument("--jobs", type=int, default=2, help="children run at once (default 2: one per core here)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=[*STAGES, "setup"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--decompose-windows", type=lambda text: [int(w) for w in text.split(",")],
                        help=argparse.SUPPRESS)
    parser.add_argument("--windows-child", type=int, dest="child_windows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch_size = args.batch_size or (4 if args.quick else BATCH[args.model])
    args.decompose_batch = args.decompose_batch or (8 if args.quick else 64)
    if args.child == "setup":
        return setup(args)
    if args.child:
        args.windows = args.child_windows
        return child(args)
    chosen = [stage for stage in args.stages.split(",") if stage]
    n_lm = args.windows or args.batch_size
    n_dec = 2 * args.decompose_batch
    sizes = {stage: (n_lm if stage in LM_STAGES else n_dec) for stage in chosen}
    rounds = args.rounds or (1 if args.quick else 2)
    C.set_threads(args.threads)  # the children set it too; here it only makes the machine line true
    C.say(f"machine: {C.machine()}")
    C.say(f"model {args.model} ({args.dtype}), layers {LAYERS[args.model]}, LM batch {args.batch_size} x {LENGTH}, "
          f"surprisal {'off' if args.no_surprisal else 'on'}; decompose/per-position batch {args.decompose_batch}; "
          f"N/4N: " + ", ".join(f"{stage} {n}/{4 * n}" for stage, n in sizes.items())
          + f"; {rounds} round(s), one fresh process per measurement")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pndecomp-bench-memory-data-") as data:
        args.data = data
        prepared = child_result(start_child(args, "--child", "setup", "--decompose-windows", f"{n_dec},{4 * n_dec}"))
        C.say(f"  inputs prepared in {time.perf_counter() - started:.0f} s")
        results: dict[str, dict[int, list[dict]]] = {stage: {n: [], 4 * n: []} for stage, n in sizes.items()}
        for round_ in range(rounds):
            order = chosen[round_ % len(chosen):] + chosen[:round_ % len(chosen)]
            step = 1 if round_ % 2 == 0 else -1  # N first in even rounds, 4N first in odd ones
            jobs = [(stage, w) for stage in order for w in (sizes[stage], 4 * sizes[stage])[::step]]
            # --jobs children at a time: a peak is per process, so they do not disturb each other's.
            with ThreadPoolExecutor(args.jobs) as pool:
                futures = [pool.submit(lambda stage, w: child_result(start_child(
                    args, "--child", stage, "--windows-child", str(w))), stage, w) for stage, w in jobs]
                for (stage, windows), future in zip(jobs, futures, strict=True):
                    r = future.result()
                    results[stage][windows].append(r)
                    C.say(f"  round {round_ + 1}/{rounds} {stage:21s} windows {windows:4d}: ru_maxrss "
                          f"{r['ru_maxrss_mb']:.0f} MB, rss before {r['rss_before_mb']:.0f} MB, "
                          f"peak {r['peak_mb']:.0f} MB (+{r['delta_mb']:.0f} MB), output {r['out_mb']:.1f} MB, "
                          f"{r['seconds']:.1f} s")
    for stage in chosen:
        if stage in LM_STAGES and results[stage][sizes[stage]][0]["note"]:
            C.say(f"  ({results[stage][sizes[stage]][0]['note']})")
            break
    med = {stage: {w: {k: C.median([r[k] for r in rs]) for k in ("ru_maxrss_mb", "peak_mb", "delta_mb", "out_mb")}
                   for w, rs in by_w.items()} for stage, by_w in results.items()}
    parts = []
    for stage in chosen:
        n, m = sizes[stage], med[stage]
        delta_ratio = m[4 * n]["delta_mb"] / m[n]["delta_mb"]
        estimate = prepared["estimate_mb"][stage]
        for w in (n, 4 * n):
            C.say(f"  {stage:21s} N={w:4d}: median ru_maxrss {m[w]['ru_maxrss_mb']:.0f} MB, "
                  f"peak {m[w]['peak_mb']:.0f} MB (+{m[w]['delta_mb']:.0f} MB over the loaded inputs), "
                  f"output {m[w]['out_mb']:.1f} MB")
        growth = (m[4 * n]["delta_mb"] - m[n]["delta_mb"]) / (3 * n)
        C.say(f"  {stage:21s} delta 4N/N {delta_ratio:.3f}; growth {growth:.2f} MB per extra window (output grows "
              f"{(m[4 * n]['out_mb'] - m[n]['out_mb']) / (3 * n):.2f} MB per window); pndecomp.resources estimates "
              f"+{estimate:.0f} MB for it")
        if stage == "extract":
            ratio = m[4 * n]["ru_maxrss_mb"] / m[n]["ru_maxrss_mb"]
            peak_ratio = m[4 * n]["peak_mb"] / m[n]["peak_mb"]
            met = "met" if ratio <= 1.2 else "MISSED"
            C.say(f"  extract ru_maxrss ratio 4N/N {ratio:.3f} (target <= 1.2 -> {met})")
            parts.append(f"extract N={n}/4N={4 * n}: ru_maxrss 4N/N {ratio:.3f} [<=1.2], extraction-peak 4N/N "
                         f"{peak_ratio:.3f}, {m[n]['ru_maxrss_mb']:.0f} -> {m[4 * n]['ru_maxrss_mb']:.0f} MB")
        else:
            C.say(f"  {stage} delta ratio target <= 1.2 -> {'met' if delta_ratio <= 1.2 else 'MISSED'}")
            parts.append(f"{stage} N={n}/4N={4 * n}: peak-delta 4N/N {delta_ratio:.3f} [<=1.2], "
                         f"+{m[n]['delta_mb']:.0f} -> +{m[4 * n]['delta_mb']:.0f} MB")
    C.say(f"  the whole run took {time.perf_counter() - started:.0f} s")
    C.say(f"SUMMARY memory {args.model}: " + " | ".join(parts) + (" (quick)" if args.quick else ""))


if __name__ == "__main__":
    main()
