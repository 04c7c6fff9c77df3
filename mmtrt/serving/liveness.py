"""Is a Triton server alive *and* are all its python models' stub processes? A probe command for
Kubernetes (the cpu flavour's livenessProbe) and for anyone supervising tritonserver themselves.

Triton 2.51 stays live and ready when a python model's stub process dies (OOM-killed, crashed):
the model stays READY and every request to it fails until the server restarts. Its health
endpoints cannot tell; the process table can. This probe exits 1, naming the model, when a python
model has fewer live stub processes than its config.pbtxt's instance count, or when
``/v2/health/live`` does not answer 200; else 0.

Standard library only, one file: the serving image copies it as it is
(deploy/cpu/Dockerfile) and runs ``python3 liveness.py --repository /models/repo-cpu --pid 1``.
"""

from __future__ import annotations

import argparse
import re
import sys
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"
_COUNT = re.compile(r"\bcount\s*:\s*(\d+)")


def expected_stubs(repository: Path) -> dict[str, int]:
    """Model -> stub processes it should have: each python model's instance count."""
    expected = {}
    for config in sorted(Path(repository).glob("*/config.pbtxt")):
        text = config.read_text()
        if re.search(r'\bbackend\s*:\s*"python"', text):
            counts = [int(n) for n in _COUNT.findall(text)]
            expected[config.parent.name] = sum(counts) or 1
    return expected


def live_stubs(server_pid: int) -> dict[str, int]:
    """Model -> live (not zombie) stub processes among the children of ``server_pid``."""
    live: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if (
            int(ppid) != server_pid
            or state in ("Z", "X")
            or Path(argv[0].decode(errors="replace")).name != STUB
        ):
            continue
        # argv[1]: <repository>/<model>/<version>/model.py
        model = Path(argv[1].decode(errors="replace")).parent.parent.name if len(argv) > 1 else "?"
        live[model] = live.get(model, 0) + 1
    return live


def problems(repository: Path, server_pid: int, http: str | None, timeout_s: float = 3.0) -> list[str]:
    """What is wrong with the server (empty: alive, every python model's stubs running)."""
    found = []
    if not Path(f"/proc/{server_pid}").exists():
        return [f"no process {server_pid}"]
    if http:
        try:
            with urllib.request.urlopen(f"http://{http}/v2/health/live", timeout=timeout_s) as r:
                if r.status != 200:
                    found.append(f"/v2/health/live answered {r.status}")
        except OSError as e:
            found.append(f"/v2/health/live: {e}")
    live = live_stubs(server_pid)
    for model, n in expected_stubs(repository).items():
        if live.get(model, 0) < n:
            found.append(f"model {model}: {live.get(model, 0)} of {n} python stub process(es) alive")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repository", required=True, type=Path, help="the model repository the server serves"
    )
    parser.add_argument("--pid", type=int, default=1, help="tritonserver's pid (1 in its container)")
    parser.add_argument(
        "--http", default="127.0.0.1:8000", help="its HTTP address ('' to skip the health call)"
    )
    args = parser.parse_args(argv)
    found = problems(args.repository, args.pid, args.http or None)
    for line in found:
        print(f"not live: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
