#!/usr/bin/env bash
# The checks CI runs, after scripts/setup.sh: lint and format (ruff), then the test suite.
# Arguments go to pytest (e.g. `bash scripts/test.sh tests/serving -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
