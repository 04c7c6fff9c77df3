"""The nginx guard of ``deploy/nginx/`` run as a local process in front of a Triton server: what
`mmtrt serve` puts between clients and Triton (see :class:`~mmtrt.serving.server.TritonServer`'s
``guarded``), and what the tests and the oversize benchmark put in front of a server.

The server blocks are the shipped ``deploy/nginx/mmtrt-triton.conf`` itself with only its
addresses replaced (upstreams, listen addresses, the njs path), so what is tested is what operators
install; a local run adds one block that passes Triton's metrics page on. The listening sockets are
bound here and handed to nginx (nginx's own ``NGINX`` variable for inherited sockets): a port is
known before nginx starts, and nginx can run in a private network namespace
(:func:`~mmtrt.serving.isolation.private_network_preexec`) where Triton, started into the same
namespace, listens where no other process can connect. Needs nginx and its njs module (Debian:
nginx-light libnginx-mod-http-js) and a source checkout (``deploy/`` is not part of the installed
package).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tls import ServerTls

__all__ = ["GUARD_DIR", "NJS_MODULE", "GuardUnavailable", "NginxGuard", "find_nginx"]

GUARD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
# the addresses of the shipped configuration that a local run replaces
_SHIPPED = {
    "js_path": "js_path /etc/nginx/njs/;",
    "http_upstream": "server 127.0.0.1:8000;",
    "grpc_upstream": "server 127.0.0.1:8001;",
    "http_listen": "listen 127.0.0.1:8080;",
    "grpc_listen": "listen 127.0.0.1:8081 http2;",
}


def _tls_lines(tls: ServerTls | None) -> str:
    """The directives the shipped configuration's comments show for TLS (and mutual TLS)."""
    if tls is None:
        return ""
    lines = [
        f"ssl_certificate {Path(tls.cert_file).resolve()};",
        f"ssl_certificate_key {Path(tls.key_file).resolve()};",
        "ssl_protocols TLSv1.2 TLSv1.3;",
    ]
    if tls.ca_file is not None:
        lines += [f"ssl_client_certificate {Path(tls.ca_file).resolve()};", "ssl_verify_client on;"]
    return "".join(f"\n    {line}" for line in lines)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(511)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GuardUnavailable(RuntimeError):
    """nginx, its njs module or the shipped configuration is missing; the message says which."""


def find_nginx() -> str:
    """The nginx binary, or GuardUnavailable naming what to install."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        raise GuardUnavailable(
            "nginx is not installed (apt-get install nginx-light; scripts/setup.sh does it)"
        )
    if not NJS_MODULE.exists():
        raise GuardUnavailable(
            f"the njs module {NJS_MODULE} is missing (apt-get install libnginx-mod-http-js)"
        )
    if not (GUARD_DIR / "mmtrt-triton.conf").exists():
        raise GuardUnavailable(
            f"{GUARD_DIR}/mmtrt-triton.conf not found: run from a source checkout of mmtrt"
        )
    return nginx


class NginxGuard:
    """nginx running the shipped guard in front of Triton's ``http_upstream`` and
    ``grpc_upstream`` ("host:port"; ``metrics_upstream``: its metrics page passed on too), with its
    files in ``folder``. It listens on ``host`` (HTTP on ``http_host``, default ``host``) at
    ``ports`` ("http", "grpc", "metrics"; 0 or missing: a free port); :attr:`http`, :attr:`grpc`
    and :attr:`metrics` are the addresses clients use once started. ``tls``: the gRPC listener
    (and the HTTP one, unless ``http_tls`` is False) with TLS, asking for client certificates
    signed by its CA when it has one. ``preexec``: what the nginx process runs before it starts
    (e.g. entering a private network namespace). Start with :meth:`start` or as a context manager."""

    def __init__(
        self,
        http_upstream: str,
        grpc_upstream: str,
        folder: Path,
        tls: ServerTls | None = None,
        *,
        metrics_upstream: str | None = None,
        host: str = "127.0.0.1",
        http_host: str | None = None,
        ports: Mapping[str, int] | None = None,
        http_tls: bool = True,
        preexec: Callable[[], None] | None = None,
    ):
        self.nginx = find_nginx()
        self.folder = Path(folder)
        self.upstreams = {"http": http_upstream, "grpc": grpc_upstream, "metrics": metrics_upstream}
        self.hosts = {"http": http_host or host, "grpc": host, "metrics": host}
        self.requested_ports = {name: int((ports or {}).get(name, 0)) for name in self.hosts}
        self.tls, self.http_tls, self.preexec = tls, http_tls, preexec
        self.http = self.grpc = self.metrics = ""
        self.proc: subprocess.Popen | None = None

    @property
    def ports(self) -> dict[str, int]:
        """The ports it listens on (once started)."""
        return {
            name: int(address.rsplit(":", 1)[1])
            for name, address in (("http", self.http), ("grpc", self.grpc), ("metrics", self.metrics))
            if address
        }

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> Path:
        tls = self.tls
        http_tls = tls if self.http_tls else None
        replacements = {
            "js_path": f"js_path {GUARD_DIR}/;",
            "http_upstream": f"server {self.upstreams['http']};",
            "grpc_upstream": f"server {self.upstreams['grpc']};",
            "http_listen": f"listen {self.http}{' ssl' if http_tls else ''};{_tls_lines(http_tls)}",
            "grpc_listen": f"listen {self.grpc}{' ssl' if tls else ''} http2;{_tls_lines(tls)}",
        }
        site = (GUARD_DIR / "mmtrt-triton.conf").read_text()
        for key, shipped in _SHIPPED.items():
            if site.count(shipped) != 1:
                raise GuardUnavailable(f"{GUARD_DIR}/mmtrt-triton.conf: expected one `{shipped}`")
            site = site.replace(shipped, replacements[key])
        if self.metrics:  # Prometheus scrapes the page as from Triton itself
            site += f"""
server {{
    listen {self.metrics};
    location = /metrics {{
        limit_except GET {{ deny all; }}
        proxy_pass http://{self.upstreams["metrics"]};
    }}
    location / {{
        return 404;
    }}
}}
"""
        work = self.folder
        work.mkdir(parents=True, exist_ok=True)
        (work / "site.conf").write_text(site)
        temps = "\n".join(
            f"    {name}_temp_path {work / name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # root (only where it is root outside a user namespace too) keeps its workers as root: they
        # read this folder, which is the caller's and private
        (work / "nginx.conf").write_text(
            f"""load_module {NJS_MODULE};
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
daemon off;
pid {work / "nginx.pid"};
error_log {work / "error.log"} info;
events {{ worker_connections 256; }}
http {{
    access_log {work / "access.log"};
{temps}
    include {work / "site.conf"};
}}
"""
        )
        return work / "nginx.conf"

    def start(self, timeout: float = 20.0) -> NginxGuard:
        names = [n for n in ("http", "grpc", "metrics") if self.upstreams[n] is not None]
        sockets = [_listening_socket(self.hosts[n], self.requested_ports[n]) for n in names]
        try:
            for name, sock in zip(names, sockets):
                setattr(self, name, _address(sock))
            config = self._write_config()
            (self.folder / "nginx.pid").unlink(missing_ok=True)
            args = [self.nginx, "-c", str(config), "-p", str(self.folder)]
            check = subprocess.run([*args, "-t"], capture_output=True, text=True)
            if check.returncode != 0:
                raise GuardUnavailable(f"nginx -t refused the guard's configuration: {check.stderr.strip()}")
            fds = [sock.fileno() for sock in sockets]
            self.proc = subprocess.Popen(
                args,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=fds,
                env={**os.environ, "NGINX": "".join(f"{fd};" for fd in fds)},  # inherited sockets
                preexec_fn=self.preexec,
            )
        finally:
            for sock in sockets:  # nginx holds them now
                sock.close()
        deadline = time.monotonic() + timeout
        # nginx writes its pid file once its sockets are set up; connections queue until then
        while not (self.folder / "nginx.pid").exists():
            if self.proc.poll() is not None:
                raise GuardUnavailable(f"nginx exited: {self.proc.stderr.read().strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise GuardUnavailable(f"nginx did not start within {timeout:.0f} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> NginxGuard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
