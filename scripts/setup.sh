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
.venv/bin/python -c "import torch, onnx, onnxruntime, openvino, tritonclient.grpc, tritonclient.http, mmtrt.cli"
test -x "$(.venv/bin/python -c 'import mmtrt.serving as s; print(s.find_tritonserver())')"
# Debian packages the proxy test needs (tests/integration/test_nginx_guard.py: nginx + its njs
# module): installed in CI or where missing, when apt-get can run (root); else the test skips.
if [ "${CI:-}" = "true" ] || ! command -v nginx >/dev/null 2>&1 || [ ! -e /usr/lib/nginx/modules/ngx_http_js_module.so ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            nginx-light libnginx-mod-http-js >/dev/null
    else
        echo "setup: nginx + libnginx-mod-http-js not installed (needs root and apt-get); the nginx test will skip"
    fi
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
