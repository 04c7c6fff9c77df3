#!/usr/bin/env bash
# The main job, end to end on the embedded default: synthetic data, CPU, the bundled Triton
# server. Every step is an ordinary command; run them yourself the same way.
#   bash scripts/demo.sh            (WORK=runs/demo by default; see the README for its time on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
WORK=${WORK:-runs/demo}
HTTP_PORT=${HTTP_PORT:-18000}
GRPC_PORT=${GRPC_PORT:-18001}
METRICS_PORT=${METRICS_PORT:-18002}
rm -rf "$WORK"
mkdir -p "$WORK"

step() { printf '\n== %s  [%d s]\n' "$*" "$SECONDS"; }
server_pid=
stop_server() { [ -z "$server_pid" ] || { kill -TERM "$server_pid" 2>/dev/null; wait "$server_pid" || true; }; }
trap stop_server EXIT

SEG_LABELS=${SEG_LABELS:-10}
EPOCHS=${EPOCHS:-6}
STEPS=${STEPS:-25}
SEED=${SEED:-0}

step "1/9 synthetic chest X-rays in the Kermany / JSRT layouts, and two other sources (NIH, Montgomery) for cross-domain tests"
mmtrt synth "$WORK/data" --n-cls 100 --n-seg 24 --seed 0 --difficulty 0.0
mmtrt synth "$WORK/cross_nih" --source nih --n-cls 16 --seed 0 --difficulty 0.0 > /dev/null
mmtrt synth "$WORK/cross_mcu" --source montgomery --n-seg 8 --seed 0 --difficulty 0.0 > /dev/null

step "2/9 training: $SEG_LABELS seg labels (the rest unlabelled, KL_seg), every cls label, $((EPOCHS * STEPS)) steps"
mmtrt train --out "$WORK/train" --cls-data "$WORK/data/cls" --seg-data "$WORK/data/seg" \
    --seg-labels "$SEG_LABELS" --cls-labels -1 --batch-size 8 --seg-batch 2 --lr 3e-4 \
    --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --lr-step 3 --lr-gamma 0.3 --seed "$SEED" --compile off

step "3/9 export: the image gate fitted on the training images, ONNX graphs checked against PyTorch, manifest, TensorRT where available"
mmtrt export "$WORK/train/best.pt" --out "$WORK/export" --precision fp32 --max-batch 8

step "4/9 calibration on the validation split: a temperature and the Youden operating point, into the export's manifest"
mmtrt calibrate "$WORK/export" --data "$WORK/data/cls" --split val --operating-point youden

step "5/9 Triton model repository (CPU flavour: python backend + onnxruntime)"
mmtrt repo "$WORK/export" "$WORK/repo"

step "6/9 serve it with the bundled Triton server (loopback only)"
mmtrt serve "$WORK/repo" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" --metrics-port "$METRICS_PORT" \
    > "$WORK/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do
    grep -q "^ready in" "$WORK/serve.log" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$WORK/serve.log"; exit 1; }
    sleep 1
done
cat "$WORK/serve.log"
# the admin APIs (the model's config, read by infer and evaluate) need the key mmtrt serve made
export "$(grep -o 'MMTRT_ADMIN_KEY_FILE=[^ ]*' "$WORK/serve.log")"

step "7/9 inference through the server (gRPC): JSON + overlay per image; a CT slice, a lateral chest view and a photograph are refused"
# inputs the model was not made for: pydicom's bundled CT slice and a chest X-ray whose header
# says lateral (LL), refused by their headers; a photograph (matplotlib's), refused by the image gate
python - "$WORK/not_for_the_model" "$WORK/data/cls/test/NORMAL/synth_000000.png" <<'PY'
import shutil, sys
from pathlib import Path
import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
shutil.copy(get_testdata_file("CT_small.dcm"), out / "ct_slice.dcm")
import matplotlib
shutil.copy(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg", out / "photograph.jpg")
pixels = np.asarray(Image.open(sys.argv[2]).convert("L"))
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "LL"
ds.Rows, ds.Columns = pixels.shape
ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
ds.PixelData = pixels.tobytes()
ds.save_as(out / "lateral_chest.dcm", enforce_file_format=True)
PY
mmtrt infer --url "127.0.0.1:$GRPC_PORT" --protocol grpc --out "$WORK/predictions" \
    "$WORK"/data/cls/test/NORMAL/synth_00000{0,2,4}.png "$WORK"/data/cls/test/PNEUMONIA/synth_00000{1,3,5}.png \
    "$WORK/not_for_the_model/ct_slice.dcm" "$WORK/not_for_the_model/lateral_chest.dcm" \
    "$WORK/not_for_the_model/photograph.jpg"

step "8/9 evaluate best.pt (with the export's calibration) in process and through the server, in-domain and cross-domain: metrics, calibration, operating point, figures, report"
mmtrt evaluate "$WORK/train/best.pt" --name best.pt --calibration "$WORK/export" --url "127.0.0.1:$GRPC_PORT" --protocol grpc \
    --cls-data "$WORK/data/cls" --seg-data "$WORK/data/seg" \
    --cross-cls "$WORK/cross_nih/cls" --cross-seg "$WORK/cross_mcu/seg" --out "$WORK/evaluate"
stop_server
server_pid=
unset MMTRT_ADMIN_KEY_FILE  # that server's key is gone with it

step "9/9 benchmark: PyTorch reference vs onnxruntime vs OpenVINO vs Triton (tensors and PNG files), same images"
mmtrt bench "$WORK/train/best.pt" "$WORK/export" --out "$WORK/bench" --batch-size 8 --concurrency 4 --seconds 2 \
    --targets reference,ort-fused,ov-fused,triton,triton-bytes --no-perf-analyzer

python - "$WORK/evaluate/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))["results"]["best.pt"]["in-domain"]
acc, dice = m["classification"]["accuracy"], m["segmentation"]["dice"]
c, g = m["classification"], m["segmentation"]
print(f"\nThe trained model on its synthetic test split ({c['n']} cls / {g['n']} seg images answered; "
      f"{c.get('refused', 0)} / {g.get('refused', 0)} refused by the export's image gate, not scored):")
print(f"  classification accuracy {acc['value']:.3f} (95% CI {acc['ci95'][0]:.3f}-{acc['ci95'][1]:.3f})")
print(f"  segmentation Dice       {dice['mean']:.3f} (95% CI {dice['ci95'][0]:.3f}-{dice['ci95'][1]:.3f})")
c = m["classification"]
sens, spec = c["sensitivity"], c["specificity"]
print(f"  at the operating point  sensitivity {sens['value']:.3f} (95% CI {sens['ci95'][0]:.3f}-{sens['ci95'][1]:.3f}), "
      f"specificity {spec['value']:.3f} (95% CI {spec['ci95'][0]:.3f}-{spec['ci95'][1]:.3f})")
if "ece_uncalibrated" in c:
    print(f"  calibration error (ECE) {c['ece_uncalibrated']['value']:.3f} before the temperature, {c['ece']['value']:.3f} after")
PY
printf '\nDone in %d s. Everything is under %s: train/ (checkpoints, metrics.json), export/ (ONNX,\nmanifest, parity), repo/, predictions/ (JSON + overlays), evaluate/ (report.html, metrics.json,\nCSVs, figures), bench/ (bench.md, plots).\n' "$SECONDS" "$WORK"
