"""The nginx guard of ``deploy/nginx/`` run as a local process in front of a Triton server, on free
loopback ports: what the tests and the oversize benchmark put between clients and Triton.

The server blocks are the shipped ``deploy/nginx/mmtrt-triton.conf`` itself with only its
addresses replaced (upstreams, listen ports, the njs path), so what is tested is what operators
install. Needs nginx and its njs module (Debian: nginx-light libnginx-mod-http-js) and a source
checkout (the ``deploy/`` folder is not part of the installed package).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .server import _free_port

if TYPE_CHECKING:
    from .server import ServerTls

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
    ``grpc_upstream`` ("host:port"), with its files in ``folder``; ``http`` and ``grpc`` are the
    addresses clients use; ``tls``: both listen with TLS (and ask for client certificates signed
    by its CA, when it has one). Start with :meth:`start` or as a context manager."""

    def __init__(self, http_upstream: str, grpc_upstream: str, folder: Path, tls: ServerTls | None = None):
        self.nginx = find_nginx()
        self.folder = Path(folder)
        self.http = f"127.0.0.1:{_free_port('127.0.0.1')}"
        self.grpc = f"127.0.0.1:{_free_port('127.0.0.1')}"
        self.proc: subprocess.Popen | None = None
        ssl = " ssl" if tls is not None else ""
        self._replacements = {
            "js_path": f"js_path {GUARD_DIR}/;",
            "http_upstream": f"server {http_upstream};",
            "grpc_upstream": f"server {grpc_upstream};",
            "http_listen": f"listen {self.http}{ssl};{_tls_lines(tls)}",
            "grpc_listen": f"listen {self.grpc}{ssl} http2;{_tls_lines(tls)}",
        }

    def _write_config(self) -> Path:
        site = (GUARD_DIR / "mmtrt-triton.conf").read_text()
        for key, shipped in _SHIPPED.items():
            if site.count(shipped) != 1:
                raise GuardUnavailable(f"{GUARD_DIR}/mmtrt-triton.conf: expected one `{shipped}`")
            site = site.replace(shipped, self._replacements[key])
        work = self.folder
        work.mkdir(parents=True, exist_ok=True)
        (work / "site.conf").write_text(site)
        temps = "\n".join(
            f"    {name}_temp_path {work / name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
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
        config = self._write_config()
        args = [self.nginx, "-c", str(config), "-p", str(self.folder)]
        check = subprocess.run([*args, "-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise GuardUnavailable(f"nginx -t refused the guard's configuration: {check.stderr.strip()}")
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        for address in (self.http, self.grpc):
            host, port = address.rsplit(":", 1)
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None:
                        raise GuardUnavailable(f"nginx exited: {self.proc.stderr.read()}") from None
                    if time.monotonic() > deadline:
                        self.stop()
                        raise GuardUnavailable(
                            f"nginx did not listen on {address} within {timeout:.0f} s"
                        ) from None
                    time.sleep(0.05)
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
