#!/usr/bin/env bash
# onnxruntime vs OpenVINO on the CPU, side by side in one `mmtrt bench` run: the reference path,
# both runtimes' fused / split / encoder / saliency graphs at batch 8, and Triton serving the cpu
# repository with each runtime (triton = onnxruntime, triton-ov = OpenVINO, batch 8 per request).
# OpenVINO compiles with precision hint f32 (it would pick bf16 by itself on bf16 hardware). On a
# CPU with bf16 hardware the export is made with --precision bf16 and the bf16 copies are measured
# too (ov-*-bf16, triton-ov-bf16: the saliency's forward in f32, its backward half and the decoder
# in bf16). Writes OUT_DIR/bench.{json,md} + plots, OUT_DIR/goals.md (the project's speed goals,
# benchmarks/goals.py), OUT_DIR/cpu.txt (lscpu: model, flags,
# whether the host has bf16 hardware) and OUT_DIR/load.txt (load average before and after): run
# it on a quiet machine; figures from a loaded one mean nothing.
#   bash benchmarks/openvino_cpu.sh [OUT_DIR] [SECONDS]     (default benchmarks/results/openvino_cpu, 8)
# CHECKPOINT=... EXPORT_DIR=... reuse a checkpoint and its export (an export validated in OpenVINO:
# `mmtrt export` with OpenVINO installed) instead of making a random-weight one (speed does not
# depend on the weights).
source "$(dirname "$0")/cpu_run.sh"
OUT=${1:-benchmarks/results/openvino_cpu}
SECONDS_PER=${2:-8}
start_run "$OUT"
{
    lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Flags):'
    .venv/bin/python -c 'from mmtrt.runtimes import openvino as o; print("bf16 hardware:", o.host_has("bf16"), "| OpenVINO", o.version(), "OPTIMIZATION_CAPABILITIES:", " ".join(o.openvino_capabilities()))'
} > "$OUT/cpu.txt"
CKPT=${CHECKPOINT:-}
EXPORT=${EXPORT_DIR:-}
if [ -z "$CKPT" ]; then
    CKPT="$WORK/multimix.pt"
    random_checkpoint "$CKPT"
fi
TARGETS=reference,ort-fused,ort-split,ort-encoder,ort-saliency,ov-fused,ov-split,ov-encoder,ov-saliency,triton,triton-ov
PRECISION=fp32
if .venv/bin/python -c 'import sys; from mmtrt.runtimes import openvino as o; sys.exit(0 if o.host_has("bf16") else 1)'; then
    PRECISION=bf16
    TARGETS="$TARGETS,ov-fused-bf16,ov-split-bf16,ov-encoder-bf16,ov-saliency-bf16,triton-ov-bf16"
fi
if [ -z "$EXPORT" ]; then
    EXPORT="$WORK/export"
    export_for_bench "$CKPT" "$EXPORT" "$PRECISION"
fi
.venv/bin/mmtrt bench "$CKPT" "$EXPORT" --out "$OUT" --targets "$TARGETS" \
    --batch-size 8 --concurrency 1,4,8 --triton-batch-size 8 --seconds "$SECONDS_PER" --no-perf-analyzer
finish_run "$OUT"
