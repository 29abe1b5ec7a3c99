#!/usr/bin/env bash
# GPU readiness check: the real workflow on CUDA with a reduced paper config, then the extraction and
# training benches, in one offline run of at most about 8 minutes on one H200.
#
#   bash bench/gpu_wheels.sh        # where pip works, once: .whl/ holds what a CUDA image lacks (Snakemake, ...)
#   bash bench/gpu.sh               # on the GPU machine, from the repo root (carry .whl if there is no .venv)
#   bash bench/gpu.sh --cpu-smoke   # anywhere: the same steps at toy sizes on the CPU (or PNDECOMP_GPU_SMOKE=1)
#
# 1. Python: .venv/bin/python if present, else python3, with the wheels in .whl/ installed into /tmp/site
#    when it lacks Snakemake; src/ goes on PYTHONPATH. Stops with a message if a package is missing, or
#    (without --cpu-smoke) if torch finds no CUDA device.
# 2. A random GPT-NeoX with Pythia-410m's dimensions and a BPE tokenizer trained on the standard library
#    (bench/gpu_check.py model): no hub.
# 3. The reduced paper config (bench/gpu_check.py config): layers 0, 6, 12, 18, 23; T = 256; predictor
#    32 heads x 128; batch 32; stream mode with joint layers (when the schema has train.joint_layers, else
#    one job per layer, with a NOTE); 1,000 steps; the embedded corpus; small eval and probe sizes.
# 4. `snakemake --cores N --keep-going all` into a fresh results/gpu-check, timed, with nvidia-smi sampling GPU
#    memory (--keep-going: a failing job, a figure say, does not stop the rest of the check).
# 5. bench/extract.py and bench/train.py on the Pythia-dims shapes at T = 256, each under
#    bench/gpu_check.py peak (peak GPU memory of the process); bench/baselines.py (the closed-form baselines'
#    fit and score, float64 against compensated float32 statistics) at Pythia-410m's width.
# 6. The report (bench/gpu_check.py report): tokens/s, steps/s, MFU, peak GPU memory.
#
# Everything lands in $OUT (default results/gpu-check-out): gpu_check.txt (the report), gpu_check.log (this
# script's output), config.yaml, snakemake.log, job_logs.tar.gz, bench_extract.log, bench_train.log,
# gpu_memory.csv, bench_baselines.log. Exit status: 0 when the workflow and the three benches ran, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
case "${1:-}" in
  --cpu-smoke) SMOKE=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
[[ "${PNDECOMP_GPU_SMOKE:-0}" == 1 ]] && SMOKE=1
OUT=${OUT:-$PWD/results/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
WORK=$(mktemp -d /tmp/pndecomp-gpu-check.XXXXXX)
SAMPLER=
cleanup() {
  [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false
say() { echo "[gpu.sh $(date +%T)] $*"; }
fail() { say "FAILED: $*"; exit 1; }

# 1. Python
if [[ -x .venv/bin/python ]]; then PY=$PWD/.venv/bin/python; else PY=$(command -v python3) || fail "no python3"; fi
if ! "$PY" -c "import snakemake" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || fail "pip could not install .whl/*.whl"
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
"$PY" - <<'EOF' || fail "missing packages (above)"
import importlib.util
import sys

needed = ("snakemake", "torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "pandas", "pyarrow",
          "sklearn", "seaborn", "threadpoolctl", "zstandard", "datasketch", "yaml", "tqdm", "pndecomp")
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"{sys.executable} lacks {missing}: run `bash bench/gpu_wheels.sh` where pip works and carry .whl, "
             "or `make install`")
EOF
if [[ $SMOKE == 1 ]]; then
  DEVICE=cpu; CORES=${CORES:-2}; SMOKE_FLAG=(--smoke); MODE="CPU smoke (toy sizes)"
  # A correctness run on a CPU: ~30 short jobs, each paying Python start-up; benches on Pythia-dims models.
  WORKFLOW_TIMEOUT=${WORKFLOW_TIMEOUT:-900} BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
else
  "$PY" -c "import sys, torch; sys.exit(None if torch.cuda.is_available() else
    f'torch {torch.__version__} finds no CUDA device: this check needs one (bash bench/gpu.sh --cpu-smoke runs it on the CPU)')" \
    || fail "no CUDA"
  DEVICE=cuda; CORES=${CORES:-$(nproc)}; SMOKE_FLAG=(); MODE="GPU"
fi
say "$MODE; python $PY; $("$PY" -c 'import torch, transformers, snakemake, sklearn; print(f"torch {torch.__version__}, transformers {transformers.__version__}, snakemake {snakemake.__version__}, scikit-learn {sklearn.__version__}")')"
command -v nvidia-smi >/dev/null && nvidia-smi -L

# 2-3. Model and config
"$PY" bench/gpu_check.py model "$WORK/model" "${SMOKE_FLAG[@]}" || fail "building the model"
"$PY" bench/gpu_check.py config "$OUT/config.yaml" --model "$WORK/model" --device "$DEVICE" "${SMOKE_FLAG[@]}" \
  || fail "writing the config"
EXPERIMENT=$("$PY" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['experiment'])" "$OUT/config.yaml")
rm -rf "results/$EXPERIMENT"  # a cold run; the experiment name is this script's own

# 4. The workflow
if [[ $SMOKE == 0 ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 > "$OUT/gpu_memory.csv" &
  SAMPLER=$!
fi
say "snakemake --cores $CORES all (results/$EXPERIMENT) ..."
START=$(date +%s.%N)
timeout "${WORKFLOW_TIMEOUT:-300}" "$PY" -m snakemake --snakefile Snakefile --configfile "$OUT/config.yaml" \
  --cores "$CORES" --keep-going all > "$OUT/snakemake.log" 2>&1
WORKFLOW_RC=$?
WALL=$(awk -v end="$(date +%s.%N)" -v start="$START" 'BEGIN { printf "%.1f", end - start }')
[[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null; SAMPLER=
say "snakemake: rc $WORKFLOW_RC, $WALL s"
[[ -d "results/$EXPERIMENT/logs" ]] && tar -czf "$OUT/job_logs.tar.gz" -C "results/$EXPERIMENT" logs
if [[ $WORKFLOW_RC != 0 ]]; then
  tail -n 40 "$OUT/snakemake.log"
  for log in $(grep -oE "results/$EXPERIMENT/logs/[^ ,]+\.log" "$OUT/snakemake.log" | sort -u); do
    [[ -f "$log" ]] && grep -qE "Error|Traceback" "$log" && { say "tail of $log"; tail -n 25 "$log"; }
  done
fi

# 5. The benches, on the Pythia-dims shapes
if [[ $SMOKE == 1 ]]; then
  # float32: bf16 matmuls are several times slower on CPUs without AVX512-BF16; one window of 16 tokens
  # keeps the Pythia-dims LM passes of train.py's joint-vs-per-layer runs short.
  EXTRACT_ARGS=(--quick --dtype float32); TRAIN_ARGS=(--pythia-batch 1 --pythia-length 16 --rounds 1)
  BASELINE_ARGS=(--d 64 --windows 64 --length 16 --rounds 1)
else
  BASELINE_ARGS=(--d 1024 --windows 1024 --length 256 --rounds 2 --threads 4)
  EXTRACT_ARGS=(--batch-size 64 --batches 4 --length 256 --rounds 3 --threads 4)
  TRAIN_ARGS=(--pythia-length 256 --rounds 3 --threads 4)
fi
say "bench/extract.py ..."
timeout "${BENCH_TIMEOUT:-90}" "$PY" bench/gpu_check.py peak bench/extract.py --models pythia-dims --device "$DEVICE" \
  "${EXTRACT_ARGS[@]}" > "$OUT/bench_extract.log" 2>&1
EXTRACT_RC=$?
say "bench/train.py ..."
timeout "${BENCH_TIMEOUT:-90}" "$PY" bench/gpu_check.py peak bench/train.py --shapes pythia-dims --device "$DEVICE" \
  "${TRAIN_ARGS[@]}" > "$OUT/bench_train.log" 2>&1
TRAIN_RC=$?
say "bench/baselines.py ..."
timeout "${BENCH_TIMEOUT:-90}" "$PY" bench/baselines.py --device "$DEVICE" "${BASELINE_ARGS[@]}" \
  > "$OUT/bench_baselines.log" 2>&1
BASELINES_RC=$?
grep SUMMARY "$OUT/bench_baselines.log"
say "benches: extract rc $EXTRACT_RC, train rc $TRAIN_RC, baselines rc $BASELINES_RC"
for rc_log in "$EXTRACT_RC:$OUT/bench_extract.log" "$TRAIN_RC:$OUT/bench_train.log" \
              "$BASELINES_RC:$OUT/bench_baselines.log"; do
  [[ ${rc_log%%:*} != 0 ]] && tail -n 25 "${rc_log#*:}"
done

# 6. The report
"$PY" bench/gpu_check.py report --config "$OUT/config.yaml" --logs "$OUT" --since "$START" --wall "$WALL" --rc "$WORKFLOW_RC" \
  "${SMOKE_FLAG[@]}" > "$OUT/gpu_check.txt" 2>&1
cat "$OUT/gpu_check.txt"
say "results in $OUT"
[[ $WORKFLOW_RC == 0 && $EXTRACT_RC == 0 && $TRAIN_RC == 0 && $BASELINES_RC == 0 ]] || exit 1
