"""Reading a tritonserver log: its error lines, and the ports it could not bind."""

from __future__ import annotations

import re
from collections.abc import Iterable

# "failed to start HTTP service: Unavailable - Socket '127.0.0.1:60385' already in use", or
# gRPC's "No address added out of total 1 resolved for '127.0.0.1:44185' {... Address already in use"
_QUOTED_PORT = re.compile(r"'[^']*:(\d+)\s*'")

# "E1125 23:26:45.733378 3932 backend_model.cc:692] message"
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")
# Error lines the bundled server always logs on a machine without a GPU.
_HARMLESS = (
    "CudaDriverHelper has not been initialized",
    "pinned memory",
    "CUDA driver version is insufficient",
)


def error_lines(lines: Iterable[str]) -> list[str]:
    """The distinct error messages among log ``lines`` (``E...`` log lines and ``error:``
    lines), without the CUDA noise a CPU-only machine always produces."""
    errors = []
    for line in lines:
        m = _ERROR_LINE.match(line)
        if m:
            text = m.group(1).strip().strip('"')
        elif line.startswith("error:"):
            text = line.strip()
        else:
            continue
        text = text.replace("\\n", "\n    ").rstrip()  # Triton escapes newlines
        if not any(n in text for n in _HARMLESS) and text not in errors:
            errors.append(text)
    return errors


def ports_in_use(errors: Iterable[str]) -> set[int]:
    """Ports that error messages say were already in use."""
    ports = set()
    for line in errors:
        if "already in use" in line.lower():
            ports.update(int(m.group(1)) for m in _QUOTED_PORT.finditer(line))
    return ports
