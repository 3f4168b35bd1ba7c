#!/usr/bin/env bash
# The prepared GPU check (one NVIDIA GPU, no network): CUDA paths against their CPU twins, then
# pipeline / train / eval / epoch timings. Finishes in under 8 minutes on one H100 and writes
# $OUT/gpu_check.json (or bench_out/gpu_check.json), a log, and nvidia-smi's view of the card.
#
# It needs only what the lent GPU machines have: torch, numpy, numba, scikit-learn, tqdm,
# matplotlib. torch-optimizer, wandb, DALI and FFCV are not needed (and DALI's GPU path cannot be
# checked there: its wheel is too large to carry).
#
#   bash benchmarks/gpu_check.sh               # full check on cuda
#   bash benchmarks/gpu_check.sh --only eval   # one step
#   bash benchmarks/gpu_check.sh --device cpu --quick   # CPU dry run at toy sizes
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${OUT:-bench_out}
mkdir -p "$out_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
py=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; } | tee "$out_dir/nvidia_smi.txt"
timeout 45 "$py" -m fsmtl.doctor --json "$out_dir/doctor.json" || true   # devices and which optional parts import
# 420 s for the Python part (at its SIGTERM it saves what the step in progress wrote and stops;
# killed 15 s later if stuck in native code): with doctor's 45 s the script stays under 8 minutes.
timeout -k 15 420 "$py" -m fsmtl.benchmarks.gpu_check --json "$out_dir/gpu_check.json" "$@" 2>&1 | tee "$out_dir/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "$SECONDS" > "$out_dir/gpu_check_total_s.txt"   # the whole script, nvidia-smi and doctor included
echo "gpu_check exit code $rc after $SECONDS s; JSON at $out_dir/gpu_check.json"
exit "$rc"
