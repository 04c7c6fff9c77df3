#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one command, for a CUDA host whose python3
# already has a CUDA torch (the repository needs no install: it runs from the checkout).
#   bash benchmarks/gpu_run.sh OUT_DIR
# Writes OUT_DIR/gpu_bench/bench.{json,md,png} (`mmtrt bench --device cuda`: PyTorch eager fp32 /
# fp16 / bf16, onnxruntime and, where TensorRT is installed, its engines, as ratios to the reference
# path), OUT_DIR/gpu_torch.{json,md,png} (saliency parity on the GPU, accuracy of each precision,
# throughput of eager vs compiled vs CUDA graphs vs fp16/bf16) and OUT_DIR/gpu_train.{json,md}
# (training steps/s). Each step writes its figures as it goes, so a step cut short keeps them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_run.sh OUT_DIR}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT_DIR/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT_DIR/gpu.txt"

# The whole run ends within 9 minutes (one device command may take 10): a step gets its own
# limit or what is left, whichever is less.
END=$((SECONDS + 540))
limit() { local left=$((END - SECONDS)); echo $((left < $1 ? (left > 1 ? left : 1) : $1)); }
MMTRT=(python3 -c 'from mmtrt.cli import main; main(prog_name="mmtrt")')  # the CLI, from the checkout

status=0
# mmtrt bench first (its figures are the ones no other step gives): a random checkpoint, its export
# with a batch profile up to 32 (onnxruntime validation on the CPU), the TensorRT engines when
# tensorrt imports, then the bench. The work folder (ONNX graphs, engines) is not kept.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
targets=reference,eager,eager-fp16,eager-bf16,ort-fused,ort-split
if python3 -c 'import click, tqdm, onnx, onnxscript, onnxruntime' 2>&1 | tee "$OUT_DIR/gpu_bench.log" \
    && "${MMTRT[@]}" init "$WORK/multimix.pt" 2>&1 | tee -a "$OUT_DIR/gpu_bench.log" \
    && timeout "$(limit 150)" "${MMTRT[@]}" export "$WORK/multimix.pt" --out "$WORK/export" --max-batch 32 \
        --no-engines 2>&1 | tee -a "$OUT_DIR/gpu_bench.log"; then
    if python3 -c 'import tensorrt' 2>/dev/null; then
        timeout "$(limit 150)" "${MMTRT[@]}" build-engines "$WORK/export" 2>&1 | tee -a "$OUT_DIR/gpu_bench.log" \
            && targets+=,tensorrt || status=1
    else
        echo "tensorrt does not import: mmtrt bench runs without the tensorrt target" | tee -a "$OUT_DIR/gpu_bench.log"
    fi
    timeout "$(limit 120)" "${MMTRT[@]}" bench "$WORK/multimix.pt" "$WORK/export" --device cuda --targets "$targets" \
        --batch-size 1,8,32 --seconds 0.5 --out "$OUT_DIR/gpu_bench" 2>&1 | tee -a "$OUT_DIR/gpu_bench.log" || status=1
    cp "$WORK/export/manifest.json" "$OUT_DIR/gpu_bench/export_manifest.json" 2>/dev/null
else
    echo "mmtrt bench not run: see $OUT_DIR/gpu_bench.log" && status=1
fi
timeout "$(limit 260)" python3 -m benchmarks.torch_pipeline_bench --device cuda --batch-size 8,32 --seconds 1.0 \
    --out "$OUT_DIR/gpu_torch" 2>&1 | tee "$OUT_DIR/gpu_torch.log" || status=1
timeout "$(limit 250)" python3 -m benchmarks.train_bench --device cuda --out "$OUT_DIR/gpu_train" 2>&1 \
    | tee "$OUT_DIR/gpu_train.log" | grep -v " step " || status=1
exit $status
