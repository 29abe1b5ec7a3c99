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


def table(config_path: str, shape: str | None = None, predictor: str | None = None) -> str:
    """Markdown: every rule's request for the config at ``config_path`` (``shape``: the model's
    n_blocks,d_model,attention_width[,vocab,ffn_width] when it is not in the local hub cache) and its largest
    memory terms; ``predictor``: the requests of that entry of the config's predictors."""
    config, _ = compose([config_path])  # as the workflow reads it with --configfile: extends included
    check(config, load_schema(Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"))
    if shape:
        values = [int(v) for v in shape.split(",")]
        model_shape, extras = model_files.ModelShape(values[0], None, values[1], values[2], "given"), {}
        extras.update(zip(("vocab", "ffn_width"), values[3:], strict=False))
    else:
        model_shape, extras = pnconfig.model_shape(config), model_extras(config)
    if predictor is not None and predictor not in pnentries.predictor_names(config):
        raise ValueError(f"--predictor {predictor!r} is not one of the config's predictors: "
                         f"{', '.join(pnentries.predictor_names(config))}")
    lines = ["| rule | mem_mb | runtime (min) | largest memory terms (MB) |", "|---|---:|---:|---|"]
    for rule, estimate in estimates(config, model_shape, extras, predictor).items():
        request = estimate.request()
        terms = sorted(estimate.memory.items(), key=lambda item: -item[1])[:3]
        lines.append(f"| `{rule}` | {request.mem_mb:,} | {request.runtime:,} | "
                     + ", ".join(f"{name} {value / MB:,.0f}" for name, value in terms) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m pndecomp.resources CONFIG``: every rule's request and its largest memory terms."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("config", help="a config file, e.g. configs/paper.yaml")
    parser.add_argument("--predictor", help="the requests of this entry of the config's predictors (the rules that run "
                                            "one predictor ask for its own); default: the predictor section's")
    parser.add_argument("--shape", help="the model's n_blocks,d_model,attention_width[,vocab,ffn_width] when it is not "
                                        "in the local hub cache, e.g. 24,1024,1024,50304,4096 for Pythia-410m")
    args = parser.parse_args(argv)
    try:
        print(table(args.config, args.shape, args.predictor), end="")
    except model_files.ModelNotDownloaded as error:
        parser.error(f"{error}\nor give the model's shape with --shape")
    except ValueError as error:
        parser.error(str(error))

if __name__ == "__main__":
    main()
