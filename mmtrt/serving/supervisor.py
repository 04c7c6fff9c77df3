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
from typing import TYPE_CHECKING

from .errors import ServingError

if TYPE_CHECKING:  # (the supervisor only drives a server: importing it needs no server code)
    from .server import TritonServer

PERIOD_S = 1.0  # how often it looks for dead stub processes
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600


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
    """Restarts ``server`` when it exits on its own or one of its stubs dies.

    ``say(line, err)`` reports each restart; ``name`` (e.g. "replica 1") starts those lines.
    :meth:`poll` looks once (for a caller that watches several servers); :meth:`run` polls until
    the server exited on its own with ``restart`` off. Both raise ServingError when they give up.
    """

    def __init__(
        self,
        server: TritonServer,
        *,
        timeout: float,
        restart: bool = True,
        say: Callable[[str, bool], None] = lambda line, err: print(line),
        name: str = "",
        period_s: float = PERIOD_S,
        max_restarts: int = MAX_RESTARTS,
        window_s: float = RESTART_WINDOW_S,
    ):
        self.server = server
        self.timeout = timeout
        self.restart = restart
        self.say = say
        self.name = name
        self.period_s = period_s
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.restarts: list[float] = []  # monotonic times of the restarts within the window
        self._next_check = time.monotonic() + period_s

    def run(self) -> None:
        while True:
            time.sleep(0.2)
            if not self.poll():
                return

    def poll(self) -> bool:
        """Look at the server once and restart it if it needs it; False when it has exited on
        its own and restarting is off."""
        exited = not self.server.is_running()
        if exited:
            if not self.restart:
                return False
            reason = f"tritonserver exited on its own ({exit_status(self.server.exit_code)})"
        else:
            if not self.restart or time.monotonic() < self._next_check:
                return True
            dead = self.server.dead_stubs()
            self._next_check = time.monotonic() + self.period_s
            if not dead:
                return True
            reason = f"the python-backend stub process of model(s) {', '.join(dead)} died"
        self._restart(reason, show_log=exited)
        self._next_check = time.monotonic() + self.period_s
        return True

    def _restart(self, reason: str, *, show_log: bool) -> None:
        server = self.server
        who = f"{self.name}: " if self.name else ""
        self.restarts = [t for t in self.restarts if time.monotonic() - t < self.window_s]
        if len(self.restarts) >= self.max_restarts:
            raise ServingError(
                f"{who}{reason} after {len(self.restarts)} restarts in {self.window_s / 60:g} "
                f"minutes; giving up\n--- tail of {server.log_path} ---\n{server.log_tail()}"
            )
        self.restarts.append(time.monotonic())
        self.say(
            f"warning: {who}{reason}; restarting tritonserver on the same ports "
            "(requests in flight fail; clients retry)",
            True,
        )
        if show_log:
            self.say(f"--- tail of {server.log_path} ---\n{server.log_tail(8)}", True)
        t0 = time.monotonic()
        server.restart(timeout=self.timeout)
        self.say(
            f"{self.name + ' ' if self.name else ''}serving again after {time.monotonic() - t0:.1f} s "
            f"(pid {server.pid}, restart {len(self.restarts)})",
            False,
        )
