"""The rules' SLURM requests (``pndecomp.resources``): they cover the measured peaks, grow with the
config's sizes, and at the paper's scale exceed what its stages hold.

The measured tests run a stage in a fresh subprocess on inputs made here (random hidden states, a
random predictor saved as the pipeline saves it, the tiny LM for the probe features) and compare the
child's peak resident set (VmHWM, imports included) with the formula's estimate of the
script's peak. ``tiny`` is the tiny workflow's config and model, where the process itself dominates;
``wide`` is the same config at d_model 384, T 128, 64 windows per batch and 256 eval windows, where
one batch's working set (float64 copies, the predictor's attention) is a visible share of the peak.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from snakemake.utils import validate
from tiny import write_config

from pndecomp import config as pnconfig
from pndecomp import model_files, predictor, resources, storage
from pndecomp import predictor_entries as pnentries

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")
PYTHIA_410M = model_files.ModelShape(n_blocks=24, context_length=2048, d_model=1024, attention_width=1024,
                                     model_type="gpt_neox")
PYTHIA_EXTRAS = {"vocab": 50304, "ffn_width": 4096}
#: The formula may ask for at most this many times the measured peak (so that "covers" is not vacuous).
MAX_OVER = 3.0

CHILD = r"""
import json, sys
from pathlib import Path

def status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

import torch
torch.set_num_threads(1)
import importlib
args = json.loads(sys.argv[1])
rss_before = status_kb("VmRSS")
getattr(importlib.import_module(f"pndecomp.stages.{args['module']}"), args["stage"])(*args["args"])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so it would include the forking parent's size.
print("RESULT " + json.dumps({"peak_mb": status_kb("VmHWM") / 1024, "rss_after_imports_mb": rss_before / 1024}))
"""


def load_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    validate(config, SCHEMA)  # fills in the schema's defaults
    return config


@pytest.fixture(scope="module")
def paper_config() -> dict:
    return load_config(REPO / "configs" / "paper.yaml")


def run_child(module: str, stage: str, *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"module": module, "stage": stage, "args": args})],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    raise AssertionError(f"{stage} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


CASES = {
    "tiny": ({}, None),
    "wide": ({"windows.length": 128, "windows.predictor_eval": 256, "extraction.batch_size": 64},
             model_files.ModelShape(n_blocks=4, context_length=None, d_model=384, attention_width=384,
                                    model_type="gpt_neox")),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_requests_cover_the_measured_peak_of_each_streaming_stage(case, tmp_path, tiny_model_dir, tiny_corpus, capsys):
    overrides, shape = CASES[case]
    config = load_config(write_config(tmp_path / "config.yaml", tiny_model_dir, tiny_corpus,
                                      **{"extraction.dtype": "float16", **overrides}))
    tiny_shape = model_files.read_model_shape(model_files.ModelSource(str(tiny_model_dir)))
    shape = shape or tiny_shape
    extras = resources.model_extras(config)
    assert extras == {"vocab": 300, "ffn_width": 64}  # from the tiny model's config.json
    estimates = resources.estimates(config, shape, extras)
    sizes = resources.sizes(config, shape, extras)

    n_windows, length, d_model = sizes.windows["predictor_eval"], sizes.length, shape.d_model
    rng = np.random.default_rng(0)
    hidden = tmp_path / "hidden.safetensors"
    storage.save_tensors({"hidden": torch.from_numpy(rng.standard_normal((n_windows, length, d_model),
                                                                          dtype=np.float32)).half()}, hidden,
                         {"layer": 2})
    torch.manual_seed(0)
    weights = tmp_path / "predictor.safetensors"
    predictor.save_predictor(predictor.build_predictor(pnconfig.predictor_config(config, shape)), weights)
    surprisal = tmp_path / "surprisal.safetensors"
    storage.save_tensors({"surprisal": torch.from_numpy(rng.exponential(3.0, (n_windows, length - 1))).float()},
                         surprisal, {})
    eval_windows = tmp_path / "eval.parquet"
    pd.DataFrame({"group": [f"d{i // 2}" for i in range(n_windows)]}).to_parquet(eval_windows)
    residual, scores = tmp_path / "residual.safetensors", tmp_path / "scores.json"
    runs = {
        "decompose_eval": ("decompose", config, str(hidden), str(weights), str(residual), str(scores)),
        "per_position_metrics": ("metrics", config, str(hidden), str(residual), str(surprisal),
                                 str(eval_windows), str(tmp_path / "per_position.parquet")),
    }
    if case == "tiny":  # the LM stage, on the tiny model itself: as many probe windows as the caps allow
        n_probe = sizes.windows["probe"]
        probe_windows = tmp_path / "probe.parquet"
        tokens = rng.integers(0, extras["vocab"], (n_probe, length), dtype=np.int32)
        pd.DataFrame({"tokens": list(tokens)}).to_parquet(probe_windows)
        layers = [str(layer) for layer in config["layers"]]
        runs["probe_features"] = ("decompose", config, None, str(probe_windows), dict.fromkeys(layers, str(weights)),
                                  {layer: str(tmp_path / f"features-{layer}.safetensors") for layer in layers})
    for stage, (module, *args) in runs.items():
        measured = run_child(module, stage, *args)
        estimate = estimates[stage]
        formula_mb = resources.MARGIN * estimate.script_mb
        request = estimate.request()
        with capsys.disabled():
            terms = ", ".join(f"{name} {value / resources.MB:.0f}" for name, value in estimate.memory.items())
            print(f"\n[test_resources] {case} {stage}: measured peak {measured['peak_mb']:.0f} MB "
                  f"({measured['rss_after_imports_mb']:.0f} after imports); estimate {estimate.script_mb:.0f} MB "
                  f"({terms}), x{resources.MARGIN} = {formula_mb:.0f} MB; job request {request.mem_mb} MB")
        assert measured["peak_mb"] <= formula_mb, (stage, measured, estimate.memory)
        assert formula_mb <= MAX_OVER * measured["peak_mb"], (stage, measured, estimate.memory)
        assert request.mem_mb >= measured["peak_mb"] + resources.SNAKEMAKE_MB


def test_paper_requests_exceed_what_its_stages_hold(paper_config):
    """At the paper's scale (Pythia-410m, 8,192 eval windows of 256 tokens) each request covers the stage's
    own arrays: a batch's working set for the streaming stages, the O(windows) arrays where they exist."""
    estimates = resources.estimates(paper_config, PYTHIA_410M, PYTHIA_EXTRAS)
    request = {rule: estimate.request() for rule, estimate in estimates.items()}
    s = resources.sizes(paper_config, PYTHIA_410M, PYTHIA_EXTRAS)
    mb = resources.MB
    batch_float64 = s.extraction_batch * s.length * s.d_model * 8 / mb  # one batch of hidden states in float64
    assert request["decompose_eval"].mem_mb > 3 * batch_float64
    assert request["per_position_metrics"].mem_mb > 3 * batch_float64 + 8 * 8192 * 255 / mb
    assert request["layer_scores"].mem_mb > 3 * batch_float64 + 1000 * 8192 * 8 / mb  # bootstrap weights
    weights = 405e6 * 4 / mb  # Pythia-410m in float32
    logits = s.extraction_batch * s.length * 50304 * 4 / mb  # one batch's float32 logits for surprisal
    assert request["extract_eval_activations"].mem_mb > weights + logits
    assert request["probe_features"].mem_mb > weights
    assert request["fit_probe"].mem_mb > 4 * 110_000 * 1024 * 4 / mb  # one layer's features, read whole
    cache = resources.estimates({**paper_config, "train": {**paper_config["train"], "data": "cache",
                                                           "joint_layers": False}}, PYTHIA_410M, PYTHIA_EXTRAS)
    assert cache["train_predictor"].request().mem_mb > 8192 * 256 * 1024 * 2 / mb  # the cached activations
    # The paper's training is the longest job: hours, not minutes, even on the assumed GPU.
    assert request["train_predictors_joint"].runtime > 120


@pytest.mark.parametrize("split", ["predictor_eval", "predictor_train"])
def test_requests_grow_with_the_number_of_windows(paper_config, split):
    config = {**paper_config, "train": {**paper_config["train"], "data": "cache", "joint_layers": False}}
    base = {rule: e.request() for rule, e in resources.estimates(config, PYTHIA_410M, PYTHIA_EXTRAS).items()}
    more = {**config, "windows": {**config["windows"], split: 4 * config["windows"][split]}}
    grown = {rule: e.request() for rule, e in resources.estimates(more, PYTHIA_410M, PYTHIA_EXTRAS).items()}
    for rule in base:
        assert grown[rule].mem_mb >= base[rule].mem_mb and grown[rule].runtime >= base[rule].runtime, rule
    if split == "predictor_eval":
        for rule in ("per_position_metrics", "layer_scores"):
            assert grown[rule].mem_mb > base[rule].mem_mb, rule
        for rule in ("per_position_metrics", "layer_scores", "decompose_eval", "extract_eval_activations"):
            assert grown[rule].runtime > base[rule].runtime, rule
    else:
        assert grown["train_predictor"].mem_mb > base["train_predictor"].mem_mb
        assert grown["extract_train_activations"].runtime > base["extract_train_activations"].runtime


def test_probe_requests_grow_with_the_caps(paper_config):
    caps = {task: {split: 2 * n for split, n in values.items()}
            for task, values in paper_config["probes"]["caps"].items()}
    more = {**paper_config, "probes": {**paper_config["probes"], "caps": caps}}
    base = resources.estimates(paper_config, PYTHIA_410M, PYTHIA_EXTRAS)
    grown = resources.estimates(more, PYTHIA_410M, PYTHIA_EXTRAS)
    for rule in ("probe_features", "fit_probe"):
        assert grown[rule].request().mem_mb > base[rule].request().mem_mb, rule
        assert grown[rule].request().runtime > base[rule].request().runtime, rule


def test_unknown_vocabulary_counts_the_largest(paper_config):
    known = resources.sizes(paper_config, PYTHIA_410M, PYTHIA_EXTRAS)
    unknown = resources.sizes(paper_config, PYTHIA_410M, {})
    assert unknown.vocab == resources.ASSUMED_VOCAB > known.vocab
    assert dataclasses.replace(unknown, vocab=known.vocab, ffn_width=known.ffn_width) == known
    assert (resources.STAGES["extract_eval_activations"](unknown).request().mem_mb
            > resources.STAGES["extract_eval_activations"](known).request().mem_mb)


@pytest.mark.parametrize("kind", ["attn1", "attn1_local64", "attn2", "mlp_k4", "ridge_ar4"])
def test_every_predictor_kind_has_requests(paper_config, kind):
    """The predictor's size is its settings' parameter count, equal to the built module's, whatever its kind;
    a closed-form kind is fitted in one pass, not trained step by step."""
    config = {**paper_config, "predictor": {**paper_config["predictor"], "kind": kind},
              "train": {**paper_config["train"], "data": "cache", "joint_layers": False}}
    s = resources.sizes(config, PYTHIA_410M, PYTHIA_EXTRAS)
    settings = pnconfig.predictor_config(config, PYTHIA_410M)
    assert s.predictor_params == predictor.parameter_count(predictor.build_predictor(settings))
    training = resources.estimates(config, PYTHIA_410M, PYTHIA_EXTRAS)["train_predictor"]
    assert ("ridge fit" in training.seconds) == kind.startswith("ridge_ar")
    assert training.request().mem_mb > 8192 * 256 * 1024 * 2 / resources.MB  # the cached activations


def test_training_requests_cover_the_largest_budget(paper_config):
    """Predictors that override train.steps (a budget study): the one train_predictor request is the
    largest budget's."""
    config = {**paper_config, "train": {**paper_config["train"], "data": "cache", "joint_layers": False,
                                        "steps": 1000}}
    alone = resources.estimates(config, PYTHIA_410M, PYTHIA_EXTRAS)["train_predictor"].request()
    budgets = {**config, "predictors": {"attn1_short": {"kind": "attn1"},
                                        "attn1_long": {"kind": "attn1", "train": {"steps": 10_000}}}}
    assert resources.sizes(budgets, PYTHIA_410M, PYTHIA_EXTRAS).steps == 10_000
    assert resources.estimates(budgets, PYTHIA_410M, PYTHIA_EXTRAS)["train_predictor"].request().runtime > alone.runtime
    # ... and each entry's own jobs ask for its own budget
    short, long = (resources.requests(budgets, PYTHIA_410M, predictor=name)["train_predictor"]
                   for name in ("attn1_short", "attn1_long"))
    assert resources.sizes(budgets, PYTHIA_410M, PYTHIA_EXTRAS, "attn1_short").steps == 1000
    assert short.runtime < long.runtime


def test_each_predictor_s_jobs_ask_for_that_predictor(paper_config):
    """A predictor study: attn2's jobs ask for attn2's memory and time (its parameters are counted from its
    own module), attn1's for attn1's; the rules that do not run a predictor ask the same for every one."""
    config = {**paper_config, "train": {**paper_config["train"], "data": "cache", "joint_layers": False},
              "predictors": {"attn1": {"kind": "attn1"}, "attn2": {"kind": "attn2"}}}
    found = {name: resources.estimates(config, PYTHIA_410M, PYTHIA_EXTRAS, name) for name in ("attn1", "attn2")}
    built = {name: predictor.parameter_count(predictor.build_predictor(
        pnconfig.predictor_config(pnentries.with_predictor(config, name), PYTHIA_410M))) for name in found}
    assert built["attn2"] > built["attn1"]
    for name in found:
        assert resources.sizes(config, PYTHIA_410M, PYTHIA_EXTRAS, name).predictor_params == built[name]
    for rule in resources.STAGES:
        small, large = found["attn1"][rule], found["attn2"][rule]
        if rule in resources.PREDICTOR_RULES:  # more memory or more time, less of neither
            totals = [(sum(e.memory.values()), sum(e.seconds.values())) for e in (small, large)]
            assert totals[0] != totals[1] and all(a <= b for a, b in zip(*totals)), (rule, totals)
        else:
            assert small == large, rule
    assert found["attn2"]["train_predictor"].request().mem_mb > found["attn1"]["train_predictor"].request().mem_mb
