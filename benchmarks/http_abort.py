"""What one request that aborts Triton 2.51's HTTP front end costs under `mmtrt serve`
(mmtrt.bench.http_abort): seconds until HTTP and gRPC are ready again, until the first gRPC
inference succeeds, and what the gRPC requests in flight got, per crashing request.

    .venv/bin/python benchmarks/http_abort.py --export EXPORT_DIR [--clients 2] [--out FILE.json]

EXPORT_DIR: multimix.onnx, encoder.onnx, manifest.json (`mmtrt export`; the tests' export lies in
.pytest_cache/d/mmtrt-export-*).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from benchmarks import script
from mmtrt.bench.http_abort import measure


@script(__doc__)
@click.option("--export", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--clients", type=click.IntRange(min=1), default=2)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="JSON file.")
def main(export: Path, clients: int, out: Path | None):
    command = " ".join(["benchmarks/http_abort.py", *sys.argv[1:]])
    figures = measure(export, clients=clients, command=command, say=click.echo)
    if out:
        out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
