"""One measurement: the mask decoder in INT8 (NNCF post-training quantisation, OpenVINO CPU) vs
its bf16 copy and float32: time of a batch of 8 and, against float32, the smallest per-image Dice
of the binarised masks and the largest mask difference, on fresh images of the three validation
kinds. INT8 would be kept only if it beat bf16 at Dice >= 0.995.

    pip install nncf   # (not a dependency of mmtrt: only this measurement uses it)
    python -m benchmarks.decoder_int8 EXPORT_DIR [OUT_STEM]    # an export made with --precision bf16

Calibration: 30 images (random, flat-border, synthetic X-ray) through the exported saliency graph,
so the decoder sees the skips and saliency it is served with. Writes OUT_STEM.json / .md
(default benchmarks/results/decoder_int8).
"""

from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import click
import numpy as np

from benchmarks import command_line, script
from mmtrt.bench.report import cpu_model, markdown_table
from mmtrt.parity import dice, image_batch
from mmtrt.runtimes import openvino as ovr

RESULTS = Path(__file__).resolve().parent / "results"


def _mask_output(compiled):
    return next(o for o in compiled.outputs if "mask" in o.get_names() and "mask_logits" not in o.get_names())


@script(__doc__)
@click.argument("export_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_stem", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS / "decoder_int8")
def main(export_dir: Path, out_stem: Path) -> None:
    import nncf
    import openvino as ov

    core = ov.Core()
    saliency = ovr.runner(export_dir / "saliency.onnx")

    def decoder_inputs(kind, n, seed):
        x = image_batch(kind, n, seed).numpy()
        t = saliency({"image": x})
        return {"image": x, "saliency": t["saliency"], **{f"skip{i}": t[f"skip{i}"] for i in range(1, 6)}}

    calib = [decoder_inputs(k, 2, 100 + i) for i, k in enumerate(["random", "flat", "xray"] * 5)]
    quantised = nncf.quantize(
        core.read_model(str(export_dir / "decoder.onnx")), nncf.Dataset(calib), subset_size=len(calib)
    )
    props = ovr.properties(threads=0)
    variants = {
        "fp32": core.compile_model(str(export_dir / "decoder.onnx"), "CPU", props),
        "bf16 copy": core.compile_model(str(export_dir / "decoder.bf16.onnx"), "CPU", props),
        "int8 (NNCF PTQ)": core.compile_model(quantised, "CPU", props),
    }
    test = [decoder_inputs(k, 8, 500 + i) for i, k in enumerate(["random", "flat", "xray"])]
    fp32 = variants["fp32"]
    ref = [fp32.create_infer_request().infer(f)[_mask_output(fp32)] for f in test]
    out = {}
    for name, compiled in variants.items():
        request = compiled.create_infer_request()
        masks = [request.infer(f)[_mask_output(compiled)] for f in test]
        dices = [dice(a[i] > 0.5, b[i] > 0.5) for a, b in zip(masks, ref) for i in range(len(a))]
        largest = max(float(np.abs(a - b).max()) for a, b in zip(masks, ref))
        for _ in range(2):
            request.infer(test[2])
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            request.infer(test[2])
            times.append(time.perf_counter() - t0)
        out[name] = {"ms_batch8": 1e3 * float(np.median(times)), "min_dice": min(dices), "max_abs": largest}
        click.echo(
            f"{name}: {out[name]['ms_batch8']:.0f} ms a batch of 8, min Dice vs fp32 {min(dices):.4f}, "
            f"mask max abs {largest:.2e}"
        )
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "cpu": cpu_model(),
        "flags": " ".join(sorted(f for f in ovr.cpu_flags() if f.startswith(("avx", "amx")))),
        "versions": {
            "openvino": ov.__version__,
            "nncf": nncf.__version__,
            "python": platform.python_version(),
        },
        "results": out,
    }
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    out_stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        {
            "decoder": name,
            "ms a batch of 8": f"{v['ms_batch8']:.0f}",
            "smallest Dice vs fp32": f"{v['min_dice']:.4f}",
            "mask max abs vs fp32": f"{v['max_abs']:.2e}",
        }
        for name, v in out.items()
    ]
    lines = [
        "# Mask decoder in INT8 (NNCF PTQ) vs bf16 vs float32, OpenVINO CPU, batch 8",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- CPU: {report['cpu']}; {report['flags']}",
        f"- versions: {report['versions']}",
        "",
        markdown_table(rows),
        "",
    ]
    out_stem.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
