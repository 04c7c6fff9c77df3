"""`mmtrt serve --replicas N`: N independent tritonservers of one repository on one host.

Each replica is a :class:`~mmtrt.serving.server.TritonServer` with ports of its own: replica ``i``
gets ``port + REPLICA_PORT_STEP * i`` for each port given (8000, 8010, 8020 ... for HTTP with the
defaults), or free ports where a port is 0. Their endpoints are printed one line per replica, with
the `mmtrt infer --url ... --url ...` line that uses all of them. Each replica has its own
watchdog (a crashed server or a dead stub process: restart on the same ports, at most
``max_restarts`` in ``window_s``); a replica past that is stopped and the others go on; when none
is left `mmtrt serve` exits 1. SIGINT / SIGTERM / SIGHUP stop every replica and exit 0.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    period_s: float = 1.0,
    max_restarts: int = 5,
    window_s: float = 600.0,
) -> int:
    """Run ``n`` replicas until a signal (returns 0) or until none is left (returns 1)."""
    from .server import ServingError, TritonServer

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
    code = 0
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
        restarts: dict[int, list[float]] = {i: [] for i in live}
        while stopping["signal"] is None and live:
            time.sleep(period_s)
            for i in list(live):
                server = servers[i]
                exited = not server.is_running()
                if not exited and not watchdog:
                    continue
                if exited:
                    reason = f"tritonserver exited on its own (exit code {server.exit_code})"
                else:
                    dead = server.dead_stubs()
                    if not dead:
                        continue
                    reason = f"the python-backend stub process of model(s) {', '.join(dead)} died"
                if exited and not watchdog:
                    echo(f"Error: replica {i}: {reason}; not restarted (--no-watchdog)", err=True)
                    live.remove(i)
                    continue
                recent = [t for t in restarts[i] if time.monotonic() - t < window_s]
                if len(recent) >= max_restarts:
                    echo(
                        f"Error: replica {i}: {reason} after {len(recent)} restarts in "
                        f"{window_s / 60:.0f} minutes; stopping this replica",
                        err=True,
                    )
                    server.stop(grace=2.0)
                    live.remove(i)
                    continue
                restarts[i] = recent + [time.monotonic()]
                echo(f"warning: replica {i}: {reason}; restarting it on the same ports", err=True)
                t1 = time.monotonic()
                try:
                    server.restart(timeout=timeout)
                except ServingError as e:
                    echo(f"Error: replica {i} did not come back: {e}", err=True)
                    live.remove(i)
                    continue
                echo(f"replica {i} serving again after {time.monotonic() - t1:.1f} s (pid {server.pid})")
                sys.stdout.flush()
        if stopping["signal"] is None:
            echo("Error: no replica left", err=True)
            code = 1
        else:
            echo(f"{signal.Signals(stopping['signal']).name}: stopping {n} replicas")
    except ServingError as e:
        echo(f"Error: {e}", err=True)
        code = 1
    finally:
        stopping["signal"] = stopping["signal"] or signal.SIGTERM  # later signals: ignored
        for server in servers:
            server.stop()
        for s, h in handlers.items():
            signal.signal(s, h)
    if code == 0:
        echo("stopped")
    return code
