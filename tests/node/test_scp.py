"""The node's Storage SCP with real pynetdicom associations: durable spool, admission statuses,
calling-AE allow-list, TLS (self-signed CA made with openssl)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification

from mmtrt.node import admission
from mmtrt.node.scp import ScpSettings, TlsFiles, start_scp
from mmtrt.node.spool import Spool
from mmtrt.serving.server import _free_port
from tests.data.dicom_fixtures import pydicom_file, xray_dataset, xray_pixels


def _dx(seed: int = 0, **attributes):
    stored = xray_pixels(seed, (64, 48)).astype(np.uint16) * 16
    return xray_dataset(stored, **attributes)


def _scu(calling="MODALITY"):
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    return ae


def _associate(port, calling="MODALITY", tls=None):
    return _scu(calling).associate("127.0.0.1", port, ae_title="MMTRT", tls_args=tls)


@pytest.fixture()
def node(tmp_path):
    spool = Spool(tmp_path / "spool")
    settings = ScpSettings(port=_free_port("127.0.0.1"), allowed_calling_aets=("MODALITY",))
    server = start_scp(settings, spool)
    yield settings, spool
    server.shutdown()


def test_accepted_and_refused_instances_on_one_association(node):
    settings, spool = node
    first, second = _dx(0), _dx(1)
    multi = _dx(2)
    multi.NumberOfFrames = 2
    multi.PixelData = multi.PixelData * 2
    truncated = _dx(3)
    truncated.PixelData = truncated.PixelData[: len(truncated.PixelData) // 2]
    sent = [
        (first, admission.SUCCESS),
        (pydicom.dcmread(pydicom_file("reportsi.dcm")), admission.NOT_AN_IMAGE),
        (pydicom.dcmread(pydicom_file("SC_rgb_small_odd.dcm")), admission.COLOUR),
        (multi, admission.MULTI_FRAME),
        (truncated, admission.UNDECODABLE),
        (second, admission.SUCCESS),
    ]
    assoc = _associate(settings.port)
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds) for ds, _ in sent]
    finally:
        assoc.release()
    assert [s.Status for s in statuses] == [want for _, want in sent]
    for status, (_, want) in zip(statuses, sent):
        if want != admission.SUCCESS:
            assert status.ErrorComment  # the reason travels with the status
    stored = {p.name for p in spool.pending()}
    assert stored == {f"{first.SOPInstanceUID}.dcm", f"{second.SOPInstanceUID}.dcm"}
    back = pydicom.dcmread(spool.incoming / f"{first.SOPInstanceUID}.dcm")
    assert back.SOPInstanceUID == first.SOPInstanceUID
    assert back.PixelData == first.PixelData
    assert (spool.incoming / f"{first.SOPInstanceUID}.dcm").stat().st_mode & 0o777 == 0o600
    assert not [p for p in spool.incoming.iterdir() if p.name.startswith(".")]  # no temporaries


def test_mmtrt_s_own_results_are_answered_and_not_spooled(node):
    """A PACS forwarding a study again sends mmtrt's SEG and SR back: success, nothing spooled
    (nothing in them to evaluate); the same SOP classes from another maker are judged as usual."""
    from mmtrt.dicom_results import ResultInfo, make_not_evaluated_report, make_segmentation

    settings, spool = node
    source = _dx(5)
    seg = make_segmentation(source, np.ones((64, 48), dtype=bool), ResultInfo())
    report = make_not_evaluated_report(source, ResultInfo(), "a lateral view")
    foreign = make_not_evaluated_report(source, ResultInfo(), "x")
    foreign.Manufacturer = "another"
    ae = AE(ae_title="MODALITY")
    for ds in (seg, report):
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", settings.port, ae_title="MMTRT")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in (seg, report, foreign)]
    finally:
        assoc.release()
    assert statuses == [admission.SUCCESS, admission.SUCCESS, admission.NOT_AN_IMAGE]
    assert spool.pending() == []


def test_unknown_calling_ae_is_rejected_at_association(node):
    settings, spool = node
    assoc = _associate(settings.port, calling="STRANGER")
    assert assoc.is_rejected
    assert spool.pending() == []


def test_spool_moves_to_done_and_failed_with_a_reason(tmp_path):
    spool = Spool(tmp_path)
    a = spool.store(b"first", "1.2.3")
    b = spool.store(b"second", "../../etc/passwd")  # a hostile UID is not a path
    assert b.parent == spool.incoming and b.name.startswith("sha256-")
    assert spool.pending() == [a, b]
    spool.finish(a)
    spool.fail(b, "destination refused: 0xA700")
    assert spool.pending() == []
    assert (spool.done / "1.2.3.dcm").read_bytes() == b"first"
    assert "0xA700" in (spool.failed / f"{b.stem}.reason.txt").read_text()


# ---------------------------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------------------------


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


def _signed(folder: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=folder,
    )
    (folder / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.pem",
        cwd=folder,
    )
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "hospital-ca")
    other_ca = _ca(folder, "other-ca")
    return {
        "ca": ca,
        "node": _signed(folder, ca, "node"),
        "modality": _signed(folder, ca, "modality"),
        "intruder": _signed(folder, other_ca, "intruder"),
    }


@pytest.fixture()
def tls_node(tmp_path, pki):
    spool = Spool(tmp_path / "spool")
    tls = TlsFiles(pki["node"][0], pki["node"][1], pki["ca"][0])
    settings = ScpSettings(port=_free_port("127.0.0.1"), tls=tls, network_timeout_s=3)
    server = start_scp(settings, spool)
    yield settings, spool
    server.shutdown()


def _client_context(pki, who: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"][0]))
    context.load_cert_chain(str(pki[who][0]), str(pki[who][1]))
    return context


def test_tls_accepts_a_peer_of_the_ca(tls_node, pki):
    settings, spool = tls_node
    ds = _dx(5)
    assoc = _associate(settings.port, tls=(_client_context(pki, "modality"), "localhost"))
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == admission.SUCCESS
    assoc.release()
    assert [p.name for p in spool.pending()] == [f"{ds.SOPInstanceUID}.dcm"]


def test_tls_refuses_plaintext_and_a_wrong_ca(tls_node, pki):
    settings, spool = tls_node
    assert not _associate(settings.port).is_established
    wrong = _associate(settings.port, tls=(_client_context(pki, "intruder"), "localhost"))
    assert not wrong.is_established
    assert spool.pending() == []


def test_a_silent_tls_peer_does_not_block_others(tls_node, pki):
    settings, spool = tls_node

    def send_one():
        assoc = _associate(settings.port, tls=(_client_context(pki, "modality"), "localhost"))
        assert assoc.is_established
        status = assoc.send_c_store(_dx(6)).Status
        assoc.release()
        return status

    silent = socket.create_connection(("127.0.0.1", settings.port))  # connects, never speaks
    pool = ThreadPoolExecutor(1)
    try:
        start = time.monotonic()
        # a node blocked by the silent peer would hang here: bounded, so the test fails instead
        assert pool.submit(send_one).result(timeout=10) == admission.SUCCESS
        assert time.monotonic() - start < 2.5  # under the node's 3 s handshake timeout
    finally:
        silent.close()
        pool.shutdown(wait=False)
