"""Training seeds as a dimension, the verdicts across seeds and across a study's settings
(pndecomp.robustness, pndecomp.predictor_entries), and configs/robustness.yaml's plan."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake_log import job_stats
from tiny import TINY_RUN_TASKS, write_config

from pndecomp import predictor_entries as pnentries
from pndecomp.config_schema import ConfigError
from pndecomp.results import load
from pndecomp.robustness import Setting, across_seeds, joint_verdict, pooled_interval, reading, robustness

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the pooled interval

def _mixture_sample(values, los, his, n, rng):
    """Draws of the equal-weight mixture of two-piece normals (median value, 2.5/97.5 % points lo/hi)."""
    z95 = 1.959963984540054
    seed = rng.integers(len(values), size=n)
    z = rng.standard_normal(n)
    value, lo, hi = (np.asarray(column, dtype=float)[seed] for column in (values, los, his))
    return value + np.where(z < 0, (value - lo), (hi - value)) * z / z95


@pytest.mark.parametrize("values,los,his", [
    ([0.10, 0.05, 0.20], [0.02, -0.05, 0.15], [0.15, 0.12, 0.30]),
    ([1.0, -1.0], [0.5, -1.2], [1.1, 0.0]),
    ([0.3], [0.1], [0.8]),
])
def test_pooled_interval_is_the_mixtures_quantiles(values, los, his):
    draws = _mixture_sample(values, los, his, 2_000_000, np.random.default_rng(0))
    expected = np.percentile(draws, [2.5, 97.5])
    found = pooled_interval(values, los, his)
    assert found == pytest.approx(tuple(expected), abs=0.004 * (max(his) - min(los)))


def test_identical_seeds_pool_to_their_own_interval_and_spread_widens_it():
    assert pooled_interval([0.2] * 3, [0.1] * 3, [0.4] * 3) == pytest.approx((0.1, 0.4), abs=1e-9)
    lo, hi = pooled_interval([0.2, 0.5], [0.1, 0.4], [0.3, 0.6])
    assert 0.1 < lo < 0.15 and 0.55 < hi < 0.6  # within the seeds' span, wider than each
    assert np.isnan(pooled_interval([0.2, 0.3], [0.1, np.nan], [0.3, 0.4])).all()


def test_joint_verdict_holds_only_where_every_one_holds():
    assert joint_verdict(["holds", "holds"]) == "holds"
    assert joint_verdict(["contradicted"] * 3) == "contradicted"
    assert joint_verdict(["holds", "contradicted"]) == "inconclusive"
    assert joint_verdict(["holds", "inconclusive"]) == "inconclusive"
    assert joint_verdict(["not run"]) == "not run"


def test_across_seeds_groups_an_entrys_seeds_and_pools_them():
    card = pd.DataFrame({
        "claim": ["c"] * 4, "source": ["paper"] * 4, "statement": ["s"] * 4,
        "predictor": ["attn1_s0", "attn1_s1", "attn1_s2", "ridge_ar4"], "layers": ["3"] * 4,
        "value": [0.2, 0.3, -0.1, 0.5], "lo": [0.1, 0.2, -0.2, 0.4], "hi": [0.3, 0.4, 0.05, 0.6],
        "verdict": ["holds", "holds", "inconclusive", "holds"], "converged": [True, True, False, True],
        "n_documents": [40] * 4})
    seeds = {"attn1_s0": ("attn1", 0), "attn1_s1": ("attn1", 1), "attn1_s2": ("attn1", 2),
             "ridge_ar4": ("ridge_ar4", None)}
    table = across_seeds(card, seeds).set_index("entry")
    attn = table.loc["attn1"]
    assert attn["seeds"] == "0, 1, 2" and attn["seed_verdicts"] == "holds, holds, inconclusive"
    assert attn["verdict"] == "inconclusive" and (attn["holds"], attn["inconclusive"]) == (2, 1)
    assert attn["value"] == pytest.approx(0.4 / 3)
    assert (attn["lo"], attn["hi"]) == pytest.approx(pooled_interval([0.2, 0.3, -0.1], [0.1, 0.2, -0.2],
                                                                     [0.3, 0.4, 0.05]))
    assert not attn["converged"]
    assert table.loc["ridge_ar4", "seeds"] == "-" and table.loc["ridge_ar4", "verdict"] == "holds"


# ------------------------------------------------------------------ the one-word readings

def _settings(control_too: bool = True) -> list[Setting]:
    settings = []
    for model, control in (("m", False), ("m_random", True))[: 2 if control_too else 1]:
        for entry, architecture, budget in (("attn1", "attn1", "plateau"), ("attn1_200", "attn1", "200 steps"),
                                            ("mlp_k4", "mlp_k4", "plateau")):
            for seed in (0, 1, 2):
                settings.append(Setting(model, f"{entry}_s{seed}", entry, architecture, budget, seed, control))
        settings.append(Setting(model, "ridge_ar4", "ridge_ar4", "ridge_ar4", "closed form", None, control))
    return settings


def _verdicts(trained, control="inconclusive"):
    """Each setting's verdict: ``trained`` a verdict or a function of the setting; the control's ``control``."""
    return {setting: control if setting.control else trained(setting) if callable(trained) else trained
            for setting in _settings()}


@pytest.mark.parametrize("trained,control,expected", [
    ("holds", "inconclusive", "robust"),
    ("holds", "holds", "also-in-control"),
    (lambda s: "contradicted" if s.predictor == "attn1_s1" else "holds", "inconclusive", "seed-dependent"),
    (lambda s: "contradicted" if s.budget == "200 steps" else "holds", "inconclusive", "budget-dependent"),
    (lambda s: "inconclusive" if s.architecture == "ridge_ar4" else "holds", "inconclusive", "predictor-dependent"),
    ("contradicted", "holds", "contradicted"),
    (lambda s: "contradicted" if s.predictor == "attn1_s1" else "inconclusive", "holds", "unsupported"),
    ("not run", "holds", "not run"),
])
def test_reading_names_the_dimension_that_moves_the_verdict(trained, control, expected):
    assert reading(_verdicts(trained, control)) == expected


def test_robustness_counts_verdicts_and_names_where_a_claim_fails():
    settings = _settings()
    grid = pd.DataFrame([{"claim": "c", "statement": "s", "layer_group": "last", "setting": setting.name,
                          "control": setting.control,
                          "verdict": "contradicted" if setting.predictor == "mlp_k4_s2" and not setting.control
                          else "holds", "fails_at": "29 (contradicted)"} for setting in settings])
    row = robustness(grid, settings).iloc[0]
    assert (row["settings"], row["holds"], row["contradicted"], row["control_settings"], row["control_holds"]) == \
        (10, 9, 1, 10, 10)
    assert row["reading"] == "seed-dependent" and row["fails_at"] == "m/mlp_k4_s2 29 (contradicted)"


# ------------------------------------------------------------------ seeds as a dimension

def _config(**train) -> dict:
    config = yaml.safe_load((REPO / "configs" / "robustness.yaml").read_text())
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    return {**base, "predictor": {"kind": "attn1"}, "predictors": config["predictors"],
            "train": {**base["train"], "seed": None, **train}}


def test_seeds_expand_each_sgd_entry_and_leave_a_closed_form_one():
    config = _config(seeds=[0, 1, 2])
    names = pnentries.predictor_names(config)
    assert names[:3] == ["attn1_s0", "attn1_s1", "attn1_s2"] and names[-1] == "ridge_ar4" and len(names) == 19
    assert pnentries.entry_seeds(config)["attn1_200_s2"] == ("attn1_200", 2)
    assert pnentries.entry_seeds(config)["ridge_ar4"] == ("ridge_ar4", None)
    own = pnentries.with_predictor(config, "attn1_200_s2")
    assert own["predictor"]["kind"] == "attn1" and own["train"]["seed"] == 2 and own["train"]["steps"] == 200
    assert "seeds" not in own["train"]
    assert pnentries.dimensions(config)["mlp_k4_200_s1"]["budget"] == "200 steps"
    assert pnentries.dimensions(config)["mlp_k4_s1"]["budget"] == "plateau"
    assert pnentries.training_budgets(config) == {}  # one budget besides the plateau: no budget study


def test_adding_a_seed_leaves_every_other_predictors_config_as_it_was():
    three, four = _config(seeds=[0, 1, 2]), _config(seeds=[0, 1, 2, 3])
    for name in pnentries.predictor_names(three):
        assert pnentries.with_predictor(three, name) == pnentries.with_predictor(four, name)
    assert set(pnentries.predictor_names(four)) - set(pnentries.predictor_names(three)) == {
        f"{entry}_s3" for entry in ("attn1", "attn1_rope", "mlp_k4", "attn1_200", "attn1_rope_200", "mlp_k4_200")}


def test_a_seeded_name_that_is_also_configured_is_refused():
    config = _config(seeds=[0, 1])
    config["predictors"] = {"attn1": None, "attn1_s1": {"kind": "attn1_rope"}}
    with pytest.raises(ConfigError, match="'attn1_s1', which is also configured"):
        pnentries.predictor_names(config)


def test_dry_run_of_the_robustness_study_trains_three_seeds_and_extracts_once():
    # --forceall: the plan of a cold run, whatever a local run of the study has already written
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--quiet", "rules", "all",
                             "--configfile", "configs/robustness.yaml"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_stats(result.stdout + result.stderr)
    for model in ("smollm2", "smollm2_random_init"):
        # 6 SGD entries x 3 seeds x 3 layers; ridge_ar4 is fitted in the same rule, once per layer
        assert jobs[f"{model}_train_predictor"] == (6 * 3 + 1) * 3
        for split in ("train", "val", "eval", "probe"):
            assert jobs[f"{model}_extract_{split}_activations"] == 1
        assert jobs[f"{model}_seed_claims"] == 1
    assert jobs["robustness"] == 1 and jobs["draw_robustness"] == 1


# ------------------------------------------------------------------ on the tiny workflow

# A predictor whose training seed decides what it predicts: ĥ_{t+1} = s · h_t with s 0 or 1 drawn from the
# seeded generator at build time (its one parameter gets no gradient). Neither depends on training, so the
# verdicts below depend only on the LM's states: ĥ beats r on the domain task where s = 1 (ĥ = h_t) and is
# beaten where s = 0 (ĥ = 0), while per-position MSE, ‖h_{t+1}‖² or ‖h_{t+1} − h_t‖², is flat at both.
SEED_SCALE_KIND = ('''@dataclass(frozen=True)
class SeedScaleConfig:
    d_model: int

    @property
    def kind(self) -> str:
        return "seed_scale"

    @property
    def parameter_count(self) -> int:
        return 1


def _seed_scale_config(section, d_model, attention_width, _parameter=None) -> SeedScaleConfig:
    return SeedScaleConfig(d_model)

''', '''class SeedScalePredictor(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.register_buffer("scale", torch.randint(0, 2, ()).float())
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, hidden):
        return self.scale * hidden + 0.0 * self.unused

''')


def _scale_of(seed: int) -> int:
    import torch

    torch.manual_seed(seed)
    return int(torch.randint(0, 2, ()))


@pytest.mark.slow
def test_a_seed_dependent_claim_reads_seed_dependent_and_a_stable_one_robust(tmp_path, tiny_model_dir, tiny_corpus):
    seeds = [0] + [next(seed for seed in range(1, 50) if _scale_of(seed) != _scale_of(0))]
    package = tmp_path / "src" / "pndecomp"
    shutil.copytree(REPO / "src" / "pndecomp", package, ignore=shutil.ignore_patterns("__pycache__"))
    for path, anchor, text in (("predictor_kinds.py", "def _heads(", SEED_SCALE_KIND[0]),
                               ("predictor_kinds.py", "}\n\n_SUFFIXED", '    "seed_scale": PredictorKind('
                                'f"{_MODULES}:SeedScalePredictor", SeedScaleConfig, _seed_scale_config),\n'),
                               ("predictor.py", "def lag_stack(", SEED_SCALE_KIND[1])):
        source = (package / path).read_text()
        assert source.count(anchor) == 1, (path, anchor)
        (package / path).write_text(source.replace(anchor, text + anchor))
    workdir = tmp_path / "run"
    workdir.mkdir()
    write_config(workdir / "config.yaml", tiny_model_dir, tiny_corpus, predictors=["seed_scale"],
                 **{"probes.tasks": TINY_RUN_TASKS, "train.seeds": seeds, "interventions.enabled": False,
                    "models": {"tiny": {"id": str(tiny_model_dir)}}})
    result = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--cores", "2",
                             "--directory", str(workdir), "all"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "src")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = job_stats(result.stdout + result.stderr)
    assert jobs["tiny_train_predictor"] == 2 * 3  # two seeds, three layers

    study = workdir / "results" / "tiny"
    seed_card = load(study).models["tiny"].seed_claims()
    assert set(seed_card["entry"]) == {"seed_scale"} and set(seed_card["seeds"]) == {f"{seeds[0]}, {seeds[1]}"}
    table = load(study).robustness()
    readings = table.set_index(["claim", "layer_group"])["reading"]
    flips = seed_card[seed_card["claim"] == "domain_hhat_beats_r"]
    assert set(flips["seed_verdicts"]) <= {"holds, contradicted", "contradicted, holds"}, flips.to_string()
    assert (readings.loc["domain_hhat_beats_r"] == "seed-dependent").all(), table.to_string()
    assert (readings.loc["mse_flat_over_position"] == "robust").all(), table.to_string()
    assert set(table["control_settings"]) == {0}  # no untrained control in this study
    assert (study / "figures" / "robustness.png").stat().st_size > 5000
