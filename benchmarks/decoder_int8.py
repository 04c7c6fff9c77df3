"""One measurement: the mask decoder in INT8 (NNCF post-training quantisation, OpenVINO CPU) vs
its bf16 copy and float32: time of a batch of 8 and, against float32, the smallest per-image Dice
of the binarised masks and the largest mask difference, on fresh images of the three validation
kinds. INT8 would be kept only if it beat bf16 at Dice >= 0.995.

    pip install nncf   # (not a dependency of mmtrt: only this measurement uses it)
    python benchmarks/decoder_int8.py EXPORT_DIR [OUT_STEM]    # an export made with --precision bf16

Calibration: 30 images (random, flat-border, synthetic X-ray) through the exported saliency graph,
so the decoder sees the skips and saliency it is served with. Writes OUT_STEM.json / .md
(default benchmarks/results/decoder_int8).
"""

import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nncf  # noqa: E402
import openvino as ov  # noqa: E402

from mmtrt.parity import dice, image_batch  # noqa: E402
from mmtrt.runtimes import openvino as ovr  # noqa: E402

d = sys.argv[1]
stem = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "benchmarks" / "results" / "decoder_int8"
core = ov.Core()
enc = ovr.runner(f"{d}/saliency.onnx")


def decoder_inputs(kind, n, seed):
    x = image_batch(kind, n, seed).numpy()
    t = enc({"image": x})
    return {"image": x, "saliency": t["saliency"], **{f"skip{i}": t[f"skip{i}"] for i in range(1, 6)}}


calib = [decoder_inputs(k, 2, 100 + i) for i, k in enumerate(["random", "flat", "xray"] * 5)]
model = core.read_model(f"{d}/decoder.onnx")
q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
props = ovr.properties(threads=0)
variants = {
    "fp32": core.compile_model(f"{d}/decoder.onnx", "CPU", props),
    "bf16 copy": core.compile_model(f"{d}/decoder.bf16.onnx", "CPU", props),
    "int8 (NNCF PTQ)": core.compile_model(q, "CPU", props),
}
test = [decoder_inputs(k, 8, 500 + i) for i, k in enumerate(["random", "flat", "xray"])]


def mask(cm):
    return [o for o in cm.outputs if "mask" in o.get_names() and "mask_logits" not in o.get_names()][0]


ref = [variants["fp32"].create_infer_request().infer(f)[mask(variants["fp32"])] for f in test]
out = {}
for name, cm in variants.items():
    r = cm.create_infer_request()
    masks = [r.infer(f)[mask(cm)] for f in test]
    dices = [dice(a[i] > 0.5, b[i] > 0.5) for a, b in zip(masks, ref) for i in range(len(a))]
    mx = max(float(np.abs(a - b).max()) for a, b in zip(masks, ref))
    f = test[2]
    for _ in range(2):
        r.infer(f)
    ts = []
    for _ in range(7):
        t0 = time.perf_counter()
        r.infer(f)
        ts.append(time.perf_counter() - t0)
    out[name] = {"ms_batch8": 1e3 * float(np.median(ts)), "min_dice": min(dices), "max_abs": mx}
    print(
        f"{name}: {out[name]['ms_batch8']:.0f} ms a batch of 8, min Dice vs fp32 {min(dices):.4f}, mask max abs {mx:.2e}",
        flush=True,
    )
flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
report = {
    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "command": "python benchmarks/decoder_int8.py " + " ".join(sys.argv[1:]),
    "cpu": subprocess.run(["lscpu"], capture_output=True, text=True)
    .stdout.split("Model name:")[1]
    .splitlines()[0]
    .strip(),
    "flags": " ".join(f for f in flags.split(":", 1)[1].split() if f.startswith(("avx", "amx"))),
    "versions": {"openvino": ov.__version__, "nncf": nncf.__version__, "python": platform.python_version()},
    "results": out,
}
stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
lines = [
    "# Mask decoder in INT8 (NNCF PTQ) vs bf16 vs float32, OpenVINO CPU, batch 8",
    "",
    f"- date: {report['date']}",
    f"- command: `{report['command']}`",
    f"- CPU: {report['cpu']}; {report['flags']}",
    f"- versions: {report['versions']}",
    "",
    "| decoder | ms a batch of 8 | smallest Dice vs fp32 | mask max abs vs fp32 |",
    "|---|---|---|---|",
    *[f"| {k} | {v['ms_batch8']:.0f} | {v['min_dice']:.4f} | {v['max_abs']:.2e} |" for k, v in out.items()],
    "",
]
stem.with_suffix(".md").write_text("\n".join(lines))
