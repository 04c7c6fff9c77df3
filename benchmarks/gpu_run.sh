#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one command, for a CUDA host whose python3
# already has a CUDA torch (the repository needs no install: it runs from the checkout).
#   bash benchmarks/gpu_run.sh OUT_DIR
# Writes OUT_DIR/gpu_torch.{json,md,png} (saliency parity on the GPU, accuracy of each precision,
# throughput vs the reference path) and OUT_DIR/gpu_train.{json,md} (training steps/s).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_run.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT_DIR/gpu.txt"

status=0
timeout 260 python3 benchmarks/torch_pipeline_bench.py --device cuda --batches 8,32 --seconds 1.0 \
    --out "$OUT_DIR/gpu_torch" 2>&1 | tee "$OUT_DIR/gpu_torch.log" || status=1
timeout 250 python3 benchmarks/train_bench.py --device cuda --out "$OUT_DIR/gpu_train" 2>&1 \
    | tee "$OUT_DIR/gpu_train.log" | grep -v " step " || status=1
exit $status
