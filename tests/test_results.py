"""pndecomp.results: a run's tables in layer order, from hand-made results directories written by the
workflow's own writers (a whole tiny workflow run: tests/test_workflow.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pndecomp import storage
from pndecomp.results import ResultsError, layer_key, load

# Config order, as the workflow writes its tables: not model order.
LAYERS = ["10", "final", "2", "embed"]
MODEL_ORDER = ["embed", "2", "10", "final"]


def write_run(out: Path, predictors=("attn1",), layers=LAYERS, config: dict | None = None) -> Path:
    """A results directory with a layer summary, per-position tables and a patching table per predictor."""
    (out / "windows").mkdir(parents=True)
    for index, predictor in enumerate(predictors):
        metrics = out / "metrics" / predictor
        storage.write_tsv(pd.DataFrame({"layer": layers, "r2": [0.1 * (i + 1) + index for i in range(len(layers))],
                                        "best_baseline": "ridge_ar4"}), metrics / "layer_summary.tsv")
        for i, layer in enumerate(layers):
            storage.write_parquet(pd.DataFrame({"position": [2, 3], "mse": [float(i), i + 0.5]}),
                                  metrics / "per_position" / f"layer-{layer}.parquet", metadata={"layer": layer})
        storage.write_tsv(pd.DataFrame({"layer": layers, "kind": "hhat", "mean": range(len(layers))}),
                          out / "interventions" / predictor / "patching.tsv")
    if config is not None:
        (out / "config.yaml").write_text(yaml.safe_dump(config))
    return out


def test_layer_key_orders_embed_blocks_by_number_then_final():
    assert sorted(LAYERS, key=layer_key) == MODEL_ORDER
    with pytest.raises(ValueError, match="'layer7' is not a layer name"):
        layer_key("layer7")


def test_tables_come_in_model_layer_order_with_the_files_values(tmp_path):
    run = load(write_run(tmp_path / "results" / "demo"))
    assert run.config is None and run.predictors == ["attn1"] and run.layers == MODEL_ORDER
    summary = run.layer_summary()
    assert list(summary["layer"]) == MODEL_ORDER
    assert list(summary["layer"].cat.categories) == MODEL_ORDER and summary["layer"].cat.ordered
    written = pd.read_csv(tmp_path / "results/demo/metrics/attn1/layer_summary.tsv", sep="\t", dtype={"layer": str})
    assert dict(zip(summary["layer"], summary["r2"])) == dict(zip(written["layer"], written["r2"]))
    # ordered: comparisons and sorting go by depth, not text
    assert list(summary.loc[summary["layer"] > "2", "layer"]) == ["10", "final"]
    per_position = run.per_position()
    assert list(per_position.columns[:3]) == ["layer", "position", "mse"]
    assert list(dict.fromkeys(per_position["layer"])) == MODEL_ORDER
    for layer in LAYERS:
        rows = per_position[per_position["layer"] == layer]
        file = pd.read_parquet(tmp_path / f"results/demo/metrics/attn1/per_position/layer-{layer}.parquet")
        assert rows["mse"].tolist() == file["mse"].tolist() and rows["position"].tolist() == [2, 3]
    assert list(run.patching()["mean"]) == [3, 2, 0, 1]


def test_a_path_that_is_no_run_says_what_a_results_directory_is(tmp_path):
    with pytest.raises(ResultsError, match=r"nowhere does not exist.*results/<experiment>/.*snakemake"):
        load(tmp_path / "nowhere")
    write_run(tmp_path / "results" / "demo")
    with pytest.raises(ResultsError, match=r"results is not a run's results directory.*results/demo"):
        load(tmp_path / "results")


def test_a_half_finished_run_loads_and_names_what_is_missing(tmp_path):
    out = write_run(tmp_path / "results" / "demo")
    (out / "metrics/attn1/per_position/layer-10.parquet").unlink()
    run = load(out)
    assert list(run.layer_summary()["layer"]) == MODEL_ORDER  # what is there still reads
    with pytest.raises(ResultsError, match=r"missing metrics/attn1/per_position/layer-10\.parquet.*"
                                           r"`snakemake results/demo/metrics/attn1/per_position/layer-10\.parquet`"):
        run.per_position()
    with pytest.raises(ResultsError, match=r"missing interventions/attn1/steering\.tsv.*steering layers"):
        run.steering()
    with pytest.raises(ResultsError, match=r"missing metrics/predictor_comparison\.tsv.*two or more predictors"):
        run.predictor_comparison()
    with pytest.raises(ResultsError, match="no claims scorecard"):
        run.claims()
    with pytest.raises(ResultsError, match=r"no predictor 'attn2'; this run has \['attn1'\]"):
        run.layer_summary("attn2")
    with pytest.raises(ResultsError, match=r"no probe task 'domain'; this run has \[\]"):
        run.probes("domain")


def test_the_config_orders_predictors_and_without_it_several_need_a_name(tmp_path):
    config = {"experiment": "demo", "layers": [10, "final", 2, "embed"], "predictor": {"kind": "attn1"},
              "predictors": ["mlp_k4", "attn1"], "probes": {"tasks": ["domain"]}}
    run = load(write_run(tmp_path / "with" / "demo", predictors=("mlp_k4", "attn1"), config=config))
    assert run.config == config and run.predictors == ["mlp_k4", "attn1"] and run.tasks == ["domain"]
    assert run.layers == MODEL_ORDER
    assert run.layer_summary()["r2"].iloc[0] == pytest.approx(0.4)  # mlp_k4's embed row
    bare = load(write_run(tmp_path / "without" / "demo", predictors=("mlp_k4", "attn1")))
    assert bare.predictors == ["attn1", "mlp_k4"]
    with pytest.raises(ResultsError, match=r"predictors \['attn1', 'mlp_k4'\] and no config\.yaml"):
        bare.layer_summary()
    assert bare.layer_summary("attn1")["r2"].iloc[0] == pytest.approx(1.4)


def test_a_model_study_holds_its_runs_and_the_comparison(tmp_path):
    study = tmp_path / "results" / "study"
    write_run(study / "trained")
    write_run(study / "untrained", layers=["2", "embed"])
    storage.write_tsv(pd.DataFrame({"model": ["untrained"] * 4 + ["trained"] * 2, "layer": ["2", "embed"] * 3,
                                    "metric": ["eval R²", "eval R²", "gap", "gap", "eval R²", "eval R²"],
                                    "value": np.arange(6.0)}), study / "model_comparison.tsv")
    run = load(study)
    assert list(run.models) == ["trained", "untrained"]
    assert list(run.models["untrained"].layer_summary()["layer"]) == ["embed", "2"]
    comparison = run.model_comparison()
    assert list(comparison["value"]) == [1, 0, 3, 2, 5, 4]  # by model, metric (file order), then layer
    with pytest.raises(ResultsError, match=r"model study of \['trained', 'untrained'\].*\.models\['trained'\]"):
        run.layer_summary()
    # before the comparison is made, the models' own config.yaml name them as the study's
    (study / "model_comparison.tsv").unlink()
    with pytest.raises(ResultsError, match="not a run's results directory"):
        load(study)
    for name in ("trained", "untrained"):
        (study / name / "config.yaml").write_text(yaml.safe_dump({"experiment": f"study/{name}"}))
    assert list(load(study).models) == ["trained", "untrained"]
    claims = pd.DataFrame({"claim": ["ĥ carries the domain"] * 3, "verdict": ["holds"] * 3,
                           "converged": [True, False, None]})
    storage.write_tsv(claims, study / "claims.tsv")
    # as written, with the verdict as the card shows it (a card from before `converged` has plain verdicts)
    pd.testing.assert_frame_equal(run.claims().drop(columns="shown"), pd.read_csv(study / "claims.tsv", sep="\t"))
    assert run.claims()["shown"].tolist() == ["holds", "holds (not converged)", "holds"]
    storage.write_tsv(claims.drop(columns="converged"), study / "claims.tsv")
    assert run.claims()["shown"].tolist() == ["holds"] * 3
