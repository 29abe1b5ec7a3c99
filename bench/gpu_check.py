"""The Python half of bench/gpu.sh: the offline model, the reduced paper config, a peak-memory wrapper for
the benches, and the report. See bench/gpu.sh for what runs when.

    python bench/gpu_check.py model DIR [--smoke]
    python bench/gpu_check.py config FILE --model DIR --device cuda [--smoke]
    python bench/gpu_check.py peak bench/extract.py --device cuda ...    # runs it, then prints PEAK lines
    python bench/gpu_check.py report --config FILE --logs DIR --since EPOCH --wall SECONDS --rc STATUS
"""
from __future__ import annotations

import argparse
import re
import resource
import runpy
import sys
import sysconfig
from datetime import datetime
from pathlib import Path

import _common as C  # noqa: I001
import yaml

SCHEMA = C.REPO / "workflow" / "schemas" / "config.schema.yaml"
# NVIDIA H200 SXM, dense bfloat16 (the datasheet's 1,979 TFLOP/s is with 2:4 sparsity).
PEAK_BF16_TFLOPS = 989.0
SMOKE_DIMS = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=4, intermediate_size=256,
                  rotary_pct=0.25, use_parallel_residual=True, max_position_embeddings=2048)
TOKENIZER_TEXT_BYTES = 4_000_000  # of the standard library's sources: enough for a BPE of 16k tokens


def stdlib_texts(limit: int):
    """Python sources of the standard library, about ``limit`` bytes: text on every machine, offline."""
    seen = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        if seen >= limit:
            break
        if "site-packages" in path.parts:
            continue
        text = path.read_text(errors="replace")
        seen += len(text)
        yield text


def build_model(directory: Path, smoke: bool) -> None:
    """A randomly initialised GPT-NeoX (Pythia-410m's dimensions, or toy ones with --smoke) with a byte-level
    BPE tokenizer trained on the standard library, saved with save_pretrained: a local model directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    vocab = 2048 if smoke else 16384
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(stdlib_texts(TOKENIZER_TEXT_BYTES // (8 if smoke else 1)),
                            trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    dims = dict(SMOKE_DIMS, vocab_size=len(tokenizer)) if smoke else dict(C.PYTHIA_410M_DIMS)
    if len(tokenizer) > dims["vocab_size"]:
        raise SystemExit(f"tokenizer vocabulary {len(tokenizer)} > the model's vocab_size {dims['vocab_size']}")
    config = GPTNeoXConfig(**dims, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config)
    model.to(torch.float32 if smoke else torch.float16).save_pretrained(directory)  # Pythia ships fp16 weights
    tokenizer.save_pretrained(directory)
    C.say(f"model: random GPT-NeoX {dims['num_hidden_layers']} blocks x d {dims['hidden_size']}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, tokenizer {len(tokenizer)} "
          f"tokens, in {directory}")


def schema_train_keys() -> set[str]:
    return set(yaml.safe_load(SCHEMA.read_text())["properties"]["train"]["properties"])


def reduced_config(model_dir: str, device: str, smoke: bool, train_keys: set[str]) -> tuple[dict, list[str]]:
    """(the reduced paper config, notes): Pythia-410m's layers and shapes at the paper's T, predictor and
    batch, stream training with joint layers (when the schema has train.joint_layers), >= 1,000 steps on
    the embedded corpus, small eval and probe sizes. --smoke: the same stages at toy sizes on the CPU."""
    notes = []
    train = {"data": "stream", "joint_layers": True, "steps": 1000, "batch_size": 32, "warmup_steps": 100,
             "eval_every": 100, "eval_windows": 256, "checkpoint_every": 500,
             # a throughput check: the small corpus's window pool may be reused many times
             "max_epochs": 1000,
             # a fixed number of steps, as the paper's (config.yaml's plateau rule could stop it early)
             "schedule": "cosine", "stop_patience": None}
    if smoke:
        train.update(steps=20, batch_size=4, warmup_steps=2, eval_every=5, eval_windows=8, checkpoint_every=10)
    for key in ("joint_layers", "max_epochs"):
        if key not in train_keys:
            del train[key]
            notes.append(f"train.{key} is not in {SCHEMA.relative_to(C.REPO)}: left out"
                         + (" (stream mode trains one layer per job, one LM pass per step each)"
                            if key == "joint_layers" else ""))
    config = {
        # on the embedded default's settings (config.yaml) for every key not set here
        "extends": str(C.REPO / "config.yaml"),
        "experiment": "gpu-check-smoke" if smoke else "gpu-check",
        "seed": 0,
        "device": device,
        "model": {"id": model_dir, "dtype": "auto"},
        "layers": [0, 3] if smoke else [0, 6, 12, 18, 23],
        "corpus": {"source": "embedded", "embedded": {"max_files_per_domain": 40 if smoke else 150}},
        "windows": {"length": 32 if smoke else 256, "per_document": 4,
                    "predictor_train": 64 if smoke else 512, "predictor_val": 16 if smoke else 256,
                    "predictor_eval": 32 if smoke else 512},
        "extraction": {"batch_size": 16 if smoke else 64},
        "predictor": {"d_head": 16 if smoke else 128, "width_multiplier": 1 if smoke else 4},
        "train": train,
        "metrics": {"hide_first_positions": 4 if smoke else 32, "bootstrap": 50 if smoke else 200},
        "probes": {"tasks": ["domain", "next_token_type_8", "domain_control", "next_token_type_8_control"],
                   "caps": {"domain": ({"probe_train": 20, "probe_val": 5, "probe_test": 10} if smoke else
                                       {"probe_train": 100, "probe_val": 20, "probe_test": 40}),
                            "next_token_type_8": ({"probe_train": 160, "probe_val": 40, "probe_test": 80} if smoke
                                                  else {"probe_train": 800, "probe_val": 160, "probe_test": 320})},
                   "min_test_per_class": 2 if smoke else 10},
    }
    if smoke:  # config.yaml patches from position 33: past the toy windows' end
        config["interventions"] = {"from_position": 9}
    return config, notes


def write_config(path: Path, model_dir: str, device: str, smoke: bool) -> None:
    config, notes = reduced_config(model_dir, device, smoke, schema_train_keys())
    for note in notes:
        C.say(f"NOTE: {note}")
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    C.say(f"config: {path} (experiment {config['experiment']}, device {device}, T {config['windows']['length']}, "
          f"train {config['train']})")


def run_with_peak(script: str, args: list[str]) -> None:
    """Run a bench script as __main__, then print its process's peak GPU memory (torch's allocator) and RSS."""
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        import torch

        if torch.cuda.is_available():
            C.say(f"PEAK gpu_memory_allocated_bytes {torch.cuda.max_memory_allocated()}")
        C.say(f"PEAK rss_bytes {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")


def block_parameters(model_config, n_blocks: int) -> int:
    """Parameters of the first ``n_blocks`` transformer blocks (no embedding, no head), counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for block in list(model.base_model.layers)[:n_blocks] for p in block.parameters())


def predictor_parameters(d_model: int, n_heads: int, d_head: int) -> int:
    import torch

    from pndecomp.predictor import build_predictor
    from pndecomp.predictor_kinds import AttentionConfig

    with torch.device("meta"):
        return sum(p.numel() for p in build_predictor(AttentionConfig(d_model, n_heads, d_head)).parameters())


def tensor_parameters(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        total = 0
        for key in handle.keys():
            size = 1
            for extent in handle.get_slice(key).get_shape():
                size *= extent
            total += size
        return total


EVAL_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*?: step (\d+)\s+train loss")


def steady_steps_per_second(log_path: Path) -> float | None:
    """Steps/s between the first and the last evaluation a training log records (model loading, the
    first steps' set-up and the final save excluded; evaluations included)."""
    times = {}
    for line in log_path.read_text(errors="replace").splitlines():
        match = EVAL_LINE.match(line)
        if match:
            times.setdefault(int(match.group(2)), datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    if len(times) < 2:
        return None
    first, last = min(times), max(times)
    seconds = (times[last] - times[first]).total_seconds()
    return (last - first) / seconds if seconds > 0 else None


def bench_lines(path: Path, pattern: str) -> dict[str, float]:
    found = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(pattern, line)
            if match:
                found[match.group(1)] = float(match.group(2))
    return found


def peaks(path: Path) -> dict[str, int]:
    return {k: int(v) for k, v in bench_lines(path, r"^PEAK (\w+) (\d+)$").items()}


def mfu(flops_per_second: float) -> str:
    return f"{100 * flops_per_second / (PEAK_BF16_TFLOPS * 1e12):.3g} %"


def millions(n: int) -> str:
    return f"{n / 1e6:.3g} M"


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def workflow_lines(config: dict, logs: Path, since: float, wall: float, rc: int) -> list[str]:
    """The workflow's wall time, job seconds per rule, failed rules, training steps/s with MFU, and peak GPU
    memory."""
    import pipeline
    from transformers import AutoConfig

    out = C.REPO / "results" / config["experiment"]
    T, batch, layers = config["windows"]["length"], config["train"]["batch_size"], config["layers"]
    joint = out / "logs" / "train_predictors_joint" / "attn1.log"
    lines = [f"workflow: snakemake all, cold ({len(layers)} layers, T {T}, {config['train']['steps']} stream steps "
             f"of {batch} windows, {'joint layers' if joint.is_file() else 'one job per layer'}): {wall:.0f} s wall, "
             f"rc {rc}",
             "  job seconds per rule: " + ", ".join(f"{rule} {seconds:.0f}" for rule, seconds
                                                    in pipeline.rule_seconds(config["experiment"], since).items())]
    snakemake_log = logs / "snakemake.log"
    failed = sorted(set(re.findall(r"^Error in rule (\w+):", snakemake_log.read_text(), re.MULTILINE))
                    if snakemake_log.is_file() else [])
    if failed:
        lines.append(f"  FAILED rules (the others ran: --keep-going): {', '.join(failed)}; see job_logs.tar.gz")
    model_config = AutoConfig.from_pretrained(config["model"]["id"])
    predictor_files = sorted(out.glob("predictors/*/layer-*/predictor.safetensors"))
    n_pred = tensor_parameters(predictor_files[0]) if predictor_files else 0
    # Joint: one job trains every layer from one LM pass up to the deepest; else one job per layer.
    jobs = {joint: (layers, max(layers))} if joint.is_file() else {
        out / "logs" / "train_predictor" / "attn1" / f"layer-{layer}.log": ([layer], layer) for layer in layers}
    for log_path, (trained, deepest) in jobs.items():
        rate = steady_steps_per_second(log_path) if log_path.is_file() else None
        if rate is None:
            lines.append(f"  training ({log_path.name}): no evaluations with times in the log")
            continue
        tokens, n_lm = rate * batch * T, block_parameters(model_config, deepest + 1)
        lines.append(f"  training ({log_path.name}): {rate:.2f} steps/s, {tokens:,.0f} tokens/s; predictor training "
                     f"MFU {mfu(6 * n_pred * len(trained) * tokens)} ({len(trained)} x {millions(n_pred)} parameters), "
                     f"LM forward MFU {mfu(2 * n_lm * tokens)} ({millions(n_lm)} block parameters)")
    samples = logs / "gpu_memory.csv"
    used = [int(line.split(",")[0]) for line in samples.read_text().splitlines()
            if line[:1].isdigit()] if samples.is_file() else []
    if used:
        lines.append("  peak GPU memory in use during the workflow (nvidia-smi: every job and CUDA context "
                     f"together): {gib(max(used) * 2**20)}")
    return lines


def bench_report_lines(logs: Path) -> list[str]:
    """tokens/s of bench/extract.py and steps/s of bench/train.py (the Pythia-dims shapes), with MFU and the
    processes' peak memory, and their SUMMARY lines verbatim."""
    from transformers import GPTNeoXConfig

    lines = []
    extract_log, train_log = logs / "bench_extract.log", logs / "bench_train.log"
    tokens = bench_lines(extract_log, r"^\s+(bare|ours_full|ours_half|naive)\s+median .*?\)\s+(\d+) tokens/s;")
    n_lm = block_parameters(GPTNeoXConfig(**C.PYTHIA_410M_DIMS), C.PYTHIA_410M_DIMS["num_hidden_layers"])
    if "ours_full" in tokens:
        lines.append("bench/extract.py (pythia-dims): " + ", ".join(f"{k} {v:,.0f}" for k, v in tokens.items())
                     + f" tokens/s; LM forward MFU of ours_full {mfu(2 * n_lm * tokens['ours_full'])} "
                     f"({millions(n_lm)} block parameters)")
    else:
        lines.append(f"bench/extract.py: no tokens/s lines in {extract_log.name}")
    steps = bench_lines(train_log, r"^\s+pythia-dims\s+(cache|stream)\s+([\d.]+) steps/s")
    shape = re.search(r"predictor (\d+) heads x (\d+) on d_model (\d+); batch (\d+) x (\d+)",
                      train_log.read_text() if train_log.is_file() else "")
    if steps and shape:
        heads, d_head, d_model, batch, T = map(int, shape.groups())
        n_pred = predictor_parameters(d_model, heads, d_head)
        lines.append(f"bench/train.py (pythia-dims, batch {batch} x {T}, one layer): " + ", ".join(
            f"{mode} {rate:.3g} steps/s (predictor training MFU {mfu(6 * n_pred * rate * batch * T)})"
            for mode, rate in steps.items()))
        # The joint stream run (five predictors, one LM pass up to block 23 per step), one line per round.
        joint = re.findall(r"pythia-dims\s+joint\s+(\d+) layers: step ([\d.]+) s", train_log.read_text())
        if joint:
            n_layers, rate = int(joint[0][0]), 1 / C.median([float(step) for _, step in joint])
            n_lm = block_parameters(GPTNeoXConfig(**C.PYTHIA_410M_DIMS), 24)
            tokens = rate * batch * T
            lines.append(f"  joint stream, {n_layers} layers: {rate:.3g} steps/s, {tokens:,.0f} tokens/s; predictor "
                         f"training MFU {mfu(6 * n_pred * n_layers * tokens)}, LM forward MFU {mfu(2 * n_lm * tokens)}")
    else:
        lines.append(f"bench/train.py: no steps/s lines in {train_log.name}")
    for path in (extract_log, train_log):
        if peaks(path):
            lines.append(f"  {path.stem} process peak: " + ", ".join(f"{k} {gib(v)}" for k, v in peaks(path).items()))
        text = path.read_text() if path.is_file() else ""
        lines += [line for line in text.splitlines() if line.startswith("SUMMARY")]
    return lines


def report(config_path: Path, logs: Path, since: float, wall: float, rc: int, smoke: bool) -> str:
    config = yaml.safe_load(config_path.read_text())
    lines = [f"== pndecomp GPU check{' (CPU smoke: toy sizes, numbers not meaningful)' if smoke else ''}",
             f"machine: {C.machine()}",
             f"MFU = model FLOPs / the H200's dense bf16 peak, {PEAK_BF16_TFLOPS:.0f} TFLOP/s: LM forward 2 N per "
             "token (N: parameters of the blocks run; no embedding, no head), predictor training 6 N per token; "
             "attention's T^2 terms left out"]
    return "\n".join(lines + workflow_lines(config, logs, since, wall, rc) + bench_report_lines(logs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model")
    model.add_argument("directory", type=Path)
    model.add_argument("--smoke", action="store_true")
    config = commands.add_parser("config")
    config.add_argument("file", type=Path)
    config.add_argument("--model", required=True)
    config.add_argument("--device", required=True)
    config.add_argument("--smoke", action="store_true")
    peak = commands.add_parser("peak")
    peak.add_argument("script")
    peak.add_argument("args", nargs=argparse.REMAINDER)
    summary = commands.add_parser("report")
    summary.add_argument("--config", type=Path, required=True)
    summary.add_argument("--logs", type=Path, required=True)
    summary.add_argument("--since", type=float, required=True, help="epoch seconds when the workflow started")
    summary.add_argument("--wall", type=float, required=True, help="its wall seconds")
    summary.add_argument("--rc", type=int, required=True, help="its exit status")
    summary.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.command == "model":
        build_model(args.directory, args.smoke)
    elif args.command == "config":
        write_config(args.file, args.model, args.device, args.smoke)
    elif args.command == "peak":
        run_with_peak(args.script, args.args)
    else:
        C.say(report(args.config, args.logs, args.since, args.wall, args.rc, args.smoke))


if __name__ == "__main__":
    main()
