"""``configs/paper.yaml`` as a dry run: its corpus files are real inputs of ``make_windows``.

With empty placeholder files at the configured paths the dry run lists every stage of the paper's
experiment, and a corpus file changed in place reruns the windows; without the files Snakemake
itself reports them as missing inputs. The model is a hub id: its config.json stands in a throwaway hub
cache, as ``hf download`` leaves it (no job runs in a dry run, so its weights may be empty); without it the
dry run stops before any job with the command that downloads it (``pndecomp.config.model_shape``).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from snakemake_log import job_stats
from tiny import write_hub_snapshot

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
PAPER = REPO / "configs" / "paper.yaml"
CONFIG = yaml.safe_load(PAPER.read_text())
OUT = Path("results") / CONFIG["experiment"]
WINDOWS = [OUT / "windows" / name for name in
           ("predictor_train.parquet", "predictor_val.parquet", "predictor_eval.parquet", "probe.parquet",
            "summary.json")]
TOKEN_STORE = OUT / "windows" / "predictor_train_tokens"  # a directory
# Rules the paper's config does not need: its model is a hub id (nothing to materialize), its corpus
# is files (no embedded corpus), and it trains in stream mode (no cached training activations), every
# layer in one job (train.joint_layers: the per-layer rule is not defined); one predictor and one model
# leave nothing to compare, nor to share the probe windows' states with; it names no inspect.texts.
NOT_NEEDED = {"embedded_corpus", "materialize_model", "materialize_tokenizer", "extract_train_activations",
              "train_predictor", "predictor_comparison", "draw_predictor_comparison", "model_comparison",
              "draw_model_comparison", "study_claims", "budget_comparison",
              "draw_budget_comparison", "extract_probe_activations", "inspect_text", "seed_claims", "robustness",
              "draw_robustness"}


# Pythia-410m-deduped's shape, as its config.json on the hub gives it.
PYTHIA_410M_CONFIG = {"model_type": "gpt_neox", "num_hidden_layers": 24, "hidden_size": 1024,
                      "num_attention_heads": 16, "intermediate_size": 4096, "max_position_embeddings": 2048,
                      "vocab_size": 50304}


def dry_run(workdir: Path, model_downloaded: bool = True) -> subprocess.CompletedProcess:
    """``snakemake -n`` of the paper's config in ``workdir``, with a hub cache of its own there."""
    cache = workdir / "hub-cache"
    cache.mkdir(exist_ok=True)
    if model_downloaded:
        write_hub_snapshot(cache, CONFIG["model"]["id"], CONFIG["model"]["revision"],
                           {"config.json": json.dumps(PYTHIA_410M_CONFIG), "model.safetensors": ""})
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(SNAKEFILE),
                           "--directory", str(workdir), "--configfile", str(PAPER)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})


def workflow_rules() -> set[str]:
    text = "\n".join(path.read_text() for path in [SNAKEFILE, *(REPO / "workflow" / "rules").glob("*.smk")])
    return set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", text, flags=re.MULTILINE))


def test_paper_dry_run_lists_every_stage_and_reruns_windows_for_a_changed_corpus_file(tmp_path):
    paths = CONFIG["corpus"]["files"]["paths"]
    assert paths == ["data/pile/val.jsonl.zst", "data/pile/test.jsonl.zst"]
    # The windows exist from an earlier run, older than the first corpus file, which changed in place.
    for path in [*paths, *WINDOWS]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    (tmp_path / TOKEN_STORE).mkdir()
    old, older = 1_577_836_800, 1_546_300_800  # 2020-01-01, 2019-01-01
    for path in [*WINDOWS, TOKEN_STORE]:
        os.utime(tmp_path / path, (old, old))
    os.utime(tmp_path / paths[1], (older, older))
    result = dry_run(tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    jobs = job_stats(log)
    assert set(jobs) == workflow_rules() - NOT_NEEDED, jobs
    layers, tasks = len(CONFIG["layers"]), len(CONFIG["probes"]["tasks"])
    assert layers == 5
    for rule in ("make_windows", "extract_eval_activations", "train_predictors_joint", "probe_features",
                 "layer_summary", "all"):
        assert jobs[rule] == 1, (rule, jobs)
    for rule in ("decompose_eval", "per_position_metrics"):
        assert jobs[rule] == layers, (rule, jobs)
    assert jobs["fit_probe"] == layers * tasks and jobs["probe_table"] == tasks, jobs
    make_windows = log[log.index("rule make_windows:"):]
    make_windows = make_windows[:make_windows.index("\n\n")]
    assert f"reason: Updated input files: {paths[0]}" in make_windows, make_windows


def test_paper_dry_run_without_the_corpus_names_the_missing_files(tmp_path):
    result = dry_run(tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert "Missing input files for rule make_windows" in log, log[-3000:]
    for path in CONFIG["corpus"]["files"]["paths"]:
        assert path in log, log[-3000:]
    assert not (tmp_path / "results").exists()


def test_paper_dry_run_without_the_model_names_the_download_command(tmp_path):
    """The hub model not downloaded yet: the DAG is never built, and the one error says what to run."""
    for path in CONFIG["corpus"]["files"]["paths"]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    result = dry_run(tmp_path, model_downloaded=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-3000:]
    assert ("model.id: 'EleutherAI/pythia-410m-deduped' (revision 'main') is not in the local hub cache. "
            f"The workflow reads hub models only from the local hub cache ({tmp_path / 'hub-cache'}") in log, log
    assert "/bin/hf download EleutherAI/pythia-410m-deduped --revision main\n" in log, log
    assert "Job stats" not in log and not (tmp_path / "results").exists(), log[-3000:]
