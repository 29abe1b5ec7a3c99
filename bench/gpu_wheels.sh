#!/usr/bin/env bash
# Wheels for bench/gpu.sh on a CUDA machine that has no package index: the packages of requirements.lock
# that a CUDA Python image with torch, transformers, scikit-learn, pandas, pyarrow, seaborn, tokenizers and
# threadpoolctl lacks (Snakemake and its dependencies, zstandard, datasketch), at the lock's versions, for
# CPython 3.12 on x86-64 Linux, into .whl/ (git-ignored). Run it here, then carry .whl to that machine;
# bench/gpu.sh installs them into /tmp/site when it finds them.
#
#   bash bench/gpu_wheels.sh                        # uses .venv/bin/python's pip
#   PYTHON_VERSION=3.11 bash bench/gpu_wheels.sh    # for another interpreter there
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
NEEDED=(
  snakemake snakemake-interface-common snakemake-interface-executor-plugins snakemake-interface-logger-plugins
  snakemake-interface-report-plugins snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
  annotated-types argparse-dataclass conda-inject configargparse connection-pool docutils dpath fastjsonschema
  gitdb gitpython greenlet humanfriendly immutables jsonschema jsonschema-specifications jupyter-core nbformat
  platformdirs pulp pydantic pydantic-core referencing rpds-py smart-open smmap sqlalchemy sqlmodel tenacity
  throttler traitlets truststore typing-inspection yte
  zstandard datasketch
  # pydantic needs a recent typing-extensions, snakemake's interfaces packaging < 26: these shadow the image's
  typing-extensions packaging
)
# name==version from the lock (its spelling of the name may differ: PuLP, connection_pool, ...).
mapfile -t PINS < <("$PY" - "${NEEDED[@]}" <<'EOF'
import re
import sys

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
lock = {}
for line in open("requirements.lock"):
    line = line.split("#")[0].strip()
    if "==" in line and not line.startswith("-"):
        name, version = line.split("==", 1)
        lock[norm(name)] = version.split()[0].rstrip("\\").strip()
missing = [name for name in sys.argv[1:] if norm(name) not in lock]
if missing:
    sys.exit(f"bench/gpu_wheels.sh: not in requirements.lock: {missing}; update NEEDED")
print("\n".join(f"{name}=={lock[norm(name)]}" for name in sys.argv[1:]))
EOF
)
mkdir -p .whl
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
for pin in "${PINS[@]}"; do
  # A package published as an sdist only (connection_pool) is pure Python: build its wheel here.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$pin" 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w .whl "$pin"
done
echo "bench/gpu_wheels.sh: ${#PINS[@]} wheels in .whl ($(du -sh .whl | cut -f1)); carry .whl with the working tree"
