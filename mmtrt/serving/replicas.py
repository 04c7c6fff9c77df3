"""`mmtrt serve --replicas N`: N independent tritonservers of one repository on one host.

Each replica is a :class:`~mmtrt.serving.server.TritonServer` with ports of its own: replica ``i``
gets ``port + REPLICA_PORT_STEP * i`` for each port given (8000, 8010, 8020 ... for HTTP with the
defaults), or free ports where a port is 0. Their endpoints are printed one line per replica, with
the `mmtrt infer --url ... --url ...` line that uses all of them. Each replica has its own
:class:`~mmtrt.serving.supervisor.Supervisor` (a crashed server or a dead stub process: restart on
the same ports, at most ``max_restarts`` in ``window_s``); a replica past that is stopped and the
others go on; when none
is left `mmtrt serve` exits 1. SIGINT / SIGTERM / SIGHUP stop every replica and exit 0.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .supervisor import MAX_RESTARTS, PERIOD_S, RESTART_WINDOW_S

REPLICA_PORT_STEP = 10

__all__ = ["REPLICA_PORT_STEP", "replica_ports", "serve_replicas"]


def replica_ports(n: int, http_port: int, grpc_port: int, metrics_port: int) -> list[dict[str, int]]:
    """The ports of each of ``n`` replicas (0 stays 0: a free port each); refuses overlaps."""
    ports = [
        {
            name: (p + REPLICA_PORT_STEP * i if p else 0)
            for name, p in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port))
        }
        for i in range(n)
    ]
    fixed = [p for entry in ports for p in entry.values() if p]
    if len(fixed) != len(set(fixed)):
        raise ValueError(
            f"the ports of {n} replicas overlap ({ports}); give ports {REPLICA_PORT_STEP} apart or 0"
        )
    if any(p > 65535 for p in fixed):
        raise ValueError(f"a replica port is above 65535: {ports}")
    return ports


def serve_replicas(
    repository: Path,
    n: int,
    *,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    log_file: Path | None,
    timeout: float,
    watchdog: bool,
    extra_args: Sequence[str],
    echo: Callable[..., None],
    period_s: float = PERIOD_S,
    max_restarts: int = MAX_RESTARTS,
    window_s: float = RESTART_WINDOW_S,
) -> None:
    """Run ``n`` replicas until a signal; ServingError when none is left (or one fails to start)."""
    from .errors import ServingError
    from .server import TritonServer
    from .supervisor import Supervisor

    servers: list[TritonServer] = []
    for i, ports in enumerate(replica_ports(n, http_port, grpc_port, metrics_port)):
        log = None if log_file is None else log_file.with_name(f"{log_file.stem}.{i}{log_file.suffix}")
        servers.append(
            TritonServer(
                repository,
                host=host,
                http_port=ports["http"],
                grpc_port=ports["grpc"],
                metrics_port=ports["metrics"],
                log_file=log,
                extra_args=extra_args,
            )
        )

    stopping = {"signal": None}

    def handler(signum, _frame):
        if stopping["signal"] is None:
            stopping["signal"] = signum

    handlers = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    live: list[int] = []
    try:
        t0 = time.monotonic()
        for i, server in enumerate(servers):
            echo(f"starting replica {i} on {repository} (log: {server.log_path})")
            server.start(timeout=timeout)
            live.append(i)
            echo(
                f"replica {i}: HTTP http://{server.http_url}  gRPC {server.grpc_url}  "
                f"metrics {server.metrics_url}  (pid {server.pid})"
            )
            if stopping["signal"] is not None:
                break
        if host not in ("127.0.0.1", "localhost", "::1"):
            echo(
                f"warning: bound to {host}: anyone who can reach this machine can use the "
                "servers; see 'Exposing the server' in model_repository/README.md",
                err=True,
            )
        echo(
            "clients: mmtrt infer "
            + " ".join(f"--url {s.http_url}" for s in servers)
            + "  (gRPC: --protocol grpc "
            + " ".join(f"--url {s.grpc_url}" for s in servers)
            + ")"
        )
        echo(f"{n} replicas ready in {time.monotonic() - t0:.1f} s; Ctrl-C or SIGTERM stops them")
        sys.stdout.flush()
        supervisors = {
            i: Supervisor(
                servers[i],
                timeout=timeout,
                restart=watchdog,
                say=lambda line, err: (echo(line, err=err), sys.stdout.flush()),
                name=f"replica {i}",
                period_s=period_s,
                max_restarts=max_restarts,
                window_s=window_s,
            )
            for i in live
        }
        while stopping["signal"] is None and live:
            time.sleep(period_s)
            for i in list(live):
                try:
                    if supervisors[i].poll():
                        continue
                    echo(
                        f"Error: replica {i}: tritonserver exited on its own; not restarted (--no-watchdog)",
                        err=True,
                    )
                except ServingError as e:  # gave up, or it did not come back
                    echo(f"Error: {e}\nstopping replica {i}; the others go on", err=True)
                    servers[i].stop(grace=2.0)
                live.remove(i)
        if stopping["signal"] is None:
            raise ServingError("no replica left")
        echo(f"{signal.Signals(stopping['signal']).name}: stopping {n} replicas")
    finally:
        stopping["signal"] = stopping["signal"] or signal.SIGTERM  # later signals: ignored
        for server in servers:
            server.stop()
        for s, h in handlers.items():
            signal.signal(s, h)
    echo("stopped")
