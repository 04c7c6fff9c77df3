"""Run the real Triton Inference Server (``tritonserver``) as a child process.

:class:`TritonServer` starts the binary :func:`~mmtrt.serving.binary.find_tritonserver` finds
(for the bundled one, with a prepared python-backend directory and this interpreter's folder
first on PATH: the stub finds its packages, numpy and onnxruntime, through the ``python3`` on
PATH, PYTHONPATH is ignored), waits until every model is ready, and stops it with its whole
process group. The server runs in its own process group with its output in a log file (0600)
that is kept after stop; start-up failures raise :class:`ServingError` carrying the tail of that
log. Where the system allows it the server gets a /dev/shm of its own
(:mod:`~mmtrt.serving.isolation`): other local users cannot read the request bytes its python
backend passes through shared memory. A ``guarded`` server (what `mmtrt serve` runs) has the
nginx guard of ``deploy/nginx/`` (:mod:`~mmtrt.serving.guard`) on its ports, and tritonserver
itself listens in a network namespace of its own that only the guard reaches: every client,
other local users included, goes through the guard's checks. Keys on the command line
(restricted APIs) are shown as ``***`` in the log and in :attr:`TritonServer.command`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path

from .admin import redact
from .binary import bundled_root_of, find_tritonserver, prepare_backend_dir
from .checks import BUILD_ENGINES_HINT, missing_plan_files, offline_config_problems
from .config import parse_config
from .errors import ServingError
from .isolation import (
    Isolation,
    join_network_preexec,
    private_network,
    private_network_preexec,
    private_shm,
    private_shm_preexec,
)
from .logs import error_lines, ports_in_use
from .processes import (
    SHM_PREFIX,
    group_alive,
    parent_death_signal,
    python_stub_processes,
    remove_shm_regions,
    stub_argvs,
)
from .tls import ServerTls

__all__ = ["TritonServer", "restricted_headers"]

# Flags TritonServer sets from its own arguments; extra_args may not override them.
_MANAGED_FLAGS = frozenset(
    {
        "--model-repository",
        "--model-store",
        "--model-control-mode",
        "--backend-directory",
        "--http-address",
        "--http-port",
        "--grpc-address",
        "--grpc-port",
        "--metrics-address",
        "--metrics-port",
        "--allow-http",
        "--allow-grpc",
        "--grpc-use-ssl",
        "--grpc-use-ssl-mutual",
        "--grpc-server-cert",
        "--grpc-server-key",
        "--grpc-root-cert",
    }
)


def restricted_headers(args: Sequence[str]) -> dict[str, str]:
    """Headers a client needs for the APIs ``--http-restricted-api=<apis>:<key>=<value>`` flags
    in ``args`` restrict (what TritonServer sends with its own readiness checks)."""
    headers = {}
    for arg in args:
        flag, _, value = str(arg).partition("=")
        if flag != "--http-restricted-api" or ":" not in value:
            continue
        _apis, _, key_value = value.partition(":")
        key, sep, secret = key_value.partition("=")
        if sep and key:
            headers[key] = secret
    return headers


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _model_names(repository: Path) -> list[str]:
    return sorted(p.name for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


# Servers started by this process, stopped at interpreter exit if their owner forgot to: the
# server runs in its own session, so nothing else would end it. The exit hook is registered with
# the first launch, so importing this module has no side effect.
_RUNNING: weakref.WeakSet[TritonServer] = weakref.WeakSet()


def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop()


def _track(server: TritonServer) -> None:
    if not _RUNNING and not getattr(_track, "registered", False):
        atexit.register(_stop_all)
        _track.registered = True
    _RUNNING.add(server)


def _open_log(path: Path):
    """``path`` opened for appending, created 0600 (an existing file is made 0600 too); a
    symbolic link there is refused, not followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        what = "is a symbolic link" if path.is_symlink() else e.strerror
        raise ServingError(f"cannot write the server log {path}: {what}") from None
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        pass  # another user's file we may append to: its owner decides
    return os.fdopen(fd, "ab")


# --------------------------------------------------------------------------- the server


class TritonServer:
    """A real ``tritonserver`` serving ``repository``; use as a context manager.

    Ports given as 0 are picked free on ``host`` (loopback by default). ``log_file`` receives the
    server's stdout and stderr (default: a ``mmtrt-tritonserver-*.log`` file in the temp folder,
    kept after stop). ``extra_args`` are appended to the command line as given (flags the class
    sets itself, such as ports and addresses, are refused). With ``die_with_parent`` (Linux), the
    server gets SIGTERM when the thread that started it ends, so even a SIGKILLed owner leaves no
    server behind: start it from a thread that outlives it (e.g. the main thread), or pass False.
    :attr:`private_shm` says whether (and how) its /dev/shm is its own. With ``guarded``, the
    ports are the nginx guard's (:class:`~mmtrt.serving.guard.NginxGuard`, which then also holds
    the gRPC TLS) and tritonserver listens behind it in a network namespace of its own
    (:attr:`private_network` says whether, and how; without one it listens on free loopback
    ports); the guard is started and stopped with it.
    """

    def __init__(
        self,
        repository: Path,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        grpc_port: int = 0,
        metrics_port: int = 0,
        log_file: Path | None = None,
        extra_args: Sequence[str] = (),
        model_control_mode: str = "none",
        tritonserver: Path | None = None,
        exit_timeout_s: int = 5,
        die_with_parent: bool = True,
        tls: ServerTls | None = None,
        guarded: bool = False,
    ):
        self.repository = Path(repository).resolve()
        self.host = host
        self.tls = tls
        # Triton's HTTP has no TLS: with TLS on, only a proxy on this host may reach it
        self.http_host = "127.0.0.1" if tls is not None and host not in ("127.0.0.1", "::1") else host
        self._requested_ports = {"http": int(http_port), "grpc": int(grpc_port), "metrics": int(metrics_port)}
        self.ports = dict(self._requested_ports)
        self.extra_args = tuple(str(a) for a in extra_args)
        managed = [a for a in self.extra_args if a.split("=", 1)[0] in _MANAGED_FLAGS]
        if managed:
            raise ValueError(
                f"extra_args {managed} would override flags TritonServer sets itself "
                "(repository, addresses, ports, backend directory, TLS): use its "
                "arguments instead"
            )
        if model_control_mode not in ("none", "poll", "explicit"):
            raise ValueError(
                f"model_control_mode must be 'none', 'poll' or 'explicit', got {model_control_mode!r}"
            )
        self.model_control_mode = model_control_mode
        self.exit_timeout_s = int(exit_timeout_s)
        self.die_with_parent = bool(die_with_parent)
        self._binary = Path(tritonserver) if tritonserver is not None else None
        if log_file is None:
            fd, name = tempfile.mkstemp(prefix="mmtrt-tritonserver-", suffix=".log")
            os.close(fd)
            log_file = Path(name)
        self.log_path = Path(log_file)
        self.command: list[str] = []  # as logged: keys redacted
        self.guarded = bool(guarded)
        self.private_network: Isolation = private_network() if guarded else Isolation(None, "not guarded")
        # behind the guard, /dev/shm is made private in the guard's namespaces
        self.private_shm: Isolation = self.private_network if self.private_network.kind else private_shm()
        self._guard = None
        self._proc: subprocess.Popen | None = None
        self._workdir: Path | None = None
        self._log_offset = 0
        self._stubs_at_ready: dict[str, int] = {}
        self._shm_regions: set[str] = set()  # its stubs' files in the host's /dev/shm (not private)

    # ------------------------------------------------------------------ properties
    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (as TritonClient takes it)."""
        return f"{_client_host(self.http_host)}:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint (as TritonClient takes it)."""
        return f"{_client_host(self.host)}:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics page."""
        return f"http://{_client_host(self.host)}:{self.ports['metrics']}/metrics"

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for the APIs restricted by ``--http-restricted-api`` in extra_args."""
        return restricted_headers(self.extra_args)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        """tritonserver runs (and, guarded, so does its guard)."""
        guard_ok = self._guard is None or self._guard.is_running()
        return self._proc is not None and self._proc.poll() is None and guard_ok

    @property
    def exit_code(self) -> int | None:
        """The exit status of a server that ended by itself (negative: killed by that signal;
        guarded: the guard's, when tritonserver still runs); None while it runs or after stop()."""
        if self._proc is None:
            return None
        code = self._proc.poll()
        if code is None and self._guard is not None:
            code = self._guard.proc.poll() if self._guard.proc is not None else None
        return code

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ log
    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines this server (its latest launch) wrote to its log."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode("utf-8", "replace")
        except OSError as e:
            return f"(log {self.log_path} unreadable: {e})"
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Error lines of this server's latest launch (:func:`~mmtrt.serving.logs.error_lines`)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return error_lines(lines)

    def _fail(self, message: str) -> ServingError:
        parts = [message]
        errors = self.log_errors()
        if errors:
            parts.append("errors in the Triton log:\n" + "\n".join(f"  {e}" for e in errors))
        bad_configs = offline_config_problems(self.repository)
        if bad_configs:
            parts.append("offline config check:\n" + "\n".join(f"  {e}" for e in bad_configs))
        parts.append(f"--- tail of the Triton log {self.log_path} ---\n{self.log_tail()}")
        return ServingError("\n".join(parts))

    # ------------------------------------------------------------------ start / stop
    def _build_command(
        self,
        binary: Path,
        backend_dir: Path | None,
        listen: dict[str, tuple[str, int]],
        tls: ServerTls | None,
    ) -> list[str]:
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--model-control-mode={self.model_control_mode}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--http-address={listen['http'][0]}",
            f"--http-port={listen['http'][1]}",
            f"--grpc-address={listen['grpc'][0]}",
            f"--grpc-port={listen['grpc'][1]}",
            f"--metrics-address={listen['metrics'][0]}",
            f"--metrics-port={listen['metrics'][1]}",
            "--allow-gpu-metrics=false",
            "--metrics-config=summary_latencies=true",  # queue / request time quantiles (the alerts' p99)
            "--log-verbose=0",
            *(tls.tritonserver_args() if tls is not None else ()),
        ]
        if backend_dir is not None:
            cmd.append(f"--backend-directory={backend_dir}")
        if self.model_control_mode == "explicit" and not any(
            a.startswith("--load-model") for a in self.extra_args
        ):
            cmd.append("--load-model=*")
        cmd += self.extra_args
        return cmd

    def _environment(self, bundled_root: Path | None) -> dict[str, str]:
        env = os.environ.copy()
        # The python-backend stub runs the `python3` it finds on PATH: make it this interpreter.
        env["PATH"] = os.pathsep.join(
            [str(Path(sys.executable).parent)] + [p for p in env.get("PATH", "").split(os.pathsep) if p]
        )
        if bundled_root is not None:
            libs = bundled_root.parent.parent / "nvidia_pytriton.libs"
            if libs.is_dir():  # needed by a copied binary; the in-place one has an RPATH to it
                env["LD_LIBRARY_PATH"] = os.pathsep.join(
                    [str(libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
                )
        return env

    def start(self, timeout: float = 120.0) -> TritonServer:
        """Launch the server; return once it is live and every model in the repository is ready.

        Raises ServingError (with the log tail) when the process exits early, a model is
        unavailable, or ``timeout`` seconds pass. Auto-picked ports are re-picked up to twice if
        another process took one in the meantime.
        """
        if self.is_running():
            raise ServingError(f"this server is already running (pid {self.pid})")
        if not self.repository.is_dir():
            raise ServingError(f"model repository {self.repository} does not exist")
        models = _model_names(self.repository)
        if not models:
            raise ServingError(f"model repository {self.repository} holds no model folder")
        binary = self._binary or find_tritonserver()
        bundled_root = bundled_root_of(binary)
        self._check_repository(bundled_root is not None)
        attempts = 3 if 0 in self._requested_ports.values() else 1
        for attempt in range(attempts):
            try:
                self._launch(binary, bundled_root)
                self._wait_ready(models, timeout)
                self._stubs_at_ready = {}
                for _pid, model, _instance in python_stub_processes(self.pid):
                    self._stubs_at_ready[model] = self._stubs_at_ready.get(model, 0) + 1
                # a private /dev/shm goes with the server's last process; the host's keeps files
                self._shm_regions = set()
                if self.private_shm.kind is None:
                    self._shm_regions = {
                        argv[2]
                        for _pid, argv in stub_argvs(self.pid)
                        if len(argv) > 2 and argv[2].startswith(SHM_PREFIX)
                    }
                return self
            except ServingError:
                taken = ports_in_use(self.log_errors())
                auto = {self.ports[k] for k, v in self._requested_ports.items() if v == 0}
                self.stop()
                # retry only when a port we picked ourselves was taken in the meantime
                if not (taken and taken <= auto and attempt + 1 < attempts):
                    raise
            except BaseException:  # interrupted while starting: leave nothing running
                self.stop()
                raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ health of the models
    def stub_processes(self) -> list[tuple[int, str, str]]:
        """(pid, model, instance) of the live python-backend stub processes of this server."""
        return python_stub_processes(self.pid) if self.is_running() else []

    def dead_stubs(self) -> list[str]:
        """Models that have fewer live python-backend stub processes than when the server became
        ready: a stub was killed or crashed (e.g. by the OOM killer).

        Triton 2.51 neither restarts such a stub nor marks its model unready: the server stays
        live and ready, the model stays READY, and every request to it fails with "Stub process
        '<model>_0_0' is not healthy" until the model is loaded again, which model control mode
        ``none`` only does by restarting the server (:meth:`restart`; ``mmtrt serve`` does it by
        itself). Meant for model control mode ``none``, where the set of models never changes.
        """
        if not self._stubs_at_ready or not self.is_running():
            return []
        live: dict[str, int] = {}
        for _pid, model, _instance in self.stub_processes():
            live[model] = live.get(model, 0) + 1
        return sorted(m for m, n in self._stubs_at_ready.items() if live.get(m, 0) < n)

    def restart(self, timeout: float = 120.0, grace: float | None = None) -> TritonServer:
        """Stop the server and start it again on the same ports (also those first picked free),
        so clients reconnect to the same addresses. Raises ServingError like :meth:`start`.

        ``grace``: seconds the stop waits for tritonserver to exit by itself (:meth:`stop`);
        default 20, or 2 when a stub is dead: the dead model can never unload, so tritonserver
        would only wait out its exit time-out (5 s) for it, while the requests in flight on the
        healthy models finish well within 2 s."""
        if grace is None:
            grace = 2.0 if self.dead_stubs() else 20.0
        ports = dict(self.ports)
        self.stop(grace=grace)
        requested, self._requested_ports = self._requested_ports, ports
        try:
            return self.start(timeout)
        finally:
            self._requested_ports = requested

    def _check_repository(self, bundled: bool) -> None:
        """Fail early, with the fix, on what tritonserver would only report in its log."""
        missing = missing_plan_files(self.repository)
        if missing:
            raise ServingError(
                f"model repository {self.repository} lacks TensorRT engine file(s): "
                + ", ".join(str(p.relative_to(self.repository)) for p in missing)
                + "; "
                + BUILD_ENGINES_HINT.format(export="EXPORT_DIR")
            )
        if not bundled:
            return
        foreign = []
        for cfg in sorted(self.repository.glob("*/config.pbtxt")):
            try:
                config = parse_config(cfg.read_text(), source=str(cfg))
            except ServingError:
                continue  # reported by tritonserver itself, and by the offline check
            kind = config.backend or config.platform
            if kind not in ("python", "ensemble"):
                foreign.append(f"{cfg.parent.name} ({kind})")
        if foreign:
            raise ServingError(
                f"model repository {self.repository} has models the bundled tritonserver "
                f"cannot run: {', '.join(foreign)}. The Triton binary of nvidia-pytriton has the "
                "python backend only; serve this (gpu flavour) repository with NVIDIA's Triton "
                "Inference Server container, where `tritonserver` is on PATH, or build a cpu "
                "flavour repository (`mmtrt repo EXPORT_DIR OUT --flavour cpu`)"
            )

    def _launch(self, binary: Path, bundled_root: Path | None) -> None:
        self._workdir = Path(tempfile.mkdtemp(prefix="mmtrt-triton-"))
        if self.guarded:
            listen, tls = self._start_guard(), None
        else:
            for name, port in self._requested_ports.items():
                self.ports[name] = port or _free_port(self.http_host if name == "http" else self.host)
            hosts = {"http": self.http_host, "grpc": self.host, "metrics": self.host}
            listen, tls = {name: (hosts[name], self.ports[name]) for name in hosts}, self.tls
        backend_dir = None
        if bundled_root is not None:
            backend_dir = prepare_backend_dir(bundled_root, self._workdir / "backends")
        command = self._build_command(binary, backend_dir, listen, tls)
        self.command = redact(command)
        with _open_log(self.log_path) as log:
            log.write(("=== mmtrt: " + " ".join(self.command) + "\n").encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(bundled_root),
                cwd=self._workdir,
                start_new_session=True,  # own session and process group
                preexec_fn=self._preexec(),
            )
        _track(self)

    def _start_guard(self) -> dict[str, tuple[str, int]]:
        """Start the guard on this server's ports; the addresses tritonserver then listens on:
        fixed loopback ports inside the guard's private network namespace, or free loopback ports
        where there is none."""
        from .guard import NginxGuard

        kind = self.private_network.kind
        inside = {"http": 8000, "grpc": 8001, "metrics": 8002} if kind else None
        listen = {n: ("127.0.0.1", inside[n] if inside else _free_port("127.0.0.1")) for n in self.ports}
        steps = [private_network_preexec(kind)] if kind else []
        if self.die_with_parent and (death := parent_death_signal()) is not None:
            steps.append(death)

        def preexec():
            for step in steps:
                step()

        self._guard = NginxGuard(
            *(f"127.0.0.1:{listen[n][1]}" for n in ("http", "grpc")),
            self._workdir / "guard",
            self.tls,
            metrics_upstream=f"127.0.0.1:{listen['metrics'][1]}",
            host=self.host,
            http_host=self.http_host,
            ports=self._requested_ports,
            http_tls=False,  # as without the guard: HTTP plaintext (on loopback when there is TLS)
            preexec=preexec if steps else None,
        ).start()
        self.ports = self._guard.ports
        return listen

    def _preexec(self):
        """What the child runs before tritonserver: the guard's network namespace (guarded),
        its private /dev/shm, then the parent-death signal (after: entering a user namespace
        clears it)."""
        steps = []
        joined = self._guard is not None and self.private_network.kind is not None
        if joined:
            steps.append(join_network_preexec(self._guard.pid, self.private_network.kind))
        if self.private_shm.kind is not None:
            steps.append(private_shm_preexec(self.private_shm.kind, joined=joined))
        if self.die_with_parent and (death := parent_death_signal()) is not None:
            steps.append(death)

        def preexec():
            for step in steps:
                step()

        return preexec if steps else None

    def _wait_ready(self, models: Iterable[str], timeout: float) -> None:
        from .client import TritonClient
        from .errors import RequestError

        models = list(models)
        deadline = time.monotonic() + timeout
        client = None
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise self._fail(
                        f"tritonserver exited with code {code} while starting (repository {self.repository})"
                    )
                if time.monotonic() > deadline:
                    raise self._fail(f"tritonserver was not ready with models {models} after {timeout:.0f} s")
                try:
                    if client is None:
                        client = TritonClient(
                            self.http_url, headers=self.headers, timeout_s=5.0, connect_timeout_s=2.0
                        )
                    if client.is_live():
                        pending = [m for m in models if not client.model_ready(m)]
                        # Triton starts its endpoints gRPC, HTTP, then metrics, and exits if one
                        # cannot bind: ready means the metrics page answers too (unless disabled)
                        # and the process is still there.
                        if not pending and self._metrics_answer() and self._proc.poll() is None:
                            return
                        failed = [
                            e
                            for e in client.models()
                            if e.get("name") in pending and e.get("state") == "UNAVAILABLE"
                        ]
                        if failed:
                            why = "; ".join(f"{e['name']}: {e.get('reason', '?')}" for e in failed)
                            raise self._fail(f"model(s) failed to load: {why}")
                except (RequestError, OSError, ConnectionError):
                    pass  # not listening yet
                time.sleep(0.1)
        finally:
            if client is not None:
                client.close()

    def _metrics_answer(self) -> bool:
        if any(a.replace(" ", "") in ("--allow-metrics=false", "--allow-metrics=0") for a in self.extra_args):
            return True
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2.0) as r:
                return b"nv_" in r.read()
        except (OSError, ValueError):
            return False

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the server (it unloads its models and stops their stub processes), then the
        rest of its process group; SIGKILL whatever is left after ``grace`` seconds. Removes the
        shared-memory files of its stubs a crashed or killed server leaves in /dev/shm."""
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is not None:
            pgid = proc.pid  # leader of its own group (start_new_session)
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            deadline = time.monotonic() + max(1.0, grace / 4)
            sig = signal.SIGTERM
            while group_alive(pgid):
                if time.monotonic() > deadline:
                    sig = signal.SIGKILL
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                if proc.poll() is None and sig == signal.SIGKILL:
                    proc.kill()
                time.sleep(0.05)
                proc.poll()  # reap the leader so its pid (= the group id) frees
            proc.wait()
        guard, self._guard = self._guard, None
        if guard is not None:
            guard.stop()
        remove_shm_regions(self._shm_regions)
        self._shm_regions = set()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
