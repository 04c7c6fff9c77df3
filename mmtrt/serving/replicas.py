"""`mmtrt serve`: N independent tritonservers (replicas) of one repository on one host, N >= 1.

Each replica is a :class:`~mmtrt.serving.server.TritonServer` with ports of its own: replica ``i``
gets ``port + REPLICA_PORT_STEP * i`` for each port given (8000, 8010, 8020 ... for HTTP with the
defaults), or free ports where a port is 0. Once all are ready their endpoints, models and the
`mmtrt infer --url ...` line that uses all of them are printed. Each replica has its own
:class:`~mmtrt.serving.supervisor.Supervisor` (a crashed server or a dead stub process: restart on
the same ports, within the :class:`~mmtrt.serving.supervisor.RestartPolicy`); a replica past that
is stopped and the others go on; when none is left :func:`serve_replicas` raises ServingError
(`mmtrt serve` exits 1). SIGINT / SIGTERM / SIGHUP stop every replica, even while they start, and
it returns (exit 0); a second signal does not interrupt that clean-up.

Every replica is guarded (:class:`~mmtrt.serving.server.TritonServer`'s ``guarded``): the nginx
guard of ``deploy/nginx/`` holds its ports and tritonserver listens behind it, in a network
namespace of its own; without nginx a warning says so and Triton takes the ports itself. Every
replica restricts Triton's admin APIs (:mod:`~mmtrt.serving.admin`) to one key: a per-run
secret in a 0600 file, removed at the end, or the operator's ``admin_key_file``. The key is never
printed, only the file's path (for mmtrt's tools: ``MMTRT_ADMIN_KEY_FILE``). A warning says when
other local users could read the key (/proc without hidepid) or the request bytes (no private
/dev/shm, :mod:`~mmtrt.serving.isolation`).

The messages name replicas ("replica 1: ...") only when there are several; one server is
"the server", its endpoints a table.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .client import DEFAULT_PORTS
from .supervisor import RestartPolicy, exit_status

if TYPE_CHECKING:  # (the server side is loaded only when serving)
    from .tls import ServerTls

REPLICA_PORT_STEP = 10
LOOPBACK = ("127.0.0.1", "localhost", "::1")

__all__ = ["REPLICA_PORT_STEP", "ServeSettings", "replica_ports", "serve_replicas"]


@dataclass(frozen=True)
class ServeSettings:
    """What `mmtrt serve` runs: ``replicas`` servers of ``repository`` bound to ``host``, the
    first on the given ports; ``timeout`` seconds for the models to load; ``extra_args`` passed to
    each tritonserver; ``log_file`` (one replica) or ``<stem>.<i><suffix>`` beside it (several);
    ``admin_key_file``: the key of the admin APIs (default: a new one each run); ``tls``: gRPC
    with TLS (HTTP then on loopback only)."""

    repository: Path
    replicas: int = 1
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_PORTS["http"]
    grpc_port: int = DEFAULT_PORTS["grpc"]
    metrics_port: int = DEFAULT_PORTS["metrics"]
    log_file: Path | None = None
    timeout: float = 300.0
    restarts: RestartPolicy = RestartPolicy()
    extra_args: tuple[str, ...] = ()
    admin_key_file: Path | None = None
    tls: ServerTls | None = None


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


class _Stop(Exception):
    """Raised in the main thread by the SIGINT / SIGTERM / SIGHUP handler."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


class _StopOnSignals:
    """While active, the first SIGINT / SIGTERM / SIGHUP raises :class:`_Stop` in the main
    thread (also inside a server's start-up); later ones, and any after :meth:`stopping`, are
    ignored so the clean-up runs."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __enter__(self):
        self._stopping = False
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame):
        if not self._stopping:
            self._stopping = True
            raise _Stop(signum)

    def stopping(self) -> None:
        self._stopping = True

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def serve_replicas(settings: ServeSettings, echo: Callable[..., None]) -> None:
    """Run the replicas until a signal (then return); ServingError when one fails to start or
    none is left. ``echo(line, err=False)`` prints."""
    from .admin import AdminKey
    from .binary import find_tritonserver
    from .errors import ServingError
    from .guard import GuardUnavailable, find_nginx
    from .server import TritonServer
    from .supervisor import Supervisor

    s = settings
    binary = find_tritonserver()
    try:
        find_nginx()
        unguarded = ""
    except GuardUnavailable as e:
        unguarded = str(e)
    ports = replica_ports(s.replicas, s.http_port, s.grpc_port, s.metrics_port)
    key = AdminKey.load(s.admin_key_file) if s.admin_key_file else AdminKey.create()
    try:
        extra_args = (*key.tritonserver_args(s.extra_args), *s.extra_args)
        servers = [
            TritonServer(
                s.repository,
                host=s.host,
                http_port=p["http"],
                grpc_port=p["grpc"],
                metrics_port=p["metrics"],
                log_file=_log_file(s.log_file, i, s.replicas),
                extra_args=extra_args,
                tritonserver=binary,
                tls=s.tls,
                guarded=not unguarded,
                # explicit model control: `mmtrt update` loads another version while it serves
                model_control_mode="explicit",
            )
            for i, p in enumerate(ports)
        ]
        names = ["" if s.replicas == 1 else f"replica {i}" for i in range(s.replicas)]
        with _StopOnSignals() as signals:
            try:
                t0 = time.monotonic()
                for name, server in zip(names, servers):
                    echo(
                        f"starting {name + ': ' if name else ''}{binary} on {s.repository} "
                        f"(log: {server.log_path})"
                    )
                    server.start(timeout=s.timeout)
                    if name:
                        echo(
                            f"{name}: HTTP http://{server.http_url}  gRPC {server.grpc_url}  "
                            f"metrics {server.metrics_url}  (pid {server.pid})"
                        )
                for line, err in _ready_lines(servers, s.host, key, time.monotonic() - t0, unguarded):
                    echo(line, err=err)
                supervisors = [
                    Supervisor(server, timeout=s.timeout, policy=s.restarts, say=echo, name=name)
                    for name, server in zip(names, servers)
                ]
                _supervise(supervisors, echo)
                raise ServingError("no replica left")
            except _Stop as stop:
                echo(f"{stop}: stopping {_them(len(servers))}")
            finally:
                signals.stopping()  # a second Ctrl-C must not interrupt the clean-up
                for server in servers:
                    server.stop()
    finally:
        key.remove()
    echo("stopped")


def _them(n: int) -> str:
    return "the server" if n == 1 else f"{n} replicas"


def _ready_lines(servers: list, host: str, key, elapsed_s: float, unguarded: str) -> list[tuple[str, bool]]:
    """(line, to stderr) once every replica is ready: one server's endpoints (several have had a
    line each as they started), the models, where the admin key is, warnings (no guard:
    ``unguarded`` says why; exposure, what other local users could read), the client command
    line."""
    from .admin import ADMIN_APIS, GRPC_HEADER_PREFIX, HEADER, KEY_FILE_ENV, proc_hides_command_lines

    one = len(servers) == 1
    lines = []
    if one:
        server = servers[0]
        lines += [
            (f"HTTP     http://{server.http_url}", False),
            (f"gRPC     {server.grpc_url}", False),
            (f"metrics  {server.metrics_url}", False),
        ]
    if servers[0].tls is not None:
        tls = servers[0].tls
        clients = f"client certificates signed by {tls.ca_file}" if tls.ca_file else "no client certificates"
        lines.append((f"gRPC with TLS ({clients}); HTTP plaintext on loopback only, for a TLS proxy", False))
    lines += [(line, False) for line in _describe_models(servers[0])]  # (one repository for all)
    lines.append(
        (
            f"admin APIs ({', '.join(ADMIN_APIS)}) need the key in {key.path} as header {HEADER} "
            f"(gRPC: {GRPC_HEADER_PREFIX}{HEADER}); mmtrt's tools read it with {KEY_FILE_ENV}={key.path}",
            False,
        )
    )
    if not proc_hides_command_lines():
        lines.append(
            (
                "warning: /proc is mounted without hidepid: other local users can read the admin key "
                "in the server's command line; on a shared host mount /proc with hidepid=invisible "
                "(see docs/security.md)",
                True,
            )
        )
    network = servers[0].private_network
    if unguarded:
        lines.append(
            (
                f"warning: no guard in front of Triton ({unguarded}): any client that reaches its "
                "ports can abort it with a chunked HTTP body (the watchdog restarts it); see "
                "docs/security.md",
                True,
            )
        )
    elif network.kind is None:
        lines.append(
            (
                f"warning: no private network namespace for Triton behind its guard ({network.reason}): "
                "other local users can reach Triton's own loopback ports; see docs/security.md",
                True,
            )
        )
    shm = servers[0].private_shm
    if shm.kind is None:
        lines.append(
            (
                f"warning: no private /dev/shm for the server ({shm.reason}): other local users can "
                "read the request bytes (images, DICOM files with patient data) its python backend "
                "keeps in /dev/shm; see docs/security.md",
                True,
            )
        )
    if host not in LOOPBACK:
        lines.append(
            (
                f"warning: bound to {host}: anyone who can reach this machine can use "
                f"{_them(len(servers))}; see 'Exposing the server' in model_repository/README.md",
                True,
            )
        )
    http = " ".join(f"--url {server.http_url}" for server in servers)
    grpc = " ".join(f"--url {server.grpc_url}" for server in servers)
    pids = ", ".join(str(server.pid) for server in servers)
    lines += [
        (f"clients: mmtrt infer {http}  (gRPC: --protocol grpc {grpc})", False),
        (
            f"{'' if one else f'{len(servers)} replicas '}ready in {elapsed_s:.1f} s (pid {pids}); "
            f"Ctrl-C or SIGTERM stops {'it' if one else 'them'}",
            False,
        ),
    ]
    return lines


def _supervise(supervisors: list, echo: Callable[..., None]) -> None:
    """Poll every replica's supervisor until none is left: a replica that exits with restarting
    off, or that its supervisor gives up on, is stopped and the others go on."""
    from .errors import ServingError

    live = list(supervisors)
    while live:
        time.sleep(0.2)  # (an exit is seen within this; stubs are looked at every policy.period_s)
        for supervisor in list(live):
            server, name = supervisor.server, supervisor.name
            who = f"{name}: " if name else ""
            try:
                if supervisor.poll():
                    continue
                error = (
                    f"{who}tritonserver exited on its own ({exit_status(server.exit_code)}); not "
                    f"restarted (--no-watchdog)\n--- tail of {server.log_path} ---\n{server.log_tail()}"
                )
            except ServingError as e:  # gave up, or it did not come back
                error = str(e)
            live.remove(supervisor)
            echo(f"Error: {error}" + (f"\nstopping {name}; the others go on" if live else ""), err=True)
            server.stop(grace=2.0)


def _log_file(log_file: Path | None, i: int, n: int) -> Path | None:
    """The log of replica ``i``: ``log_file`` itself for one replica, ``<stem>.<i><suffix>``
    beside it for several (None: a temporary file each)."""
    if log_file is None or n == 1:
        return log_file
    return log_file.with_name(f"{log_file.stem}.{i}{log_file.suffix}")


def _describe_models(server) -> list[str]:
    """The models ``server`` serves, one line each: name, version, state, inputs and outputs."""
    from .client import TritonClient

    lines = []
    with TritonClient(server.http_url, headers=server.headers, timeout_s=10.0) as client:
        for entry in client.models():
            name = entry["name"]
            try:
                info = client.model(name)
                ins = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in info.inputs)
                detail = f"in: {ins}; out: {', '.join(info.output_names)}"
            except Exception as e:  # noqa: BLE001 - only for the listing
                detail = f"(metadata unavailable: {e})"
            lines.append(f"  model {name} v{entry.get('version', '?')} {entry.get('state', '?')}  {detail}")
    return lines
