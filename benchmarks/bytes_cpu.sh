#!/usr/bin/env bash
# What decoding image files in the server costs: one `mmtrt bench` run in
# which the same Triton server (cpu flavour, onnxruntime) is sent 256 x 256 tensors by target
# `triton` (model multimix) and 8-bit PNG files of FILE_SIZE x FILE_SIZE by target `triton-bytes`
# (model multimix_image: file_decoder -> multimix), batch 8 per request, over HTTP and gRPC at
# each concurrency. The report's notes give the time per image of triton-bytes over triton and
# the milliseconds per image the decoding adds; goals.md, how that compares with the project's
# goal (benchmarks/goals.py: <= 1.1). About 6 minutes on 2
# cores with the defaults; run it on a quiet machine (the load average is recorded).
#   bash benchmarks/bytes_cpu.sh [OUT_DIR] [FILE_SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/bytes_cpu}
FILE_SIZE=${2:-1024}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt"
.venv/bin/mmtrt init "$WORK/multimix.pt" --seed 0
.venv/bin/mmtrt export "$WORK/multimix.pt" --out "$WORK/export" --precision fp32 --max-batch 8 --no-engines
.venv/bin/mmtrt bench "$WORK/multimix.pt" "$WORK/export" --out "$OUT" \
    --targets triton,triton-bytes --triton-batch-size 8 --concurrency 1,2,4,8 --seconds 10 \
    --file-size "$FILE_SIZE" --no-perf-analyzer
.venv/bin/python -m benchmarks.goals "$OUT/bench.json"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt"
