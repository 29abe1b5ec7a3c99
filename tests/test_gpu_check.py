"""bench/gpu.sh's configs (bench/gpu_check.py config: the reduced paper config, and its CPU smoke at toy
sizes) plan a whole run: a config the check cannot start would waste a lent GPU's few minutes."""
from __future__ import annotations

import sys

import pytest
import yaml
from conftest import REPO
from test_examples import dry_run
from tiny import write_model

sys.path.insert(0, str(REPO / "bench"))
import gpu_check  # noqa: E402


@pytest.mark.parametrize("smoke", [True, False], ids=["cpu-smoke", "reduced-paper"])
def test_the_gpu_checks_config_plans_every_stage(tmp_path, tiny_corpus, smoke):
    model = write_model(tmp_path / "model", tiny_corpus, n_layers=24)  # Pythia-410m's depth, toy widths
    config = tmp_path / "config.yaml"
    gpu_check.write_config(config, str(model), "cpu", smoke)
    settings = yaml.safe_load(config.read_text())
    assert settings["train"]["schedule"] == "cosine" and settings["train"]["stop_patience"] is None
    jobs = dry_run(tmp_path / "run", config)
    assert jobs["patch_layer"] == len(settings["layers"]) and jobs.get("train_predictors_joint") == 1
