#!/usr/bin/env bash
# Sets up .venv with everything mmtrt needs, on a fresh machine or over an existing .venv.
# CPU machines get the pinned CPU build of torch (it lies on disk; an open range would download
# a multi-GB CUDA build). A machine whose python3 already has a CUDA torch keeps that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
    echo "setup: using the CUDA torch of $PY ($("$PY" -c 'import torch; print(torch.__version__)'))"
    [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
    torch_spec=()
else
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    torch_spec=("torch==2.13.0")
fi

# (this machine's pip config names local mirrors that may be absent; their warnings are noise)
pip_install() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip_install "${torch_spec[@]}" -e ".[test]"
# The Triton server binary and its python backend; pytriton's own Python API (and its pins) are not used.
pip_install --no-deps "nvidia-pytriton==0.7.0"
# (pip check would flag pytriton's own, unused dependencies: check what mmtrt imports instead)
.venv/bin/python -c "import torch, onnx, onnxruntime, monai, tritonclient.grpc, tritonclient.http, mmtrt.cli"
# Headless Chromium for the test that opens `mmtrt evaluate`'s HTML report (Debian's package; the
# test skips, saying why, where it is missing).
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing chromium (apt-get)"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
            || echo "setup: warning: could not install chromium; the HTML report test will skip" >&2
    else
        echo "setup: note: no chromium (needs root + apt-get to install); the HTML report test will skip" >&2
    fi
fi
test -x "$(.venv/bin/python -c 'import mmtrt.serving as s; print(s.find_tritonserver())')"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
