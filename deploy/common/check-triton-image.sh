#!/bin/sh
# The Triton image a serving image is built on (deploy/cpu/Dockerfile, deploy/gpu/Dockerfile):
# NVIDIA's tritonserver 25.07 or newer, pinned by its digest. Releases before 25.07 have the
# CVE-2025-23310/23311 (a chunked HTTP request crashes the server) and CVE-2025-23319/23320/23334
# (shared-memory registration) defects; a tag alone can be moved to other bytes.
#   check-triton-image.sh nvcr.io/nvidia/tritonserver:25.10-py3@sha256:<64 hex digits>
# Exit 0 if acceptable, 1 with the reason otherwise.
image="$1"
hint="pass --build-arg TRITON_IMAGE=nvcr.io/nvidia/tritonserver:<25.07 or newer>-py3@sha256:<digest> (the digest: docker buildx imagetools inspect nvcr.io/nvidia/tritonserver:<release>-py3)"
if ! printf '%s' "$image" | grep -Eq '^nvcr\.io/nvidia/tritonserver:[^@]+@sha256:[0-9a-f]{64}$'; then
    echo "TRITON_IMAGE '$image' is not NVIDIA's tritonserver pinned by digest: $hint" >&2
    exit 1
fi
if ! printf '%s' "$image" | grep -Eq ':(25\.(0[7-9]|1[0-2])|(2[6-9]|[3-9][0-9])\.(0[1-9]|1[0-2]))-py3@'; then
    echo "TRITON_IMAGE '$image' is a release before 25.07 (CVE-2025-23310/23311/23319/23320/23334) or not a -py3 image: $hint" >&2
    exit 1
fi
