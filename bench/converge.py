"""Time to a converged predictor: per layer, the wall time until the validation R² reaches 95 % of its
plateau, and the training step's achieved GFLOP/s against this machine's own fp32 matmul limit.

    .venv/bin/python bench/converge.py            # the default's layers: config.yaml against the former recipe
    .venv/bin/python bench/converge.py --layers 15 --recipes default

Needs a finished `make run` (results/embedded-smollm2: its predictor_train and predictor_val activations
and its resolved config.yaml). Each recipe trains every layer's predictor with the pipeline's own loop
(``pndecomp.train.PredictorTrainer`` and ``train_predictors`` on the cached states, the batches the
``train_predictor`` job draws), on ``--threads`` torch threads (1: the train job's ``threads``):

* ``default``: the run's own training settings (config.yaml: the plateau schedule, stopped by the rule);
* ``former``: the default before it converged -- a 200-step cosine schedule, no stopping rule, every row
  in the loss (``train.schedule: cosine``, ``train.steps: 200``, ``train.stop_patience: null``,
  ``train.outlier_rows: keep``).

Per (recipe, layer): where training stopped and why (the plateau rule, or the cap), the kept step and its
validation R² (the plateau: predictor_val, train.eval_windows windows), the wall seconds from the first
step to the first evaluation at or above 95 % of that R² and to the stop (evaluations included), and
the optimizer steps' GFLOP/s: FLOPs of one step (forward and backward, counted by
``torch.utils.flop_counter.FlopCounterMode``) × steps / the optimizer steps' seconds; ``outside_steps`` is
the share of the wall time spent outside the optimizer steps (the learning curve's evaluations, batch
gathering). The limit is an
fp32 matmul of the step's largest shape (the QKV projection: [batch × (T − 1), d_model] ×
[d_model, 3 × heads × d_head]) on the same threads, measured in the same run.
"""
from __future__ import annotations

import argparse
import time

import _common as C  # noqa: I001
import pandas as pd
import torch
import yaml
from snakemake.utils import validate
from torch.utils.flop_counter import FlopCounterMode

from pndecomp import config as pnconfig
from pndecomp import model_files
from pndecomp.predictor import prediction_loss
from pndecomp.stages.common import model_source, read_hidden
from pndecomp.train import PredictorTrainer, batch_indices, train_predictors

RESULTS = C.REPO / "results" / "embedded-smollm2"
FORMER = {"schedule": "cosine", "steps": 200, "stop_patience": None, "outlier_rows": "keep"}


def recipe_config(name: str, cap: int | None = None) -> dict:
    config = yaml.safe_load((RESULTS / "config.yaml").read_text())
    if name == "former":
        config["train"] = {**config["train"], **FORMER}
    if cap is not None:
        config["train"] = {**config["train"], "steps": cap,
                           "warmup_steps": min(config["train"]["warmup_steps"], cap)}
    validate(config, str(C.REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    return config


def step_flops(trainer: PredictorTrainer, batch: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward on ``batch`` (the weights are left as they were)."""
    with FlopCounterMode(display=False) as counter:
        prediction_loss(trainer.predictor, batch).backward()
    trainer.predictor.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def converge(config: dict, layer: str) -> dict:
    train_cfg = pnconfig.train_config(config)
    shape = model_files.read_model_shape(model_source(config, str(RESULTS / "model")))
    predictor_cfg = pnconfig.predictor_config(config, shape)
    activations = RESULTS / "activations"
    hidden = read_hidden(str(activations / "predictor_train" / f"layer-{layer}.safetensors"))
    val = read_hidden(str(activations / "predictor_val" / f"layer-{layer}.safetensors"),
                      limit=config["train"]["eval_windows"])
    trainer = PredictorTrainer(predictor_cfg, train_cfg, val, name=f"layer {layer}")
    n_windows, finished = len(hidden), {}
    start = time.perf_counter()

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        finished[step] = time.perf_counter() - start  # step `step` begins: every earlier step (and eval) is done
        return {layer: hidden[batch_indices(n_windows, train_cfg.batch_size, train_cfg.seed, step)]}

    _, curve = train_predictors({layer: trainer}, train_cfg, next_batch, n_windows)[layer]
    total = time.perf_counter() - start
    stop = trainer.stop_summary()
    plateau = float(curve.loc[curve["kept"], "val_r2"].iloc[0])
    reached = curve[curve["val_r2"] >= 0.95 * plateau]["step"].min()
    flops = step_flops(trainer, hidden[batch_indices(n_windows, train_cfg.batch_size, train_cfg.seed, 0)].float())
    steps = stop["last_step"]
    qkv = (train_cfg.batch_size * (hidden.shape[1] - 1), predictor_cfg.d_model,
           3 * predictor_cfg.n_heads * predictor_cfg.d_head)
    achieved, limit = flops * steps / trainer.train_seconds / 1e9, C.matmul_gflops(torch.get_num_threads(), 20, qkv)
    return {"layer": layer, "stopped_by": "cap" if stop["hit_cap"] else "plateau", "last_step": steps,
            "kept_step": stop["kept_step"], "plateau_val_r2": plateau,
            "s_to_95pct": finished.get(int(reached), total), "s_to_stop": total,
            "outside_steps": 1 - trainer.train_seconds / total,  # evaluations, batch gathering, the loop
            "step_gflop": flops / 1e9, "gflops": achieved, "matmul_limit_gflops": limit,
            "share_of_limit": achieved / limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", nargs="+", help="block layers (default: the run's)")
    parser.add_argument("--recipes", nargs="+", choices=["default", "former"], default=["default", "former"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the train job's: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: the first layer, every recipe capped at 50 steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    C.say(C.machine())
    rows = []
    for recipe in args.recipes:
        config = recipe_config(recipe, 50 if args.quick else None)
        layers = args.layers or [str(layer) for layer in config["layers"]]
        for layer in layers[:1] if args.quick else layers:
            row = {"recipe": recipe, **converge(config, layer)}
            rows.append(row)
            C.say(f"{recipe}, layer {layer}: stopped by the {row['stopped_by']} at {row['last_step']}, kept "
                  f"{row['kept_step']} (val R² {row['plateau_val_r2']:.4f}); 95 % of it after {row['s_to_95pct']:.0f} s"
                  f", stop after {row['s_to_stop']:.0f} s; {row['gflops']:.1f} GFLOP/s of "
                  f"{row['matmul_limit_gflops']:.1f} ({100 * row['share_of_limit']:.0f} %)")
    table = pd.DataFrame(rows)
    print(f"\nper recipe and layer ({args.threads} thread(s)):")
    print(table.round(3).to_string(index=False))
    summary = []
    def span(values, scale=1.0) -> str:
        return f"{scale * values.min():.0f}..{scale * values.max():.0f}"

    for recipe, group in table.groupby("recipe", sort=False):
        summary.append(f"{recipe}: stopped by the plateau at {(group['stopped_by'] == 'plateau').sum()} of "
                       f"{len(group)} layers, 95 % of the plateau after {span(group['s_to_95pct'])} s, stop after "
                       f"{span(group['s_to_stop'])} s, step at {span(group['share_of_limit'], 100)} % of the fp32 "
                       "matmul limit")
    C.say(f"SUMMARY converge: {'; '.join(summary)}{' (quick)' if args.quick else ''}")


if __name__ == "__main__":
    main()
