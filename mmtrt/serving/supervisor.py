"""The watchdog of ``mmtrt serve``: keep a :class:`~mmtrt.serving.server.TritonServer` serving.

Triton 2.51 neither restarts a python-backend stub that died (killed, out of memory) nor marks
its model unready: the model fails every request while still reported ready. And a crashed
tritonserver stays down. The supervisor polls for both and restarts the server on the same
ports, so clients that retry reconnect to the same addresses; a server that keeps dying (more
than ``max_restarts`` restarts in ``window_s``) is given up with an error.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ServingError

if TYPE_CHECKING:  # (the supervisor only drives a server: importing it needs no server code)
    from .server import TritonServer

PERIOD_S = 1.0  # how often it looks for dead stub processes
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600


@dataclass(frozen=True)
class RestartPolicy:
    """Whether a server that exits on its own or loses a stub is restarted (``enabled``), how
    often its stubs are looked at (``period_s``), and the most restarts in ``window_s`` seconds
    before the supervisor gives up (``max_restarts``)."""

    enabled: bool = True
    period_s: float = PERIOD_S
    max_restarts: int = MAX_RESTARTS
    window_s: float = RESTART_WINDOW_S


def exit_status(code: int | None) -> str:
    """How a process ended, in words: "exit code 1", "killed by SIGKILL"."""
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Restarts ``server`` when it exits on its own or one of its stubs dies, as ``policy`` says.

    ``say(line, err=...)`` reports each restart (``err``: a warning, for stderr); ``name`` (e.g.
    "replica 1") starts those lines. :meth:`poll` looks once; it raises ServingError when it
    gives up.
    """

    def __init__(
        self,
        server: TritonServer,
        *,
        timeout: float,
        policy: RestartPolicy = RestartPolicy(),
        say: Callable[..., None] = lambda line, err=False: print(line),
        name: str = "",
    ):
        self.server = server
        self.timeout = timeout
        self.policy = policy
        self.say = say
        self.name = name
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self._next_check = time.monotonic() + policy.period_s

    def poll(self) -> bool:
        """Look at the server once and restart it if it needs it; False when it has exited on
        its own and restarting is off."""
        exited = not self.server.is_running()
        if exited:
            if not self.policy.enabled:
                return False
            reason = f"tritonserver exited on its own ({exit_status(self.server.exit_code)})"
        else:
            if not self.policy.enabled or time.monotonic() < self._next_check:
                return True
            dead = self.server.dead_stubs()
            self._next_check = time.monotonic() + self.policy.period_s
            if not dead:
                return True
            reason = f"the python-backend stub process of model(s) {', '.join(dead)} died"
        self._restart(reason, show_log=exited)
        self._next_check = time.monotonic() + self.policy.period_s
        return True

    def _restart(self, reason: str, *, show_log: bool) -> None:
        server = self.server
        who = f"{self.name}: " if self.name else ""
        window_s = self.policy.window_s
        self.restarts = [t for t in self.restarts if time.monotonic() - t < window_s]
        if len(self.restarts) >= self.policy.max_restarts:
            raise ServingError(
                f"{who}{reason} after {len(self.restarts)} restarts in {window_s / 60:g} "
                f"minutes; giving up\n--- tail of {server.log_path} ---\n{server.log_tail()}"
            )
        self.restarts.append(time.monotonic())
        self.say(
            f"warning: {who}{reason}; restarting tritonserver on the same ports "
            "(requests in flight fail; clients retry)",
            err=True,
        )
        if show_log:
            self.say(f"--- tail of {server.log_path} ---\n{server.log_tail(8)}", err=True)
        t0 = time.monotonic()
        server.restart(timeout=self.timeout)
        self.say(
            f"{self.name + ' ' if self.name else ''}serving again after {time.monotonic() - t0:.1f} s "
            f"(pid {server.pid}, restart {len(self.restarts)})",
            err=False,
        )
