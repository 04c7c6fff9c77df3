#!/usr/bin/env bash
# The committed CPU `mmtrt bench` report (benchmarks/results/bench_cpu/): a random-weight
# checkpoint (speed does not depend on the weights), its fp32 export, and every CPU target on the
# same images in one run, as ratios to the reference path, then the project's speed goals judged
# on it (OUT_DIR/goals.md, benchmarks/goals.py). About 12 minutes on 2 cores; run it on a quiet
# machine (the load average is recorded before and after).
#   bash benchmarks/cpu_bench.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/bench_cpu}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt"
.venv/bin/mmtrt init "$WORK/multimix.pt" --seed 0
.venv/bin/mmtrt export "$WORK/multimix.pt" --out "$WORK/export" --precision fp32 --max-batch 8 --no-engines
.venv/bin/mmtrt bench "$WORK/multimix.pt" "$WORK/export" --out "$OUT" \
    --targets reference,eager,compiled,ort-fused,ort-split,ort-encoder,ort-saliency,triton \
    --batch-size 1,4,8 --concurrency 1,2,4,8 --triton-batch-size 8 --seconds 8
.venv/bin/python -m benchmarks.goals "$OUT/bench.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"
