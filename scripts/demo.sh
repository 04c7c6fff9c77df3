#!/usr/bin/env bash
# The main job, end to end on the embedded default (synthetic data, CPU, the bundled Triton
# server). Every step is an ordinary mmtrt command; run them yourself the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
WORK=${WORK:-runs/demo}
mkdir -p "$WORK"

step() { printf '\n== %s\n' "$*"; }

step "1. synthetic chest X-rays in the Kermany / JSRT layouts"
mmtrt synth "$WORK/data" --n-cls 60 --n-seg 20 --seed 0

step "2. a MultiMix checkpoint"
mmtrt init "$WORK/model.pt" --seed 0
