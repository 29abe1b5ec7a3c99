"""Where the embedded default's training settings come from: validation R² of the default predictor for
a grid of training settings, on the default run's cached activations, never on predictor_eval.

    .venv/bin/python bench/train_choice.py                      # layers 7 and 15, config.yaml's settings
    .venv/bin/python bench/train_choice.py --layers 0 7 15 22 29 --set train.lr=1e-3,3e-3 \
        --set predictor.input_norm=false,true                   # every combination, side by side
    .venv/bin/python bench/train_choice.py --set train.schedule=cosine --set train.stop_patience=null \
        --set train.steps=200,300                               # the former fixed budgets

Needs a finished `make run` (results/embedded-smollm2, or ``--experiment NAME``: the predictor_train
and predictor_val activations, the materialized model and the resolved config.yaml).
``--set KEY=V1,V2`` overrides a ``train.*`` or ``predictor.*`` key of the run's config (values parsed
as YAML); every combination of the values trains once per layer, with the pipeline's own training stage.
Each row reports where training stopped (``last_step``, and whether the cap ended it), the step whose
weights were kept, the kept validation R² (predictor_val, train.eval_windows windows: the curve's own
score) and the optimizer's seconds, so a setting is chosen by what reaches the plateau, and how fast.
"""
from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import _common as C  # noqa: I001
import pandas as pd
import yaml
from snakemake.utils import validate

from pndecomp import storage
from pndecomp.predictor_entries import with_predictor
from pndecomp.stages import train as train_stages

RESULTS = C.REPO / "results"


def resolved_config(overrides: dict, results: Path) -> dict:
    """The run's resolved config (``results/<experiment>/config.yaml``) with ``overrides``
    ({"train.lr": 1e-3, ...}) applied, validated, defaults filled."""
    config = yaml.safe_load((results / "config.yaml").read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        config.setdefault(section, {})[key] = value
    validate(config, str(C.REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return with_predictor(config, config["predictor"]["kind"])


def train_once(results: Path, layer: str, overrides: dict, workdir: Path) -> dict:
    config = resolved_config(overrides, results)
    activations = results / "activations"
    stem = workdir / f"layer-{layer}-{abs(hash(tuple(sorted(overrides.items()))))}"
    train_stages.train_predictor(config, str(results / "model"), layer,
                                 str(activations / "predictor_train" / f"layer-{layer}.safetensors"),
                                 str(activations / "predictor_val" / f"layer-{layer}.safetensors"),
                                 f"{stem}.safetensors", f"{stem}-curve.parquet", f"{stem}.resume.pt",
                                 f"{stem}-cost.json")
    curve = pd.read_parquet(f"{stem}-curve.parquet")
    stop = storage.load_metadata(f"{stem}.safetensors")["stop"]
    kept = curve[curve["kept"]].iloc[0]
    return {"layer": layer, **overrides, "last_step": stop["last_step"], "hit_cap": stop["hit_cap"],
            "kept_step": stop["kept_step"], "lr_decays": stop.get("lr_decays", 0), "kept_val_r2": kept["val_r2"],
            "train_s": storage.read_json(f"{stem}-cost.json")["train_seconds"],
            "curve": " ".join(f"{value:.3f}" for value in curve["val_r2"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=["7", "15"])
    parser.add_argument("--experiment", default="embedded-smollm2",
                        help="the run under results/ whose activations and resolved config to train on")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                        help="a train.* or predictor.* key and the values to try (YAML), e.g. train.lr=1e-3,3e-3")
    parser.add_argument("--curves", action="store_true", help="print each run's validation R² per evaluation")
    args = parser.parse_args()
    grid = {}
    for item in args.set:
        key, _, values = item.partition("=")
        if not key.startswith(("train.", "predictor.")) or not values:
            parser.error(f"--set {item!r}: expected train.KEY=V1,V2 or predictor.KEY=V1,V2")
        grid[key] = [yaml.safe_load(value) for value in values.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for layer in args.layers:
            for values in itertools.product(*grid.values()):
                row = train_once(RESULTS / args.experiment, layer, dict(zip(grid, values, strict=True)), Path(workdir))
                rows.append(row)
                C.say(f"layer {layer} {dict(zip(grid, values, strict=True))}: stopped at {row['last_step']}"
                      f"{' (cap)' if row['hit_cap'] else ''}, kept {row['kept_step']}, val R² {row['kept_val_r2']:.4f},"
                      f" {row['train_s']:.0f} s")
    table = pd.DataFrame(rows)
    shown = table if args.curves else table.drop(columns="curve")
    print("\nper layer and setting (predictor_val, train.eval_windows windows):")
    print(shown.round(4).to_string(index=False))


if __name__ == "__main__":
    main()
