"""What every ``workflow/scripts/*.py`` adapter does before calling its stage function."""
from __future__ import annotations

import logging
import os
import sys

from threadpoolctl import threadpool_limits

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def setup(snakemake) -> dict:
    """Send stderr and logging to the rule's log, give torch the rule's threads, return its config view.

    A torch job has imported torch with its stage module, before this call. A job that has not (probe
    fits, tables, figures) does not import it here (seconds per job): the rule's threads go to the
    environment instead, for the thread pools of libraries loaded later.
    """
    sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115 - lives as long as the process
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.captureWarnings(True)
    threads = max(1, snakemake.threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    else:
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(threads)))
    threadpool_limits(threads)  # BLAS/OpenMP pools already loaded (numpy, scikit-learn)
    return dict(snakemake.params.get("config", {}))


def materialized(snakemake, name: str = "model") -> str | None:
    """The materialized model (or, with name="tokenizer", tokenizer) directory among the rule's
    inputs, if the model needed one.

    ``model=model_input()`` is a list (empty when the model needs no materializing), so Snakemake
    hands the script a one-item list, not a string.
    """
    value = snakemake.input.get(name)
    if isinstance(value, str):
        return value or None
    if value is None or len(value) == 0:
        return None
    if len(value) != 1:
        raise ValueError(f"input {name!r} must name one materialized directory, got {list(value)!r}")
    return str(value[0])


def layer_paths(files, layers, prefix: str = "") -> dict[str, str] | None:
    """The named inputs/outputs that are layers (``{"7": path, ...}``, named ``prefix`` + layer), in config
    order; None when the rule has none of them."""
    paths = {str(layer): files.get(f"{prefix}{layer}") for layer in layers}
    return paths if any(paths.values()) else None
