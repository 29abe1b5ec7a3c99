"""The README's two example configs for your own model (configs/examples/) plan a whole run: a hub model on a
GPU (its files in a hub cache, as `hf download` leaves them) and a local GGUF file with a local corpus on a CPU,
each dry-run by Snakemake from a fresh working directory, offline."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from snakemake_log import job_stats
from tiny import write_hub_snapshot, write_model

from pndecomp.model_files import EMBEDDED_GGUF, EMBEDDED_PACKAGE

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "configs" / "examples"


def dry_run(workdir: Path, config: Path, **environment) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "--quiet", "rules", "--snakefile",
                             str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", str(config)],
                            capture_output=True, text=True, env={**os.environ, **environment})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job_stats(result.stdout + result.stderr)


def test_the_hub_model_example_plans_every_stage_from_the_hub_cache(tmp_path, tiny_corpus):
    config = yaml.safe_load((EXAMPLES / "hub-model-gpu.yaml").read_text())
    model = config["model"]
    # a stand-in of the model's files: 12 blocks like Pythia-160m, so the relative depths land on distinct blocks
    stand_in = write_model(tmp_path / "stand-in", tiny_corpus, n_layers=12)
    cache = tmp_path / "hub"
    write_hub_snapshot(cache, model["id"], model["revision"], {path.name: path for path in stand_in.iterdir()})
    jobs = dry_run(tmp_path / "run", EXAMPLES / "hub-model-gpu.yaml", HF_HUB_CACHE=str(cache))
    layers = len(config["layers"])
    assert jobs["train_predictor"] == layers and jobs["extract_train_activations"] == 1
    assert jobs["fit_probe"] == layers * len(config["probes"]["tasks"])  # one job per (layer, task)


def test_the_gguf_example_plans_every_stage_from_a_local_file_and_corpus(tmp_path):
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    workdir = tmp_path / "run"
    (workdir / "models").mkdir(parents=True)
    # the example's relative paths resolve from the working directory: a GGUF file and a corpus put there
    (workdir / "models" / "my-model.gguf").symlink_to(Path(spec.origin).parent / EMBEDDED_GGUF)
    (workdir / "data").mkdir()
    records = [{"text": f"document {i} " * 50, "meta": {"pile_set_name": ["prose", "code"][i % 2]}} for i in range(40)]
    (workdir / "data" / "my-corpus.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    jobs = dry_run(workdir, EXAMPLES / "gguf-cpu.yaml")
    assert jobs["materialize_model"] == 1 and jobs["train_predictor"] == 3 and "embedded_corpus" not in jobs


@pytest.mark.parametrize("name", ["hub-model-gpu.yaml", "gguf-cpu.yaml"])
def test_each_example_is_in_the_readme(name):
    assert f"configs/examples/{name}" in (REPO / "README.md").read_text()
