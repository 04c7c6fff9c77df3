# Sourced by the scripts that measure with `mmtrt bench` on the CPU (cpu_bench.sh, bytes_cpu.sh,
# openvino_cpu.sh): the repository root as working folder, a temporary $WORK removed at exit, the
# load average before and after the run (OUT/load.txt: figures from a loaded machine mean
# nothing), a random-weight checkpoint and its export (speed does not depend on the weights), and
# the project's speed goals judged on the report (OUT/goals.md, benchmarks/goals.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# start_run OUT
start_run() {
    mkdir -p "$1"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$1/load.txt"
}

# random_checkpoint CHECKPOINT
random_checkpoint() {
    .venv/bin/mmtrt init "$1" --seed 0
}

# export_for_bench CHECKPOINT EXPORT_DIR PRECISION: batches up to 8, no TensorRT engines
export_for_bench() {
    .venv/bin/mmtrt export "$1" --out "$2" --precision "$3" --max-batch 8 --no-engines
}

# finish_run OUT: after `mmtrt bench ... --out OUT`
finish_run() {
    .venv/bin/python -m benchmarks.goals "$1/bench.json"
    echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$1/load.txt"
}
