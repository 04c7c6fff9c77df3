"""`mmtrt dicom-node`: the Storage SCP that spools accepted radiographs durably, and beside it
the worker that sends them to Triton and their results to the destinations."""

from __future__ import annotations

import dataclasses
import logging
import signal
import threading
from pathlib import Path

import click

from mmtrt.cli_options import ServerOptions, allow_option, batch_size_option, server_options
from mmtrt.serving.client import DEFAULT_PORTS


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
@click.option(
    "--store",
    "stores",
    multiple=True,
    metavar="AET@HOST:PORT",
    help="Send the results by C-STORE to this AE (e.g. the PACS: PACS@10.0.0.2:4242), calling "
    "as --ae-title; repeatable.",
)
@click.option(
    "--store-associations",
    default=4,
    show_default=True,
    type=click.IntRange(1, 16),
    help="C-STORE associations the node opens at once to each --store AE (an archive that "
    "writes each instance to disk before answering stores several at once faster).",
)
@click.option(
    "--stow",
    "stows",
    multiple=True,
    metavar="URL",
    help="Send the results with STOW-RS to this DICOMweb root (e.g. http://pacs:8042/dicom-web); "
    "repeatable. At least one --store or --stow is needed.",
)
@server_options(
    f"Triton server address [default: 127.0.0.1:{DEFAULT_PORTS['http']} for http, "
    f"127.0.0.1:{DEFAULT_PORTS['grpc']} for grpc]; repeat it for several servers (fail-over).",
    tls_prefix="triton-tls",
)
@batch_size_option("Images per request (capped at the model's max_batch_size).")
@click.option(
    "--export-manifest",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="manifest.json of the export the servers run: its checkpoint sha256 is recorded in the "
    "results and makes their UIDs (else they say 'unknown').",
)
@allow_option()
def dicom_node(
    spool_dir,
    ae_title,
    host,
    port,
    allowed,
    tls_cert,
    tls_key,
    tls_ca,
    stores,
    store_associations,
    stows,
    server: ServerOptions,
    batch_size,
    export_manifest,
    allow,
):
    """Receive radiographs by C-STORE into a durable spool, send them to the Triton server(s)
    and their results (SEG + SC + SR, or a not-evaluated report for an image the input gate
    refuses) to every --store / --stow destination; an image leaves the spool only once every
    destination acknowledged its results (see docs/dicom-node.md)."""
    from mmtrt.node.destinations import CStoreDestination, StowDestination
    from mmtrt.node.scp import ScpSettings, TlsFiles, start_scp
    from mmtrt.node.spool import Spool
    from mmtrt.node.worker import Worker

    if bool(tls_cert) != bool(tls_key) or (tls_ca and not tls_cert):
        raise click.UsageError("--tls-cert and --tls-key go together (and --tls-ca needs them)")
    if len(ae_title) > 16 or not ae_title.strip():
        raise click.BadParameter(f"AE title {ae_title!r}: 1 to 16 characters", param_hint="--ae-title")
    if not stores and not stows:
        raise click.UsageError(
            "no destination for the results: give --store AET@HOST:PORT and/or --stow URL "
            "(images would be received and never answered)"
        )
    destinations = []
    for text in stores:
        try:
            destination = CStoreDestination.parse(text, calling_ae=ae_title)
            destinations.append(dataclasses.replace(destination, associations=store_associations))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--store") from None
    destinations += [StowDestination(url) for url in stows]
    checkpoint_sha256 = None
    if export_manifest is not None:
        from mmtrt.dicom_results import checkpoint_sha256_from_manifest
        from mmtrt.export.manifest import ExportError

        try:
            checkpoint_sha256 = checkpoint_sha256_from_manifest(export_manifest)
        except (OSError, ExportError) as e:
            raise click.ClickException(f"--export-manifest {export_manifest}: unreadable ({e})") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # its INFO: ~30 lines per result made
    log = logging.getLogger("mmtrt.node")
    spool = Spool(spool_dir)
    worker = Worker(
        spool,
        lambda: server.servers(lambda line: log.info("%s", line)),
        destinations,
        batch_size=batch_size,
        checkpoint_sha256=checkpoint_sha256,
        relaxed=allow,
    )
    tls = TlsFiles(tls_cert, tls_key, tls_ca) if tls_cert else None
    settings = ScpSettings(ae_title, host, port, tuple(allowed), tls)
    scp = start_scp(settings, spool)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()
        worker.interrupt()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=worker.run, args=(stop,), name="mmtrt-node-worker", daemon=True)
    thread.start()
    click.echo(
        f"dicom-node {ae_title} listening on {host}:{port}"
        + (" (TLS)" if tls else "")
        + "; results to "
        + ", ".join(map(str, destinations))
    )
    try:
        stop.wait()
    finally:
        stop.set()
        scp.shutdown()  # no new images; the worker finishes its pass (what is unsent stays spooled)
        thread.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
        click.echo(f"dicom-node {ae_title} stopped; {len(spool.pending())} image(s) left in {spool.incoming}")
