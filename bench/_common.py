"""Shared helpers for the benchmark scripts in bench/ (not a test suite: nothing here asserts on time).

Every script measures its variants side by side, interleaved (A, B, C, A, B, C, ...; the order is
rotated every round), and reports medians, so load from other work on the machine hits every
variant alike.
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

# extract.py's progress bar would interleave with our output; tqdm reads this at import time.
# ENV_SET records what we added, so pipeline.py can run Snakemake in the caller's own environment.
ENV_SET = [key for key in ("TQDM_DISABLE", "TOKENIZERS_PARALLELISM") if key not in os.environ]
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
MATERIALIZED = REPO / "results" / "embedded-smollm2" / "model"

# Pythia-410m's exact dimensions (EleutherAI/pythia-410m-deduped config.json), randomly initialised.
PYTHIA_410M_DIMS = dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096,
                        vocab_size=50304, rotary_pct=0.25, use_parallel_residual=True,
                        max_position_embeddings=2048)




THREADS_HELP = ("torch intra-op threads (default 1: on this shared 2-core machine two threads stall on OpenMP "
                "barriers whenever another process takes a core -- a bare SmolLM2 forward of 8 x 128 tokens took "
                "1.7-3.3 s with 1 thread vs 17-28 s with 2 at load average ~10; use 2 on an idle machine)")


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def machine() -> str:
    """One line: CPU model, cores torch uses, torch/transformers versions, load average."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import transformers

        tf = transformers.__version__
    except ImportError:  # pragma: no cover
        tf = "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cuda = f", cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}; {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}; torch {torch.__version__}, "
            f"transformers {tf}{cuda}; load avg {load}")


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def load_smollm2(dtype, device="cpu"):
    """The embedded SmolLM2-135M-Instruct: the materialized copy if the pipeline made one, else the GGUF."""
    from pndecomp import lm, model_files

    source = model_files.ModelSource(str(MATERIALIZED)) if (MATERIALIZED / "config.json").is_file() \
        else model_files.resolve_source({"id": "embedded"})
    start = time.perf_counter()
    model = lm.load_model(source, device, dtype)
    where = "materialized copy" if source.gguf_file is None else "GGUF (dequantized on load)"
    return model, f"SmolLM2-135M-Instruct from the {where}, {time.perf_counter() - start:.1f} s to load"


def build_pythia_dims(dtype, device="cpu", seed: int = 0):
    """GPTNeoXForCausalLM with Pythia-410m's exact dimensions, random weights, built from a config (no hub)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = GPTNeoXForCausalLM(GPTNeoXConfig(**PYTHIA_410M_DIMS))
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return model, f"random GPT-NeoX, Pythia-410m dims, {time.perf_counter() - start:.1f} s to build"


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, device="cpu",
                log: Callable[[str], None] = print) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(wall seconds, CPU seconds) per call of every variant over ``rounds`` rounds; each round runs
    every variant once, in an order rotated by one each round (A B C, B C A, C A B, ...).

    CPU seconds are this process's user + system time (``time.process_time``): with one torch
    thread they equal wall time on an idle machine, and unlike wall time they barely move when
    other processes take the core away.
    """
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        for name in order:
            gc.collect()
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        log(f"  round {round_ + 1}/{rounds}: " + "  ".join(f"{n} {wall[n][-1]:.3f}s (cpu {cpu[n][-1]:.3f}s)"
                                                          for n in names))
    return wall, cpu


# The machine's speed varies from day to day (a two-thread float32 matmul of this shape ran at 123 GFLOP/s
# on 2026-11-29, the day of the 892.5-s cold default, and at 46-67 on 2026-12-04), so a wall-time target
# is read against this probe, measured in the same run.
SPEED_SHAPE = (2048, 576, 1536)
REFERENCE_GFLOPS = 123.0  # 2026-11-29, idle 2-core EPYC, two threads (docs/benchmarks.md)


def matmul_gflops(threads: int = 2, repeats: int = 30, shape: tuple[int, int, int] = SPEED_SHAPE) -> float:
    """Median GFLOP/s of ``x @ w`` ([rows, inner] × [inner, cols] of ``shape``, float32) on ``threads`` torch
    threads."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows, inner, cols = shape
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(rows, inner, generator=generator)
        w = torch.randn(inner, cols, generator=generator)
        x @ w  # warm-up
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ w
            seconds.append(time.perf_counter() - start)
        return 2 * rows * inner * cols / statistics.median(seconds) / 1e9
    finally:
        torch.set_num_threads(previous)


def median(values) -> float:
    return statistics.median(values)


def spread(values) -> str:
    """min..max of a list of numbers, for the record."""
    return f"{min(values):.3g}..{max(values):.3g}" if values else "-"


def say(*args) -> None:
    print(*args, flush=True)

