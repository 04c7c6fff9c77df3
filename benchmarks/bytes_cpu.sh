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
source "$(dirname "$0")/cpu_run.sh"
OUT=${1:-benchmarks/results/bytes_cpu}
FILE_SIZE=${2:-1024}
start_run "$OUT"
random_checkpoint "$WORK/multimix.pt"
export_for_bench "$WORK/multimix.pt" "$WORK/export" fp32
.venv/bin/mmtrt bench "$WORK/multimix.pt" "$WORK/export" --out "$OUT" \
    --targets triton,triton-bytes --triton-batch-size 8 --concurrency 1,2,4,8 --seconds 10 \
    --file-size "$FILE_SIZE" --no-perf-analyzer
finish_run "$OUT"
