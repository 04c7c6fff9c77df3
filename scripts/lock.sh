#!/usr/bin/env bash
# Regenerates requirements.lock: every dependency of mmtrt and of its tests (pyproject.toml,
# extra "test"), pinned with the sha256 of each of its files, resolved against the CPU build of
# torch (torch itself is installed by scripts/setup.sh, so it is left out). Run it after changing
# pyproject.toml's dependencies, then commit the lock with that change.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install -q "pip-tools==7.7.0"
echo "torch==2.13.0+cpu" > "$tools/torch-cpu.txt"
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tools/venv/bin/pip-compile" -q --generate-hashes --extra test --strip-extras \
    --unsafe-package torch --constraint "$tools/torch-cpu.txt" \
    --no-emit-index-url --no-emit-find-links \
    --output-file requirements.lock pyproject.toml
