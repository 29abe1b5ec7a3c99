"""One function per Snakemake rule, grouped by stage: read the rule's inputs, call the package, write its
outputs. The rule files in ``workflow/rules`` name these functions through thin scripts in
``workflow/scripts``; everything here runs (and is tested) without Snakemake.

* :mod:`.common` -- what the stages share (model source and identity, the frozen LM, stored states);
* :mod:`.prepare` -- model, tokenizer, corpus, windows, hidden states;
* :mod:`.train` -- predictors;
* :mod:`.decompose` -- ĥ and r of the eval windows, the probe features;
* :mod:`.metrics` -- baselines, layer scores, per-position metrics, the layer summary;
* :mod:`.probes` -- probes and their tables (torch-free);
* :mod:`.interventions` -- patching and steering.

No stage module imports another; each imports only :mod:`.common` and the package's own modules. The
study rules (comparisons, scorecards) call :mod:`pndecomp.compare` and :mod:`pndecomp.claims` directly.
"""
