"""The predictor and model studies (configs/predictor-study.yaml, configs/model-study.yaml) as dry runs,
the config helpers behind them, and the comparison tables against hand-made inputs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake_log import job_stats

from pndecomp import compare, model_files
from pndecomp import config as pnconfig
from pndecomp import predictor_entries as pnentries

REPO = Path(__file__).resolve().parents[1]


def dry_run(config: Path, workdir: Path) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "all", "--snakefile", str(REPO / "Snakefile"),
                             "--directory", str(workdir), "--configfile", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job_stats(result.stdout)


def study(name: str) -> dict:
    return yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())


def test_predictor_study_lists_one_job_per_predictor_layer_and_stage(tmp_path):
    config = study("predictor-study")
    predictors, layers, tasks = len(config["predictors"]), len(config["layers"]), len(config["probes"]["tasks"])
    jobs = dry_run(REPO / "configs" / "predictor-study.yaml", tmp_path)
    per_predictor_layer = {"train_predictor": 1, "decompose_eval": 1, "layer_scores": 1, "fit_probe": tasks}
    for rule, count in per_predictor_layer.items():
        assert jobs.pop(rule) == predictors * layers * count, rule
    for rule in ("probe_features", "layer_summary"):
        assert jobs.pop(rule) == predictors, rule
    assert jobs.pop("probe_table") == predictors * tasks
    assert jobs.pop("score_baselines") == layers  # the baselines are shared by every predictor
    # every predictor's: the scorecard's trend claims read them (figures 3-4 draw the first predictor's)
    assert jobs.pop("per_position_metrics") == predictors * layers
    for rule in ("resolved_config", "claims", "predictor_comparison", "draw_predictor_comparison", "materialize_model",
                 "materialize_tokenizer",
                 "embedded_corpus", "make_windows", "extract_train_activations", "extract_val_activations",
                 "extract_eval_activations",
                 "extract_probe_activations", "all"):
        assert jobs.pop(rule) == 1, rule
    # the per-token pages of the default's inspect.texts, which the study extends (of its first predictor only)
    assert jobs.pop("inspect_text") == len(yaml.safe_load((REPO / "config.yaml").read_text())["inspect"]["texts"])
    figures = {"draw_learning_curve": 2, "draw_per_position": 3, "draw_layer_scores": 1, "draw_probe_heatmap": tasks}
    assert jobs == figures


def test_model_study_runs_the_pipeline_once_per_model_and_compares(tmp_path):
    config = study("model-study")
    models, layers = list(config["models"]), len(config["layers"])
    jobs = dry_run(REPO / "configs" / "model-study.yaml", tmp_path)
    assert jobs.pop("model_comparison") == 1 and jobs.pop("draw_model_comparison") == 1 and jobs.pop("all") == 1
    assert jobs.pop("study_claims") == 1  # one scorecard across the models, from each model's own
    assert jobs.pop("robustness") == 1 and jobs.pop("draw_robustness") == 1  # its claims across the models
    assert jobs.pop("resolved_config") == 1  # the study's record; each model's is <model>_resolved_config
    for model in models:
        mine = {rule.removeprefix(f"{model}_"): count for rule, count in jobs.items() if rule.startswith(f"{model}_")}
        assert mine["train_predictor"] == layers and mine["score_baselines"] == layers, model
        assert mine["extract_eval_activations"] == 1 and mine["probe_features"] == 1, model
        assert "predictor_comparison" not in mine, model  # one predictor: nothing to compare
        assert mine["resolved_config"] == 1 and mine["claims"] == 1, model
    # every job belongs to one model (the prefixes do not overlap for these names)
    assert sum(jobs.values()) == sum(count for rule, count in jobs.items() if rule.startswith(tuple(models)))


def test_relative_depths_resolve_per_model():
    shape = model_files.ModelShape(n_blocks=30, context_length=None, d_model=8, attention_width=8, model_type="llama")
    assert pnconfig.resolve_layers([0.0, 0.25, 0.5, 1.0, 3, "final"], shape, "m") == [0, 7, 14, 29, 3, "final"]
    assert pnconfig.resolve_layers([0, 1], shape, "m") == [0, 1]
    with pytest.raises(pnconfig.ConfigError, match="same block"):
        pnconfig.resolve_layers([0.5, 0.49], shape, "m")


def test_model_configs_put_each_model_under_its_own_experiment():
    config = {"experiment": "study", "layers": [0.0, 1.0], "model": {"id": "embedded", "random_init": False},
              "models": {"a": {"id": "embedded"}, "b": {"random_init": True, "layers": [0.5]}}}
    configs = pnconfig.model_configs(config)
    assert configs["a"]["experiment"] == "study/a" and configs["a"]["layers"] == [0.0, 1.0]
    assert configs["b"]["model"] == {"id": "embedded", "random_init": True} and configs["b"]["layers"] == [0.5]
    assert all(entry["models"] is None for entry in configs.values())


def test_with_predictor_gives_each_name_its_section_and_refuses_unknown_settings():
    config = {"predictor": {"kind": "attn1", "d_head": 64, "rotary": False},
              "predictors": {"attn1": None, "wide": {"kind": "attn1", "d_head": 128}, "mlp_k4": {}}}
    assert pnentries.predictor_names(config) == ["attn1", "wide", "mlp_k4"]
    assert pnentries.with_predictor(config, "wide")["predictor"] == {"kind": "attn1", "d_head": 128, "rotary": False}
    assert pnentries.with_predictor(config, "mlp_k4")["predictor"]["kind"] == "mlp_k4"
    with pytest.raises(pnconfig.ConfigError, match="unknown setting"):
        pnentries.with_predictor({**config, "predictors": {"x": {"kind": "attn1", "heads": 2}}}, "x")
    assert pnentries.predictor_names({"predictor": {"kind": "attn2"}, "predictors": None}) == ["attn2"]


def test_a_predictor_entry_may_override_training_for_itself_alone():
    config = {"predictor": {"kind": "attn1"}, "train": {"steps": 200, "lr": 1e-3},
              "predictors": {"attn1": None, "attn1_long": {"kind": "attn1", "train": {"steps": 5000}}}}
    assert pnentries.with_predictor(config, "attn1")["train"] == {"steps": 200, "lr": 1e-3}
    long = pnentries.with_predictor(config, "attn1_long")
    assert long["train"] == {"steps": 5000, "lr": 1e-3} and long["predictor"] == {"kind": "attn1"}
    assert config["train"]["steps"] == 200  # the shared section is left as it was
    with pytest.raises(pnconfig.ConfigError, match=r"predictors.x.train: unknown setting\(s\) \['step'\]"):
        pnentries.with_predictor({**config, "predictors": {"x": {"kind": "attn1", "train": {"step": 5}}}}, "x")


def write_summary(path: Path, r2: list[float], baseline: list[float]) -> str:
    frame = pd.DataFrame({"layer": ["0", "7"], "n_windows": [128, 128], "r2": r2, "r2_lo": np.subtract(r2, 0.1),
                          "r2_hi": np.add(r2, 0.1), "r2_mean": baseline, "r2_mean_lo": baseline, "r2_mean_hi": baseline,
                          "r2_minus_best": np.subtract(r2, baseline), "no_outliers_r2": r2,
                          "no_outliers_r2_mean": baseline})
    frame.to_csv(path, sep="\t", index=False)
    return str(path)


def write_cost(path: Path, seconds: float, steps: int, parameters: int, closed_form: bool = False) -> str:
    path.write_text(json.dumps({"train_seconds": seconds, "steps": steps, "parameters": parameters,
                                "closed_form": closed_form}))
    return str(path)


def test_predictor_comparison_table(tmp_path):
    summaries = {"attn1": write_summary(tmp_path / "a.tsv", [0.1, 0.2], [0.0, -0.5]),
                 "mlp_k4": write_summary(tmp_path / "b.tsv", [0.3, 0.4], [0.0, -0.5])}
    costs = {name: {layer: write_cost(tmp_path / f"{name}-{layer}.json", seconds, 200, parameters)
                    for layer in ("0", "7")}
             for name, seconds, parameters in (("attn1", 10.0, 2_000_000), ("mlp_k4", 4.0, 500_000))}
    table = compare.predictor_comparison(summaries, costs)
    assert list(table["model"]) == ["attn1", "attn1", "mean", "mean", "mlp_k4", "mlp_k4"]
    assert list(table["kind"]) == ["predictor"] * 2 + ["baseline"] * 2 + ["predictor"] * 2
    mlp = table[table["model"] == "mlp_k4"].set_index("layer")
    assert mlp.loc["7", "r2"] == 0.4 and mlp.loc["7", "r2_lo"] == pytest.approx(0.3)
    assert mlp.loc["0", "seconds_per_1000_steps"] == pytest.approx(4.0 / 200 * 1000)
    ridge = {"0": write_cost(tmp_path / "r0.json", 27.0, 1, 1000, closed_form=True),
             "7": write_cost(tmp_path / "r7.json", 26.0, 1, 1000, closed_form=True)}
    table = compare.predictor_comparison({**summaries, "ridge_ar4": summaries["mlp_k4"]}, {**costs, "ridge_ar4": ridge})
    fitted = table[table["model"] == "ridge_ar4"]
    assert fitted["seconds_per_1000_steps"].isna().all() and list(fitted["train_seconds"]) == [27.0, 26.0]
    assert table.loc[table["model"] == "attn1", "seconds_per_1000_steps"].notna().all()
    assert mlp.loc["0", "r2_per_million_parameters"] == pytest.approx(0.3 / 0.5)
    assert table[table["kind"] == "baseline"]["parameters"].isna().all()


def test_model_comparison_table_flips_the_next_token_gap(tmp_path):
    summaries = {"m": write_summary(tmp_path / "m.tsv", [0.1, 0.2], [0.0, 0.0])}
    differences = {}
    for task, value in (("domain", 0.3), ("next_token_type_8", -0.2)):
        path = tmp_path / f"{task}.tsv"
        pd.DataFrame({"layer": ["0", "7", "0"], "representation_a": ["hhat", "hhat", "hhat"],
                      "representation_b": ["r", "r", "h"], "difference": [value, value, 9.0],
                      "difference_lo": [value - 0.1] * 3, "difference_hi": [value + 0.05] * 3}).to_csv(
            path, sep="\t", index=False)
        differences[task] = str(path)
    table = compare.model_comparison(summaries, {"m": differences}, {"m": {"0": 0.0, "7": 0.25}})
    gap = table[table["metric"].str.startswith("next-token")].set_index("layer")
    assert gap.loc["7", "value"] == pytest.approx(0.2)  # r − ĥ = −(ĥ − r)
    assert (gap.loc["7", "lo"], gap.loc["7", "hi"]) == (pytest.approx(0.15), pytest.approx(0.3))
    assert set(table["depth"]) == {0.0, 0.25} and len(table) == 2 * 3  # R² and two gaps per layer


def test_comparison_figure_draws_a_predictor_named_like_a_baseline(tmp_path):
    """ridge_ar4 is a predictor and a baseline: the figure draws both lines (it once failed on the
    duplicate name)."""
    from pndecomp import figures

    rows = [(model, kind, layer, r2) for model, kind in (("attn1", "predictor"), ("ridge_ar4", "predictor"),
                                                         ("ridge_ar4", "baseline"), ("mean", "baseline"))
            for layer, r2 in (("0", 0.1), ("14", 0.2))]
    table = pd.DataFrame(rows, columns=["model", "kind", "layer", "r2"]).assign(r2_lo=0.0, r2_hi=0.3)
    png, pdf = tmp_path / "c.png", tmp_path / "c.pdf"
    figures.r2_by_layer(table, "predictors", png, pdf)
    assert png.stat().st_size > 1000 and pdf.exists()


def test_budget_study_trains_each_entry_at_its_own_budget(tmp_path):
    """configs/budget-study.yaml: three budgets of each SGD predictor, each its own training job per layer,
    ridge_ar4 beside them, and the budget table and figure."""
    config = study("budget-study")
    budgets = {(entry["kind"], entry["train"]["steps"]) for entry in config["predictors"].values() if entry}
    assert budgets == {(kind, steps) for kind in ("attn1", "attn1_rope") for steps in (200, 1000, 5000)}
    jobs = dry_run(REPO / "configs" / "budget-study.yaml", tmp_path)
    entries, layers = len(config["predictors"]), len(config["layers"])
    assert jobs["train_predictor"] == entries * layers
    assert jobs["budget_comparison"] == 1 and jobs["draw_budget_comparison"] == 1 and jobs["claims"] == 1
    assert jobs["patch_layer"] == entries * layers and "steer_layer" not in jobs


def write_curve(path: Path, steps: list[int], kept: int, batch_size: int = 16, pool: int = 64) -> str:
    # windows_seen as train.py writes it: distinct windows, at most the pool
    frame = pd.DataFrame({"step": steps, "train_loss": [2.0 - 0.1 * i for i in range(len(steps))],
                          "windows_seen": [min(step * batch_size, pool) for step in steps],
                          "val_mse": [3.0 - 0.1 * i for i in range(len(steps))]})
    frame["kept"] = frame["step"] == kept
    frame.to_parquet(path)
    return str(path)


def test_budget_comparison_table(tmp_path):
    summary = write_summary(tmp_path / "s.tsv", [0.1, 0.2], [0.0, -0.5])
    frame = pd.read_csv(summary, sep="\t")
    frame["best_baseline"] = "mean"
    frame["no_outliers_best_baseline"] = "mean"
    frame.to_csv(summary, sep="\t", index=False)
    differences = tmp_path / "d.tsv"
    pd.DataFrame({"layer": ["0", "7"], "representation_a": "hhat", "representation_b": "r", "difference": [0.3, -0.2],
                  "difference_lo": [0.2, -0.3], "difference_hi": [0.4, -0.1]}).to_csv(
        differences, sep="\t", index=False)
    runs = {"attn1_200": {"kind": "attn1", "steps": 200, "batch_size": 16, "summary": summary,
                          "curves": {"0": write_curve(tmp_path / "c0.parquet", [100, 200], kept=200),
                                     "7": write_curve(tmp_path / "c7.parquet", [100, 200, 250], kept=200)},
                          "differences": {"domain": str(differences), "next_token_type_8": str(differences)},
                          "patching": None}}
    table = compare.budget_comparison(runs, train_windows=64)
    mine = table[(table["kind"] == "attn1") & (table["layer"] == "7")].set_index("metric")
    assert mine.loc["eval R²", "value"] == 0.2 and mine.loc["eval R²", "lo"] == pytest.approx(0.1)
    assert mine.loc["domain F1: ĥ − r", "value"] == -0.2
    gap = mine.loc["next-token type F1: r − ĥ"]
    assert (gap["value"], gap["lo"], gap["hi"]) == (pytest.approx(0.2), pytest.approx(0.1), pytest.approx(0.3))
    assert "domain F1: ĥ − h_mean" not in mine.index  # no (hhat, h_mean) pair in the differences
    assert set(mine["last_step"]) == {250} and set(mine["kept_step"]) == {200}
    assert mine["passes"].tolist() == pytest.approx([250 * 16 / 64] * len(mine))  # windows drawn, not distinct
    assert mine["kept_train_loss"].tolist() == pytest.approx([1.9] * len(mine))
    assert mine["kept_val_mse"].tolist() == pytest.approx([2.9] * len(mine))
    baseline = table[(table["kind"] == "baseline") & (table["layer"] == "7") & (table["metric"] == "eval R²")]
    assert list(baseline["baseline"]) == ["mean"] and list(baseline["value"]) == [-0.5]

    from pndecomp import study_figures

    png, pdf = tmp_path / "b.png", tmp_path / "b.pdf"
    study_figures.budget_comparison(pd.concat([table, table.assign(predictor="attn1_1000", steps=1000)]), png, pdf)
    assert png.stat().st_size > 1000 and pdf.exists()
