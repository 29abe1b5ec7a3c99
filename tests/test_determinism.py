"""The same config run twice on CPU gives byte-identical metric and F1 files, and every output
records the seed, package versions and the model's file hash.

The tiny workflow runs twice, side by side, into two working directories (one core each), up to
the metric and probe tables; figures are left out (they are drawn from these files). One layer
keeps it short; every rule but the figures still runs.
"""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tiny import write_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
OUT = Path("results/tiny")
LAYERS = ["3"]
TARGETS = [OUT / "metrics/attn1/layer_summary.tsv", OUT / "probes/attn1/domain.tsv",
           OUT / "probes/attn1/next_token_type_8.tsv",
           *[OUT / f"metrics/attn1/per_position/layer-{layer}.parquet" for layer in LAYERS]]
# Compared byte for byte.
EXACT = ["metrics/attn1/layer_summary.tsv", "metrics/attn1/per_position/*.parquet", "metrics/attn1/eval_scores/*.json",
         "probes/attn1/*.tsv", "probes/attn1/*/*.parquet", "predictors/attn1/*/curve.parquet", "windows/*.parquet",
         "windows/summary.json"]
PACKAGES = ("torch", "transformers", "numpy", "scikit-learn", "pandas", "pndecomp")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir, tiny_corpus) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    workdirs = [root / "first", root / "second"]
    processes = []
    for workdir in workdirs:
        workdir.mkdir()
        # the default's training recipe: the plateau schedule (decays restore the best weights), robust outlier rows
        write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus, layers=[int(layer) for layer in LAYERS],
                     **{"train.schedule": "plateau", "train.stop_patience": 2, "train.steps": 200,
                        "train.outlier_rows": "robust"})
        log = open(workdir / "snakemake.log", "w")  # noqa: SIM115 - closed below
        processes.append((subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), *map(str, TARGETS)],
                                           stdout=log, stderr=subprocess.STDOUT), log))
    for (process, log), workdir in zip(processes, workdirs):
        rc = process.wait(timeout=1200)
        log.close()
        assert rc == 0, (workdir / "snakemake.log").read_text()[-3000:]
    return workdirs[0] / OUT, workdirs[1] / OUT


def outputs(out: Path, pattern: str) -> list[Path]:
    return sorted(path.relative_to(out) for path in out.glob(pattern))


@pytest.mark.parametrize("pattern", EXACT)
def test_metric_files_are_byte_identical(two_runs, pattern):
    first, second = two_runs
    files = outputs(first, pattern)
    assert files, f"no {pattern} under {first}"
    assert files == outputs(second, pattern)
    for path in files:
        assert (first / path).read_bytes() == (second / path).read_bytes(), path


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]


def test_tensor_files_hold_identical_tensors_and_headers(two_runs):
    """Safetensors files: identical tensor bytes and headers; the order of the header's metadata
    keys is not fixed (safetensors keeps them in a Rust HashMap), so the headers are compared parsed."""
    first, second = two_runs
    files = outputs(first, "**/*.safetensors")
    assert len(files) >= 6  # activations (2) and surprisal, predictor, residuals, probe features
    assert files == outputs(second, "**/*.safetensors")
    for path in files:
        assert safetensors_parts(first / path) == safetensors_parts(second / path), path


def metadata_of(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from pndecomp.storage import load_metadata

        return load_metadata(path)
    if path.suffix == ".parquet":
        return json.loads(pq.read_schema(path).metadata[b"pndecomp"])
    return json.loads(path.read_text())["metadata"]


def test_every_output_records_seed_versions_and_model_hash(two_runs, tiny_model_dir):
    first, _ = two_runs
    weights_sha256 = hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    files = [*outputs(first, "**/*.safetensors"), *outputs(first, "**/*.parquet"),
             *outputs(first, "metrics/attn1/eval_scores/*.json"), Path("windows/summary.json")]
    assert len(files) >= 12
    for path in files:
        metadata = metadata_of(first / path)
        assert metadata["seed"] == 0, path
        assert metadata["experiment"] == "tiny", path
        assert set(PACKAGES) <= set(metadata["packages"]), path
        assert all(metadata["packages"][name] for name in PACKAGES), path
        assert metadata["model"]["weights_sha256"] == weights_sha256, path
        assert metadata["model"]["path"] == str(tiny_model_dir), path
        assert "revision" in metadata["model"], path
