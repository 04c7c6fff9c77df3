"""TLS settings of a served endpoint: one object that checks its PEM files before anything
starts and turns into tritonserver's own options (and the nginx guard's)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerTls:
    """TLS of the gRPC endpoint, with tritonserver's own options: the server's certificate and
    key (PEM) and, for mutual TLS, the CA whose client certificates it accepts (None: any client
    that trusts the server). Triton's HTTP endpoint has no TLS: a server with TLS binds HTTP to
    loopback only, for a TLS proxy on the same host (deploy/nginx)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None

    def __post_init__(self):
        for what, path in (("certificate", self.cert_file), ("key", self.key_file), ("CA", self.ca_file)):
            if path is None:
                continue
            try:
                mode = os.stat(path).st_mode
                with open(path, "rb") as fh:
                    pem = fh.read(1 << 20)
            except OSError as e:
                raise ValueError(f"TLS {what} file {path}: {e.strerror}") from None
            if b"-----BEGIN " not in pem:
                raise ValueError(f"TLS {what} file {path} holds no PEM block")
            if what == "key" and mode & 0o077:
                raise ValueError(
                    f"TLS key file {path} is readable by other users (mode {mode & 0o777:04o}): "
                    f"`chmod 600 {path}`"
                )

    def tritonserver_args(self) -> list[str]:
        args = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(self.cert_file).resolve()}",
            f"--grpc-server-key={Path(self.key_file).resolve()}",
        ]
        if self.ca_file is not None:
            args += [f"--grpc-root-cert={Path(self.ca_file).resolve()}", "--grpc-use-ssl-mutual=true"]
        return args
