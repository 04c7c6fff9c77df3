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
[ ${#torch_spec[@]} -eq 0 ] || pip_install "${torch_spec[@]}"
# Everything else exactly as tested: each package pinned with the sha256 of its files
# (requirements.lock, written by scripts/lock.sh from pyproject.toml), then mmtrt itself.
pip_install --no-deps --require-hashes -r requirements.lock
pip_install --no-deps --no-build-isolation -e .
# The Triton server binary and its python backend; pytriton's own Python API (and its pins) are not used.
pip_install --no-deps --require-hashes -r requirements-triton.lock
# (pip check would flag pytriton's own, unused dependencies: check what mmtrt imports instead)
.venv/bin/python -c "import torch, onnx, onnxruntime, openvino, monai, tritonclient.grpc, tritonclient.http, mmtrt.cli"
test -x "$(.venv/bin/python -c 'import mmtrt.serving as s; print(s.find_tritonserver())')"
# Debian packages some tests need, installed in CI or where missing when apt-get can run (root);
# else those tests skip, saying why: nginx + its njs module (tests/integration/test_nginx_guard.py),
# headless Chromium (the test that opens `mmtrt evaluate`'s HTML report), dicom3tools (dciodvfy,
# the standard's validator, run on every DICOM object the tests write) and Orthanc with its
# DICOMweb plugin (the PACS of the DICOMweb tests) and prometheus (promtool); in CI the absence
# of the last three fails their tests.
debian=()
if [ "${CI:-}" = "true" ] || ! command -v nginx >/dev/null 2>&1 || [ ! -e /usr/lib/nginx/modules/ngx_http_js_module.so ]; then
    debian+=(nginx-light libnginx-mod-http-js)
fi
command -v chromium >/dev/null 2>&1 || debian+=(chromium)
if [ "${CI:-}" = "true" ] || ! command -v dciodvfy >/dev/null 2>&1; then
    debian+=(dicom3tools)
fi
if [ "${CI:-}" = "true" ] || ! command -v Orthanc >/dev/null 2>&1; then
    debian+=(orthanc orthanc-dicomweb)  # a real PACS for the DICOMweb tests
fi
if [ "${CI:-}" = "true" ] || ! command -v promtool >/dev/null 2>&1; then
    debian+=(prometheus)  # promtool: the alerting rules of deploy/monitoring/ checked and unit-tested
fi
if [ ${#debian[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing ${debian[*]} (apt-get)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${debian[@]}" >/dev/null || echo "setup: warning: could not install ${debian[*]}; their tests will skip" >&2
    else
        echo "setup: ${debian[*]} not installed (needs root and apt-get); their tests will skip"
    fi
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
