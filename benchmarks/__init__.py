"""The scripts that reproduce the committed results under benchmarks/results/, and the project's own
goals (goals.py). Run each from the repository root as ``python -m benchmarks.<name>``; ``--help``
says what it measures and writes."""

from __future__ import annotations

import shlex
import sys


def command_line() -> str:
    """How this run was started, as one would type it again: ``python -m benchmarks.<name> ...``."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    return shlex.join([*program, *sys.argv[1:]])
