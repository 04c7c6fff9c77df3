#!/usr/bin/env bash
# The checks CI runs, after scripts/setup.sh: lint and format (ruff), the TensorRT code against
# the real API of TensorRT 10 and 11 (mypy, mmtrt/export/README.md), then the test suite.
# Arguments go to pytest (e.g. `bash scripts/test.sh tests/serving -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python scripts/tensorrt_api.py check
.venv/bin/python -m pytest "$@"
