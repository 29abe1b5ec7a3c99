"""A predictor-training job killed with SIGKILL mid-run, rerun with ``snakemake --rerun-incomplete``,
resumes from its last checkpoint and ends with the same weights and learning curve, bit for bit on
CPU, as a run that was never interrupted.

Two copies of one working directory share the windows and activations (made once): in one the
training job runs to the end; in the other the whole Snakemake process group is killed with
SIGKILL (as a node failure or a scheduler would) as soon as the first checkpoint exists, then
``snakemake --unlock`` (the kill leaves Snakemake's lock behind) and ``--rerun-incomplete`` finish
it. The checkpoint (``params.resume`` of ``train_predictor``) is not an output, so Snakemake's
cleanup of the incomplete job's outputs leaves it in place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from tiny import write_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "1"]
OUT = Path("results/tiny")
LAYER_DIR = OUT / "predictors" / "attn1" / "layer-2"
WEIGHTS, CURVE, RESUME = LAYER_DIR / "predictor.safetensors", LAYER_DIR / "curve.parquet", LAYER_DIR / ".resume.pt"
TRAIN_LOG = OUT / "logs" / "train_predictor" / "attn1" / "layer-2.log"
STEPS, CHECKPOINT_EVERY = 3000, 200  # ~3 s of training: time to see the first checkpoint and kill

pytestmark = pytest.mark.slow  # ~1 min: five Snakemake runs, three jobs upstream of training


def snakemake(workdir: Path, *args: str) -> str:
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def kill_after_first_checkpoint(workdir: Path) -> int:
    """Start the training job, SIGKILL Snakemake and the job as soon as the checkpoint file exists;
    returns the step the checkpoint holds."""
    with open(workdir / "killed-run.log", "w") as log:
        process = subprocess.Popen([*SNAKEMAKE, "--directory", str(workdir), str(WEIGHTS)], stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not (workdir / RESUME).exists():
                assert process.poll() is None, (workdir / "killed-run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint within 300 s"
                time.sleep(0.02)
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: Snakemake and its job only
            process.wait()
    return torch.load(workdir / RESUME, weights_only=True)["step"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_corpus):
    root = tmp_path_factory.mktemp("resume")
    reference = root / "reference"
    reference.mkdir()
    write_config(reference / "config.yaml", tiny_model_dir, tiny_corpus, layers=[2],
                 **{"train.steps": STEPS, "train.checkpoint_every": CHECKPOINT_EVERY, "train.eval_every": 100})
    snakemake(reference, str(OUT / "activations/predictor_train/layer-2.safetensors"),
              str(OUT / "activations/predictor_val/layer-2.safetensors"))
    interrupted = root / "interrupted"
    shutil.copytree(reference, interrupted, symlinks=True)  # keeps mtimes: nothing upstream reruns
    # The uninterrupted run trains beside the one that is killed (one thread each).
    with open(reference / "train.log", "w") as log:
        uninterrupted = subprocess.Popen([*SNAKEMAKE, "--directory", str(reference), str(WEIGHTS)], stdout=log,
                                         stderr=subprocess.STDOUT)
        checkpoint_step = kill_after_first_checkpoint(interrupted)
        assert uninterrupted.wait(timeout=600) == 0, (reference / "train.log").read_text()[-3000:]
    after_kill = {path.relative_to(interrupted) for path in (interrupted / OUT).rglob("*") if path.is_file()}
    snakemake(interrupted, "--unlock")
    rerun_log = snakemake(interrupted, "--rerun-incomplete", str(WEIGHTS))
    return {"reference": reference, "interrupted": interrupted, "checkpoint_step": checkpoint_step,
            "after_kill": after_kill, "rerun_log": rerun_log}


def test_kill_leaves_a_checkpoint_and_no_partial_output(runs):
    assert CHECKPOINT_EVERY <= runs["checkpoint_step"] < STEPS
    assert runs["checkpoint_step"] % CHECKPOINT_EVERY == 0
    after_kill = runs["after_kill"]
    assert RESUME in after_kill
    assert WEIGHTS not in after_kill and CURVE not in after_kill
    # Everything else under a final name is an upstream output, identical to the reference's.
    for path in after_kill:
        if path.name.startswith(".") or path.parts[2] == "logs":
            continue
        assert (runs["interrupted"] / path).read_bytes() == (runs["reference"] / path).read_bytes(), path


def test_rerun_resumes_from_the_checkpoint(runs):
    log = (runs["interrupted"] / TRAIN_LOG).read_text()
    resumed = re.findall(r"resumed from \S+ at step (\d+)", log)
    assert resumed, log[-2000:]
    assert int(resumed[0]) >= runs["checkpoint_step"]  # the kill may land after a later checkpoint
    assert "train_predictor" in runs["rerun_log"]
    assert not (runs["interrupted"] / RESUME).exists()  # removed once the outputs are in place


def test_resumed_weights_and_curve_equal_the_uninterrupted_run_bitwise(runs):
    reference, resumed = runs["reference"], runs["interrupted"]
    expected, actual = load_file(reference / WEIGHTS), load_file(resumed / WEIGHTS)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    curve = pd.read_parquet(resumed / CURVE)
    assert list(curve["step"]) == list(range(100, STEPS + 1, 100))
    assert curve.equals(pd.read_parquet(reference / CURVE))
    assert (resumed / CURVE).read_bytes() == (reference / CURVE).read_bytes()
    # The weights file: the same tensor bytes and the same header; only the order of the header's
    # metadata keys may differ (safetensors keeps them in a Rust HashMap).
    (expected_header, expected_data), (header, data) = safetensors_parts(reference / WEIGHTS), safetensors_parts(
        resumed / WEIGHTS)
    assert data == expected_data
    assert header == expected_header


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + size]), raw[8 + size:]
