#!/usr/bin/env bash
# The main job, end to end on the embedded default: synthetic data, CPU, the bundled Triton
# server. Every step is an ordinary command; run them yourself the same way.
#   bash scripts/demo.sh            (WORK=runs/demo by default; about 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
WORK=${WORK:-runs/demo}
HTTP_PORT=${HTTP_PORT:-18000}
GRPC_PORT=${GRPC_PORT:-18001}
METRICS_PORT=${METRICS_PORT:-18002}
rm -rf "$WORK"
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }
server_pid=
stop_server() { [ -z "$server_pid" ] || { kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" || true; }; }
trap stop_server EXIT

step "1/7 synthetic chest X-rays in the Kermany / JSRT layouts"
mmtrt synth "$WORK/data" --n-cls 60 --n-seg 24 --seed 0 --difficulty 0.3

step "2/7 semi-supervised training (short run: 10 seg / 40 cls labels, the rest unlabelled)"
mmtrt train --out "$WORK/train" --cls-data "$WORK/data/cls" --seg-data "$WORK/data/seg" \
    --seg-labels 10 --cls-labels 40 --batch 2 --epochs 2 --steps-per-epoch 8 --compile off

step "3/7 export: ONNX graphs checked against PyTorch, manifest, TensorRT where available"
mmtrt export "$WORK/train/best.pt" --out "$WORK/export" --precision fp32 --max-batch 8

step "4/7 Triton model repository (CPU flavour: python backend + onnxruntime)"
mmtrt repo "$WORK/export" "$WORK/repo"

step "5/7 serve it with the bundled Triton server (loopback only)"
mmtrt serve "$WORK/repo" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
    > "$WORK/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do
    grep -q "^ready in" "$WORK/serve.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 1
done
cat "$WORK/serve.log"

step "6/7 inference through the server (gRPC): JSON + overlay per image"
mmtrt infer --url "127.0.0.1:$GRPC_PORT" --protocol grpc --out "$WORK/predictions" \
    "$WORK"/data/cls/test/NORMAL/synth_00000{0,2,4}.png "$WORK"/data/cls/test/PNEUMONIA/synth_00000{1,3,5}.png
stop_server
server_pid=

step "7/7 benchmark: PyTorch reference vs shared pass vs onnxruntime vs Triton, same images"
mmtrt bench "$WORK/train/best.pt" "$WORK/export" --out "$WORK/bench" --batches 8 --concurrency 1,8 --seconds 3

printf '\nDone. Everything is under %s: train/ (checkpoints, metrics.json), export/ (ONNX, manifest,\nparity), repo/, predictions/ (JSON + overlays), bench/ (bench.md, plots).\n' "$WORK"
