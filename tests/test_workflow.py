"""The whole workflow through the snakemake CLI on the tiny model and corpus, in a temp directory."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors import safe_open
from snakemake_log import job_stats, planned_jobs, snakemake

from pndecomp import results, storage
from pndecomp.results import ResultsError, load

REPO = Path(__file__).resolve().parents[1]
FIGURES = [f"fig{i}.{ext}" for i in range(1, 7) for ext in ("png", "pdf")]

pytestmark = pytest.mark.slow


def test_full_run_makes_every_figure_and_table(tiny_run):
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    recorded = yaml.safe_load((out / "config.yaml").read_text())  # the resolved config, defaults filled
    assert recorded["layers"] == [0, 2, 3] and recorded["train"]["weight_decay"] == 0.01
    for name in FIGURES:
        assert (out / "figures" / name).stat().st_size > 1000, name
    summary = pd.read_csv(out / "metrics" / "attn1" / "layer_summary.tsv", sep="\t", dtype={"layer": str})
    assert list(summary["layer"]) == ["0", "2", "3"]
    # Every model under every mask, with its interval and the paired difference to that mask's best baseline.
    from pndecomp.stages.metrics import MASKS

    baselines = [column.removeprefix("r2_") for column in summary.columns if column.startswith("r2_")
                 and not column.endswith(("_lo", "_hi")) and column != "r2_minus_best"]
    assert {"mean", "persistence", "context_mean", "context_mean_from2", "ridge_ar1", "ridge_ar4"} == set(baselines)
    for mask in MASKS:
        for stem in ("r2", *[f"r2_{name}" for name in baselines], "r2_minus_best"):
            assert (summary[f"{mask}_{stem}_lo"] <= summary[f"{mask}_{stem}_hi"]).all(), (mask, stem)
        assert summary[f"{mask}_best_baseline"].isin(baselines).all()
    # The learning curve is computed on predictor_val, never on the reported predictor_eval windows.
    curve = pd.read_parquet(out / "predictors" / "attn1" / "layer-2" / "curve.parquet")
    assert {"val_mse", "val_r2"} <= set(curve.columns) and not any(c.startswith("eval_") for c in curve.columns)
    splits = {name: set(pd.read_parquet(out / "windows" / f"{name}.parquet")["group"])
              for name in ("predictor_train", "predictor_val", "predictor_eval")}
    others = splits["predictor_train"] | splits["predictor_eval"]
    assert splits["predictor_val"] and not splits["predictor_val"] & others
    for task in ("domain", "next_token_type_8", "domain_control", "next_token_type_8_control"):
        table = pd.read_csv(out / "probes" / "attn1" / f"{task}.tsv", sep="\t", dtype={"layer": str})
        assert len(table) == 3 * 5
        assert list(table["representation"][:5]) == ["h", "h_mean", "hhat", "r", "hhat_r"]
        assert table["test_macro_f1"].between(0, 1).all()
        # 95 % bootstrap intervals (metrics.bootstrap defaults to 1000) around every point value
        assert (table["test_macro_f1_lo"] <= table["test_macro_f1"]).all()
        assert (table["test_macro_f1"] <= table["test_macro_f1_hi"]).all()
        assert (table["n_classes_excluded"] >= 0).all() and (table["n_resamples"] == 1000).all()
        differences = pd.read_csv(out / "probes" / "attn1" / f"{task}_differences.tsv", sep="\t", dtype={"layer": str})
        assert len(differences) == 3 * 3 and set(differences["representation_b"]) == {"r", "h", "h_mean"}
        assert (differences["difference_lo"] <= differences["difference"]).all()
        assert (differences["difference"] <= differences["difference_hi"]).all()
        if not task.endswith("_control"):
            control = pd.read_csv(out / "probes" / "attn1" / f"{task}_control.tsv", sep="\t", dtype={"layer": str})
            assert (table["control_task"] == f"{task}_control").all()
            assert list(table["control_test_macro_f1"]) == list(control["test_macro_f1"])
            selectivity = table["test_macro_f1"] - table["control_test_macro_f1"]
            assert (table["selectivity"] - selectivity).abs().max() < 2e-6  # the TSV keeps 6 significant digits
            assert (table["selectivity_lo"] <= table["selectivity_hi"]).all()
        else:
            assert "selectivity" not in table
    for figure in ("probe_domain_control", "probe_next_token_type_8_control"):
        assert (out / "figures" / f"{figure}.png").stat().st_size > 1000, figure
    per_position = pd.read_parquet(out / "metrics" / "attn1" / "per_position" / "layer-2.parquet")
    assert list(per_position["position"]) == list(range(2, 25))
    for column in ("spearman_rho", "spearman_rho_best_baseline", "spearman_rho_displacement"):
        assert per_position[column].between(-1, 1).all() and f"{column}_lo" in per_position, column


def test_interventions_make_their_tables_and_figures(tiny_run):
    """Patching at every layer (identity exactly 0), steering at the middle layer (α = 0 exactly 0), both
    tables and figures in the default run."""
    from pndecomp.patch_kinds import PATCHES

    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    patching = pd.read_csv(out / "interventions" / "attn1" / "patching.tsv", sep="\t", dtype={"layer": str})
    assert list(dict.fromkeys(patching["layer"])) == ["0", "2", "3"]
    pooled = patching[patching["scope"] == "pooled"]
    assert set(pooled["kind"]) == set(PATCHES) and (pooled["n_windows"] == 8).all()
    assert (patching.loc[patching["kind"] == "identity", ["mean", "low", "high"]] == 0).all().all()
    assert (pooled.loc[pooled["kind"] == "hhat_plus_shuffled_r", "mean"] != 0).all()
    steering = pd.read_csv(out / "interventions" / "attn1" / "steering.tsv", sep="\t", dtype={"layer": str})
    assert set(steering["layer"]) == {"2"} and set(steering["probe_layer"].dropna().astype(int)) == {2, 3}
    unsteered = steering[(steering["alpha"] == 0) & (steering["metric"] != "p_domain")]
    scored = unsteered["n_windows"] > 0  # a domain without probe_test windows has NaN for its own text
    assert scored.sum() >= 10 and (unsteered.loc[scored, ["mean", "low", "high"]] == 0).all().all()
    assert unsteered.loc[~scored, "mean"].isna().all()
    for name in ("patching", "steering"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name


def test_claims_scorecard_reads_the_run_tables(tiny_run):
    """claims.tsv has a verdict in every row, and its values are the metric tables' own: the paired
    differences of the layer summary and the probe differences, and the MSE trend recomputed from the
    per-position table with numpy."""
    import numpy as np

    from pndecomp import claims

    workdir, _ = tiny_run
    run = load(workdir / "results" / "tiny")
    card = run.claims()
    assert set(card["verdict"]) <= set(claims.VERDICTS) and card["verdict"].notna().all()
    assert [claim.name for claim in claims.CLAIMS] == list(dict.fromkeys(card["claim"]))
    summary = run.layer_summary().set_index("layer")
    beats = card[card["claim"] == "beats_best_baseline"].set_index("layers")
    for layer in ("0", "2", "3"):
        assert beats.loc[layer, "value"] == pytest.approx(summary.loc[layer, "r2_minus_best"], rel=1e-5)
        assert beats.loc[layer, "lo"] == pytest.approx(summary.loc[layer, "r2_minus_best_lo"], rel=1e-5)
    differences = run.probe_differences("domain")
    hhat_r = differences[(differences["representation_a"] == "hhat") & (differences["representation_b"] == "r")]
    domain = card[card["claim"] == "domain_hhat_beats_r"]
    np.testing.assert_allclose(domain["value"].to_numpy(), hhat_r["difference"].to_numpy(), rtol=1e-5)
    per_position = run.per_position()
    curve = per_position.loc[per_position["layer"] == "2", "mse"].to_numpy()
    slope = np.polyfit(np.linspace(0, 1, len(curve)), curve / curve.mean(), 1)[0]
    middle = card[card["claim"] == "mse_falls_with_position"].iloc[0]
    assert middle["layers"] == "2" and middle["value"] == pytest.approx(slope, rel=1e-4)


def test_a_predictor_stopped_at_its_cap_marks_every_verdict_not_converged(tiny_run):
    """The tiny config trains 20 steps without a stopping rule: every layer's weights say the cap ended
    training, so every row is ``converged = False`` and shown "<verdict> (not converged)"; the Markdown
    card shows the same."""
    from pndecomp import claims

    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    for layer in ("0", "2", "3"):
        stop = storage.load_metadata(out / "predictors" / "attn1" / f"layer-{layer}" / "predictor.safetensors")["stop"]
        assert stop["hit_cap"] and not stop["stopping_rule"] and stop["last_step"] == 20
    run = load(out)
    training = run.training()
    assert list(training["layer"]) == ["0", "2", "3"] and not training["converged"].any()
    assert set(training["last_step"]) == {20} and training["hit_cap"].all()
    table = results.layer_table(run)  # docs/results.md's per-layer table, from the same files
    assert table.count("| 20 / 20, no |") == 3
    card = run.claims()
    assert (card["converged"] == False).all()  # noqa: E712 (a column of booleans)
    measured = card["verdict"] != "not run"
    assert (card.loc[measured, "shown"] == card.loc[measured, "verdict"] + " (not converged)").all()
    assert (card.loc[~measured, "shown"] == "not run").all()
    assert "**holds (not converged)**" in claims.markdown(card) or "**inconclusive (not converged)**" in \
        claims.markdown(card)


def test_auto_storage_dtype_is_chosen_once_and_stored_everywhere(tiny_run):
    """The tiny config leaves extraction.dtype at its default, auto: the eval extraction chose float16 for
    the tiny model's small states, and the train activations and the residuals are stored in it."""
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    choice = storage.read_json(out / "activations" / "storage_dtype.json")
    assert choice["dtype"] == "float16" and set(choice["max_abs_hidden"]) == {"0", "2", "3"}
    for path in [*out.glob("activations/*/layer-*.safetensors"), *out.glob("residuals/*/*/layer-*.safetensors")]:
        with safe_open(str(path), framework="pt") as handle:
            assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"F16"}, path


def test_second_dry_run_has_nothing_to_do(tiny_run):
    workdir, _ = tiny_run
    assert "Nothing to be done" in snakemake(workdir, "-n")


def test_building_the_dag_imports_no_torch_transformers_or_plotting_library(tiny_run):
    """Snakemake builds the DAG from pndecomp.registry, the torch-free config and the resource estimates: a dry run
    of the whole workflow never imports torch, transformers, matplotlib, seaborn or plotly (``python -X importtime``
    lists every module imported)."""
    workdir, _ = tiny_run
    command = [sys.executable, "-X", "importtime", "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
               "--cores", "1", "--directory", str(workdir), "-n"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert {"snakemake", "pndecomp"} <= imported  # the listing covers the workflow's own imports
    heavy = {"torch", "transformers", "matplotlib", "seaborn", "plotly"}
    assert not imported & heavy, sorted(imported & heavy)


def test_one_deleted_figure_rebuilds_alone(tiny_run):
    workdir, _ = tiny_run
    figure = workdir / "results" / "tiny" / "figures" / "fig3.png"
    figure.unlink()
    log = snakemake(workdir, str(figure.relative_to(workdir)))
    assert figure.exists()
    assert job_stats(log) == {"draw_per_position": 1}


def changed_copy(workdir: Path, old: str, new: str) -> Path:
    """A copy of a finished run whose config has ``old`` replaced by ``new``."""
    changed = workdir / f"changed-{''.join(c for c in new if c.isalnum())}"
    changed.mkdir()
    shutil.copytree(workdir / "results", changed / "results")
    shutil.copytree(workdir / ".snakemake", changed / ".snakemake")
    config = (workdir / "config.yaml").read_text()
    assert old in config
    (changed / "config.yaml").write_text(config.replace(old, new))
    return changed


def test_predictor_change_reruns_training_and_downstream_not_extraction(tiny_run):
    workdir, _ = tiny_run
    jobs = job_stats(snakemake(changed_copy(workdir, "d_head: 8", "d_head: 4"), "-n"))
    assert jobs["train_predictor"] == 3
    for downstream in ("decompose_eval", "per_position_metrics", "probe_features", "fit_probe", "draw_learning_curve",
                       "draw_probe_heatmap"):
        assert downstream in jobs, downstream
    for upstream in ("make_windows", "extract_train_activations", "extract_val_activations",
                     "extract_eval_activations"):
        assert upstream not in jobs, upstream


def test_added_predictor_runs_only_its_own_jobs(tiny_run):
    """A second predictor in `predictors:` adds its own jobs, the comparison and the claims card (which reads every
    predictor's tables); nothing of the first reruns."""
    workdir, _ = tiny_run
    changed = changed_copy(workdir, "metrics:", "predictors: {attn1: null, wide: {kind: attn1, d_head: 16}}\nmetrics:")
    jobs = [job for job in planned_jobs(snakemake(changed, "-n")) if job["rule"] != "all"]
    assert {job["rule"] for job in jobs} == {
        "train_predictor", "decompose_eval", "layer_scores", "layer_summary", "probe_features", "fit_probe",
        "probe_table", "patch_layer", "steer_layer", "intervention_table", "predictor_comparison",
        "draw_predictor_comparison", "per_position_metrics", "claims", "resolved_config"}
    for job in jobs:
        if job["rule"] == "resolved_config":  # the record of the changed config is rewritten
            assert job["reason"].startswith("Params have changed"), job
            continue
        if job["rule"] == "claims":  # the experiment's one card gains the new predictor's rows
            assert job["output"].endswith("results/tiny/claims.tsv"), job
            assert not job["reason"].startswith("Missing output files"), job
            continue
        assert "/wide/" in job["output"] or "predictor_comparison" in job["output"], job
        assert job["reason"].startswith("Missing output files"), job
    assert sum(job["rule"] == "train_predictor" for job in jobs) == 3  # one per layer


def test_shared_probe_states_give_the_same_probe_features(tiny_run):
    """probes.shared_states: one stored LM pass over the probe windows (extract_probe_activations) feeds
    probe_features, which then runs no LM; its files are the fused pass's byte for byte."""
    workdir, _ = tiny_run
    changed = changed_copy(workdir, "probes:", "probes:\n  shared_states: true")
    features = sorted((workdir / "results" / "tiny" / "probe_features" / "attn1").glob("layer-*.safetensors"))
    assert len(features) == 3
    log = snakemake(changed, *[str(path.relative_to(workdir)) for path in features])
    assert job_stats(log) == {"extract_probe_activations": 1, "probe_features": 1}
    for path in features:
        assert (changed / path.relative_to(workdir)).read_bytes() == path.read_bytes(), path.name


def test_figure_setting_reruns_only_figures(tiny_run):
    """figures.dpi is read by the drawing rules alone: every figure redraws, nothing else reruns."""
    workdir, _ = tiny_run
    jobs = job_stats(snakemake(changed_copy(workdir, "metrics:", "figures: {dpi: 100}\nmetrics:"), "-n"))
    assert set(jobs) == {"draw_learning_curve", "draw_per_position", "draw_layer_scores", "draw_probe_heatmap",
                         "draw_interventions", "resolved_config", "all"}


def test_bootstrap_setting_reruns_only_metric_and_figure_jobs(tiny_run):
    workdir, _ = tiny_run
    changed = changed_copy(workdir, "  hide_first_positions: 4", "  hide_first_positions: 4\n  bootstrap: 50")
    jobs = job_stats(snakemake(changed, "-n"))
    assert {"layer_scores", "per_position_metrics", "fit_probe", "layer_summary"} <= set(jobs)
    assert set(jobs) <= {"layer_scores", "per_position_metrics", "fit_probe", "probe_table", "layer_summary", "all",
                         "resolved_config",
                         "draw_learning_curve", "draw_per_position", "draw_layer_scores", "draw_probe_heatmap",
                         "patch_layer", "steer_layer", "intervention_table", "draw_interventions", "claims"}


def test_report_holds_every_figure_and_table(tiny_run):
    """`snakemake --report` builds one HTML page with figures 1-6 and the layer and probe tables."""
    workdir, _ = tiny_run
    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    for name in [*[f"fig{i}.png" for i in range(1, 7)], "layer_summary.tsv", "domain.tsv", "next_token_type_8.tsv",
                 "domain_differences.tsv", "probe_domain_control.png", "patching.png", "steering.png", "patching.tsv",
                 "steering.tsv", "claims.tsv"]:
        assert name in html, name
    assert "Domain probe: test macro-F1" in html  # a caption from the task registry, rendered
    assert "How to read this report" in html  # the workflow's description, workflow/report/workflow.rst
    # The report's menu lists categories alphabetically: the claims scorecard comes first.
    categories = json.loads(re.search(r"categories = (\{.*?\});?\n", html).group(1))
    assert sorted(categories)[0] == "Claims" and "Tables" in categories


def test_results_api_reads_every_table_of_a_run(tiny_run):
    """pndecomp.results.load on a real run: each accessor gives the files' rows (layers in depth order), and a
    deleted table is named with the snakemake target that rebuilds it."""
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    run = load(out)
    assert run.predictors == ["attn1"] and run.layers == ["0", "2", "3"]
    assert {"domain", "next_token_type_8"} <= set(run.tasks)

    def written(relative: str) -> pd.DataFrame:
        return pd.read_csv(out / relative, sep="\t", dtype={"layer": str, "probe_layer": str})

    for table, relative in [(run.layer_summary(), "metrics/attn1/layer_summary.tsv"),
                            (run.probes("domain"), "probes/attn1/domain.tsv"),
                            (run.probe_differences("domain"), "probes/attn1/domain_differences.tsv"),
                            (run.patching(), "interventions/attn1/patching.tsv")]:
        pd.testing.assert_frame_equal(table.astype({"layer": str}), written(relative), check_dtype=False)
    probe_layers = set(written("interventions/attn1/steering.tsv")["probe_layer"].dropna())
    assert list(run.steering()["probe_layer"].cat.categories) == sorted(probe_layers, key=int)  # by depth
    for table, name in [(run.per_position(), "metrics/attn1/per_position/layer-{}.parquet"),
                        (run.learning_curves(), "predictors/attn1/layer-{}/curve.parquet")]:
        assert list(dict.fromkeys(table["layer"])) == ["0", "2", "3"]
        for layer in ("0", "2", "3"):
            pd.testing.assert_frame_equal(
                table[table["layer"] == layer].drop(columns="layer").reset_index(drop=True),
                pd.read_parquet(out / name.format(layer)))
    # Half-finished (on a copy): a deleted table is named with its target; the rest still reads.
    copy = workdir.parent / "results-api-copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "metrics" / "attn1" / "per_position")
    with pytest.raises(ResultsError, match=r"metrics/attn1/per_position/layer-0\.parquet"):
        load(copy).per_position()
    assert len(load(copy).layer_summary()) == 3


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the pndecomp sources that this Python imports from, under tmp_path/src: it stands for a
    changed checkout when put first on PYTHONPATH."""
    from pndecomp.code_version import package_dir

    copy = tmp_path / "src" / "pndecomp"
    shutil.copytree(package_dir(), copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_unchanged_code_is_a_no_op_wherever_it_lies(tiny_run, package_copy):
    workdir, _ = tiny_run
    assert "Nothing to be done" in snakemake(workdir, "-n", "results/tiny/figures/fig1.png",
                                             package_root=package_copy.parent)


def test_changed_figure_module_reruns_the_figures_alone(tiny_run, package_copy):
    """A change to pndecomp/figures.py reruns the jobs whose scripts import it (the drawing rules), nothing else."""
    workdir, _ = tiny_run
    figures = package_copy / "figures.py"
    figures.write_text(figures.read_text() + "\n# a change to the figure code\n")
    # the subprocess resolves pndecomp to the copy, not to the checkout
    probe = "import importlib.util; print(importlib.util.find_spec('pndecomp').origin)"
    env = {**os.environ, "PYTHONPATH": str(package_copy.parent)}
    origin = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert Path(origin.stdout.strip()) == package_copy / "__init__.py"

    jobs = planned_jobs(snakemake(workdir, "-n", "results/tiny/figures/fig1.png", package_root=package_copy.parent))
    assert [job["rule"] for job in jobs] == ["draw_learning_curve"]
    assert "params" in jobs[0]["reason"].lower(), jobs[0]
    jobs = [job for job in planned_jobs(snakemake(workdir, "-n", package_root=package_copy.parent))
            if job["rule"] != "all"]
    assert {job["rule"] for job in jobs} == {"draw_learning_curve", "draw_per_position", "draw_layer_scores",
                                             "draw_probe_heatmap", "draw_interventions"}
