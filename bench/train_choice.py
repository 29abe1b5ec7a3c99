"""Where the embedded default's training settings come from: validation R² of the default predictor for a
few (train.steps, train.lr, train.normalize) settings, on the default run's cached activations, never on
predictor_eval.

    .venv/bin/python bench/train_choice.py                      # layers 7 and 15, the grid below
    .venv/bin/python bench/train_choice.py --layers 7 15 29 --lrs 1e-3 3e-4 --steps 300
    .venv/bin/python bench/train_choice.py --layers 7 15 29 --lrs 1e-3 --steps 200 \
        --normalize none rms robust_rms standardize           # the normalisations, side by side

Needs a finished `make run` (results/embedded-smollm2: the predictor_train and predictor_val activations
and the materialized model). Each (layer, lr) pair trains once for the largest step count with the
config's schedule; the curve's validation R² (predictor_val, train.eval_windows windows) is read at every
evaluation, so "200 vs 300 steps" is two rows of one run, exactly as the pipeline's learning curve shows
them. A different train.steps changes the cosine schedule, so the run with steps=N reports its own last
row too (the row a default with steps=N would end on).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _common as C  # noqa: I001
import pandas as pd
import yaml
from snakemake.utils import validate

from pndecomp.config import with_predictor
from pndecomp.stages import train as train_stages

RESULTS = C.REPO / "results" / "embedded-smollm2"


def resolved_config(overrides: dict) -> dict:
    config = yaml.safe_load((C.REPO / "config.yaml").read_text())
    validate(config, str(C.REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    config = with_predictor(config, config["predictor"]["kind"])
    config["train"] = {**config["train"], **overrides}
    return config


def val_curve(layer: str, steps: int, lr: float, normalize: str, workdir: Path) -> pd.DataFrame:
    config = resolved_config({"steps": steps, "lr": lr, "normalize": normalize})
    activations = RESULTS / "activations"
    stem = workdir / f"layer-{layer}-{steps}-{lr:g}-{normalize}"
    train_stages.train_predictor(config, str(RESULTS / "model"), layer,
                           str(activations / "predictor_train" / f"layer-{layer}.safetensors"),
                           str(activations / "predictor_val" / f"layer-{layer}.safetensors"),
                           f"{stem}.safetensors", f"{stem}-curve.parquet", f"{stem}.resume.pt", f"{stem}-cost.json")
    return pd.read_parquet(f"{stem}-curve.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", default=["7", "15"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-4])
    parser.add_argument("--steps", nargs="+", type=int, default=[200, 300])
    parser.add_argument("--normalize", nargs="+", default=["none"], help="train.normalize values")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for layer in args.layers:
            for lr in args.lrs:
                for normalize in args.normalize:
                    for steps in args.steps:
                        curve = val_curve(layer, steps, lr, normalize, Path(workdir))
                        for _, row in curve.iterrows():
                            rows.append({"layer": layer, "lr": lr, "normalize": normalize, "schedule_steps": steps,
                                         "step": int(row["step"]), "val_r2": row["val_r2"]})
                        C.say(f"layer {layer}, lr {lr:g}, normalize {normalize}, {steps} steps: val R² "
                              f"{curve['val_r2'].iloc[-1]:.4f} (per evaluation: "
                              f"{', '.join(f'{v:.3f}' for v in curve['val_r2'])})")
    table = pd.DataFrame(rows)
    last = table.groupby(["layer", "lr", "normalize", "schedule_steps"]).tail(1)
    print("\nvalidation R² at the end of each schedule (predictor_val, train.eval_windows windows):")
    print(last.pivot_table(index=["layer", "lr", "normalize"], columns="schedule_steps", values="val_r2")
          .round(4).to_string())


if __name__ == "__main__":
    main()
