"""`mmtrt dicom-node`: run the Storage SCP that spools accepted radiographs durably."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import click


@click.command("dicom-node")
@click.option(
    "--spool",
    "spool_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Spool folder (incoming/, done/, failed/); created if missing.",
)
@click.option("--ae-title", default="MMTRT", help="This node's AE title.")
@click.option("--host", default="127.0.0.1", help="Address to listen on (loopback by default).")
@click.option("--port", default=11112, type=click.IntRange(1, 65535), help="DICOM port.")
@click.option(
    "--allow-aet",
    "allowed",
    multiple=True,
    help="Calling AE title allowed to associate (repeat); none given: any.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate: TLS is required on the port when given.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM private key of --tls-cert.",
)
@click.option(
    "--tls-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM CA: peers must present a certificate it signed (mutual TLS).",
)
def dicom_node(spool_dir, ae_title, host, port, allowed, tls_cert, tls_key, tls_ca):
    """Receive radiographs by C-STORE into a durable spool (see docs/dicom-node.md)."""
    from mmtrt.node.scp import ScpSettings, TlsFiles, start_scp
    from mmtrt.node.spool import Spool

    if bool(tls_cert) != bool(tls_key) or (tls_ca and not tls_cert):
        raise click.UsageError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
    if len(ae_title) > 16 or not ae_title.strip():
        raise click.BadParameter(f"AE title {ae_title!r}: 1 to 16 characters", param_hint="--ae-title")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tls = TlsFiles(tls_cert, tls_key, tls_ca) if tls_cert else None
    settings = ScpSettings(ae_title, host, port, tuple(allowed), tls)
    server = start_scp(settings, Spool(spool_dir))
    click.echo(f"dicom-node {ae_title} listening on {host}:{port}" + (" (TLS)" if tls else ""))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
