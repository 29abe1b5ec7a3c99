"""``python -m pndecomp.resources CONFIG``: every rule's request and its largest memory terms."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import config as pnconfig
from .. import model_files
from .. import predictor_entries as pnentries
from ..config_files import compose
from ..config_schema import check
from ..overrides import load_schema
from .config_sizes import estimates, model_extras
from .constants import MB


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.resources CONFIG``: every rule's request and its largest memory terms."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/paper.yaml")
    parser.add_argument("--predictor", help="the requests of this entry of the config's predictors (the rules that run "
                                            "one predictor ask for its own); default: the predictor section's")
    parser.add_argument("--shape", help="the model's n_blocks,d_model,attention_width[,vocab,ffn_width] when it is not "
                                        "in the local hub cache, e.g. 24,1024,1024,50304,4096 for Pythia-410m")
    args = parser.parse_args(argv)
    config, _ = compose([args.config])  # as the workflow reads it with --configfile: extends included
    check(config, load_schema(Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"))
    if args.shape:
        values = [int(v) for v in args.shape.split(",")]
        shape, extras = model_files.ModelShape(values[0], None, values[1], values[2], "given"), {}
        extras.update(zip(("vocab", "ffn_width"), values[3:], strict=False))
    else:
        try:
            shape = pnconfig.model_shape(config)
        except model_files.ModelNotDownloaded as error:
            parser.error(f"{error}\nor give the model's shape with --shape")
        extras = model_extras(config)
    print("| rule | mem_mb | runtime (min) | largest memory terms (MB) |\n|---|---:|---:|---|")
    if args.predictor is not None and args.predictor not in pnentries.predictor_names(config):
        parser.error(f"--predictor {args.predictor!r} is not one of the config's predictors: "
                     f"{', '.join(pnentries.predictor_names(config))}")
    for rule, estimate in estimates(config, shape, extras, args.predictor).items():
        request = estimate.request()
        terms = sorted(estimate.memory.items(), key=lambda item: -item[1])[:3]
        print(f"| `{rule}` | {request.mem_mb:,} | {request.runtime:,} | "
              + ", ".join(f"{name} {value / MB:,.0f}" for name, value in terms) + " |")


if __name__ == "__main__":
    main()
