"""What each rule asks SLURM for, ``mem_mb`` and ``runtime`` (minutes), computed from the config's sizes.

The rules in ``workflow/rules`` read these once, when Snakemake builds the DAG (``stage_mem_mb`` and
``stage_runtime`` in ``common.smk``), so a config at the paper's scale asks for what its jobs need and
the tiny test config for little. One function per rule in :data:`STAGES` turns :class:`Sizes` into an
:class:`Estimate`: the peak resident memory of the rule's script, as named terms in bytes, and its
work, as named terms in seconds. Then

    mem_mb  = MARGIN × (SNAKEMAKE_MB + the script's peak)          (MiB, rounded up to 100)
    runtime = STARTUP_MINUTES + GENEROSITY × the work in minutes  (at least MIN_RUNTIME)

The memory terms follow the code, one batch at a time where the code streams (extraction, probe
features, decomposition, per-position metrics, the scores) and whole where it keeps O(windows)
arrays. Working sets are sized for the CPU, in float32 or float64 as the code computes, whatever
``device`` says: on a GPU the host holds less, so the request is an upper bound there. The LM's
weights, which transformers memory-maps, are counted; the hidden states are read through a fresh
mapping per batch (``storage.hidden_batches``), and the stream-mode token store's pages are clean page
cache, which the kernel reclaims under a cgroup limit: neither is counted.

Runtimes are deliberately generous (assumed throughputs well below a current CPU core or GPU, then
doubled): a job killed for time is worse than one that waits a little longer in the queue.

The model's shape is always known at DAG time: a hub model must be in the local hub cache by then
(:func:`pndecomp.config.model_shape`).
"""
from .config_sizes import corpus_bytes, estimates, model_extras, predictor_sizes, probe_windows, requests, sizes
from .constants import ASSUMED_VOCAB, MARGIN, MB, SNAKEMAKE_MB
from .estimate import Estimate, Request, Sizes
from .rules import PREDICTOR_RULES, STAGES

__all__ = ["ASSUMED_VOCAB", "MARGIN", "MB", "PREDICTOR_RULES", "SNAKEMAKE_MB", "STAGES", "Estimate",
           "Request", "Sizes", "corpus_bytes", "estimates", "model_extras", "predictor_sizes", "probe_windows",
           "requests", "sizes"]
