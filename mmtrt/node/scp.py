"""The node's Storage SCP (pynetdicom): AE title, address (loopback by default), a calling-AE
allow-list enforced at association, optional TLS, and each C-STORE answered only after the
instance is admitted and durably spooled."""

from __future__ import annotations

import io
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from mmtrt.node.admission import OUT_OF_RESOURCES, admit
from mmtrt.node.spool import Spool

log = logging.getLogger("mmtrt.node")


@dataclass(frozen=True)
class TlsFiles:
    """The node's certificate and key (PEM); with ``ca``, peers must present a certificate that
    this CA signed (mutual TLS)."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str = "MMTRT"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any calling AE
    tls: TlsFiles | None = None
    network_timeout_s: float = 30.0  # also bounds a silent peer's TLS handshake
    max_pdu: int = 1 << 20


class _HandshakeInAssociationThread(ssl.SSLContext):
    """pynetdicom wraps accepted sockets in its single accept loop; a handshake there lets one
    silent peer stall every other. Deferring it makes it happen on the first read, in the
    association's own thread, bounded by the network timeout."""

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, **kwargs):
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=False, **kwargs)


def server_tls_context(tls: TlsFiles) -> ssl.SSLContext:
    context = _HandshakeInAssociationThread(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert), str(tls.key))
    if tls.ca is not None:
        context.load_verify_locations(cafile=str(tls.ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _encoded(event) -> bytes:
    """The received instance as a DICOM file (meta + data set as it came, no re-encoding)."""
    buffer = io.BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    from pydicom.filewriter import write_file_meta_info

    write_file_meta_info(buffer, event.file_meta, enforce_standard=True)
    buffer.write(event.request.DataSet.getvalue())
    return buffer.getvalue()


def make_store_handler(spool: Spool):
    def handle_store(event):
        data = _encoded(event)
        uid = str(event.request.AffectedSOPInstanceUID or "")
        admission = admit(data, name=f"instance {uid or '?'}")
        if not admission.accepted:
            log.info("refused %s: 0x%04X %s", uid, admission.status, admission.reason)
            return _status(admission.status, admission.reason)
        if not admission.spool:
            log.info("not spooled %s: %s", uid, admission.reason)
            return 0x0000
        try:
            spool.store(data, uid)
        except OSError as e:
            log.error("spool write failed for %s: %s", uid, e)
            return _status(OUT_OF_RESOURCES, f"spool write failed: {e.strerror or e}")
        log.info("stored %s", uid)
        return 0x0000

    return handle_store


def _status(code: int, comment: str):
    from pydicom import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


def start_scp(settings: ScpSettings, spool: Spool):
    """Start the SCP in the background; returns the pynetdicom server (``.shutdown()`` stops it)."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

    ae = AE(ae_title=settings.ae_title)
    # every storage SOP class is negotiated, so a non-image instance gets a C-STORE status
    # saying why instead of an association-level rejection of the whole transfer
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.network_timeout = settings.network_timeout_s
    ae.acse_timeout = settings.network_timeout_s
    ae.dimse_timeout = settings.network_timeout_s
    ae.maximum_pdu_size = settings.max_pdu
    context = server_tls_context(settings.tls) if settings.tls else None
    return ae.start_server(
        (settings.host, settings.port),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, make_store_handler(spool))],
        ssl_context=context,
    )
