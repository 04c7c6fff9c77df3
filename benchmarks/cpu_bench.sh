#!/usr/bin/env bash
# The committed CPU `mmtrt bench` report (benchmarks/results/bench_cpu/): a random-weight
# checkpoint (speed does not depend on the weights), its fp32 export, and every CPU target on the
# same images in one run, as ratios to the reference path, then the project's speed goals judged
# on it (OUT_DIR/goals.md, benchmarks/goals.py). About 12 minutes on 2 cores; run it on a quiet
# machine (the load average is recorded before and after).
#   bash benchmarks/cpu_bench.sh [OUT_DIR]
source "$(dirname "$0")/cpu_run.sh"
OUT=${1:-benchmarks/results/bench_cpu}
start_run "$OUT"
random_checkpoint "$WORK/multimix.pt"
export_for_bench "$WORK/multimix.pt" "$WORK/export" fp32
.venv/bin/mmtrt bench "$WORK/multimix.pt" "$WORK/export" --out "$OUT" \
    --targets reference,eager,compiled,ort-fused,ort-split,ort-encoder,ort-saliency,triton \
    --batch-size 1,4,8 --concurrency 1,2,4,8 --triton-batch-size 8 --seconds 8
finish_run "$OUT"
