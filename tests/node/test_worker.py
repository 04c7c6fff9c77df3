"""The node's worker end to end, with real components only: a real Orthanc sends a study to the
node (REST /modalities/<name>/store), the worker infers through the real Triton server and
C-STOREs the results back into the same study; a destination that is down keeps the image
spooled until it is back; a destination that refuses the results fails the image with the
reason; `mmtrt dicom-node` runs the SCP and the worker together and stops on SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from helpers import Orthanc, dicom_conformance, needs_server
from pydicom.uid import (
    ComprehensiveSRStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt

from mmtrt.cli import main
from mmtrt.dicom_results import NOT_EVALUATED_SERIES_NUMBER, SR_SERIES_NUMBER
from mmtrt.node.destinations import CStoreDestination, DeliveryError, StowDestination
from mmtrt.node.scp import ScpSettings, start_scp
from mmtrt.node.spool import Spool
from mmtrt.node.worker import Worker
from mmtrt.serving.client import Backoff, Servers
from mmtrt.serving.server import _free_port
from tests.data.dicom_fixtures import xray_dataset, xray_pixels

FAST = Backoff(0.2, 1.0)


def _radiograph(seed: int, **attributes):
    """A 256 x 256 12-bit DX: small, so that each test stays fast."""
    stored = np.round(xray_pixels(seed, (256, 256)) / 255 * 4095).astype(np.uint16)
    return xray_dataset(stored, **attributes)


def _bytes(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO

    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _wait(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.1)


def _triton(server):
    return lambda: Servers([server.http_url])


class _Worker:
    """A :class:`Worker` running in a thread, as `mmtrt dicom-node` runs it."""

    def __init__(self, spool: Spool, servers, destinations, **options):
        self.worker = Worker(spool, servers, destinations, poll_s=0.2, **options)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.worker.interrupt()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


class _Catcher:
    """A pynetdicom Storage SCP that answers every C-STORE with ``status`` (or ``status(data set)``)
    and keeps what it got and the associations it came over."""

    def __init__(self, port: int, status=0x0000):
        self.received: list[pydicom.Dataset] = []
        self.associations: set[int] = set()

        def on_store(event):
            self.received.append(event.dataset)
            self.associations.add(id(event.assoc))
            return status(event.dataset) if callable(status) else status

        ae = AE(ae_title="CATCHER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )

    def close(self) -> None:
        self.server.shutdown()


def _instances(pacs: Orthanc, study_id: str, folder: Path) -> dict[str, pydicom.Dataset]:
    """Every instance of the study in Orthanc, downloaded: SOP Instance UID -> data set."""
    import urllib.request

    folder.mkdir(exist_ok=True)
    found = {}
    for item in pacs.get(f"/studies/{study_id}/instances"):
        path = folder / f"{item['ID']}.dcm"
        with urllib.request.urlopen(f"{pacs.rest}/instances/{item['ID']}/file", timeout=10) as r:
            path.write_bytes(r.read())
        ds = pydicom.dcmread(path)
        ds.filename = str(path)
        found[ds.SOPInstanceUID] = ds
    return found


def _comment(sr) -> str:
    return next(
        str(item.TextValue)
        for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    )


@needs_server
def test_a_study_from_orthanc_comes_back_with_its_results(server, tmp_path):
    """Orthanc -> node -> Triton -> Orthanc: the PA gets SEG + SC + SR in its study, the lateral
    only a not-evaluated report saying why; all clean for dciodvfy, seen through REST and
    DICOMweb; the same study sent again adds nothing (the results' UIDs are the same)."""
    node_port = _free_port("127.0.0.1")
    (tmp_path / "pacs").mkdir()
    pacs = Orthanc(tmp_path / "pacs", modalities={"mmtrt": ("MMTRT", "127.0.0.1", node_port)})
    (tmp_path / "archive").mkdir()
    archive = Orthanc(tmp_path / "archive")  # a second destination, by STOW-RS
    spool = Spool(tmp_path / "spool")
    scp = start_scp(ScpSettings(port=node_port, allowed_calling_aets=(pacs.aet,)), spool)
    destinations = [
        CStoreDestination("127.0.0.1", pacs.dicom_port, pacs.aet),
        StowDestination(archive.dicomweb),
    ]
    worker = _Worker(spool, _triton(server), destinations)
    try:
        study, series = generate_uid(), generate_uid()
        pa = _radiograph(41, StudyInstanceUID=study, SeriesInstanceUID=series)
        lateral = _radiograph(
            42, StudyInstanceUID=study, SeriesInstanceUID=series, ViewPosition="LL", InstanceNumber=2
        )
        study_id = None
        for ds in (pa, lateral):
            study_id = pacs.post("/instances", _bytes(ds))["ParentStudy"]
        order = json.dumps({"Resources": [study_id], "Synchronous": True}).encode()
        assert pacs.post("/modalities/mmtrt/store", order, "application/json")["FailedInstancesCount"] == 0
        sources = {f"{pa.SOPInstanceUID}.dcm", f"{lateral.SOPInstanceUID}.dcm"}
        _wait(lambda: {p.name for p in spool.done.iterdir()} == sources, 90, "both images done")
        assert spool.pending() == [] and list(spool.failed.iterdir()) == []

        stored = _instances(pacs, study_id, tmp_path / "back")
        results = {
            uid: ds for uid, ds in stored.items() if uid not in (pa.SOPInstanceUID, lateral.SOPInstanceUID)
        }
        by_class = {}
        for ds in results.values():
            by_class.setdefault(ds.SOPClassUID, []).append(ds)
            assert ds.StudyInstanceUID == study and ds.PatientID == pa.PatientID
        assert sorted(by_class) == sorted(
            [SegmentationStorage, SecondaryCaptureImageStorage, ComprehensiveSRStorage]
        )
        (seg,), (sc,) = by_class[SegmentationStorage], by_class[SecondaryCaptureImageStorage]
        # the SEG and the SC are the PA's; the lateral got neither
        assert (
            seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            == pa.SOPInstanceUID
        )
        assert seg.Rows == pa.Rows and seg.Columns == pa.Columns
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pa.SOPInstanceUID
        reports = {int(ds.SeriesNumber): ds for ds in by_class[ComprehensiveSRStorage]}
        assert sorted(reports) == [SR_SERIES_NUMBER, NOT_EVALUATED_SERIES_NUMBER]

        def evidence(sr):
            return {
                ref.ReferencedSOPInstanceUID
                for item in sr.CurrentRequestedProcedureEvidenceSequence
                for s in item.ReferencedSeriesSequence
                for ref in s.ReferencedSOPSequence
            }

        assert evidence(reports[SR_SERIES_NUMBER]) == {pa.SOPInstanceUID, seg.SOPInstanceUID}
        refused = reports[NOT_EVALUATED_SERIES_NUMBER]
        assert evidence(refused) == {lateral.SOPInstanceUID}
        assert "Not evaluated" in _comment(refused) and "View Position (0018,5101) is 'LL'" in _comment(
            refused
        )
        # through DICOMweb too
        from dicomweb_client.api import DICOMwebClient

        found = {
            i["00080018"]["Value"][0]: i["00080016"]["Value"][0]
            for i in DICOMwebClient(pacs.dicomweb).search_for_instances(study)
        }
        assert found == {uid: ds.SOPClassUID for uid, ds in stored.items()}
        in_archive = DICOMwebClient(archive.dicomweb).search_for_instances(study)
        assert {i["00080018"]["Value"][0] for i in in_archive} == set(results)  # the results only
        assert list(worker.worker.results_folder().iterdir()) == []  # nothing left of the results
        dicom_conformance(*sorted(Path(ds.filename) for ds in results.values()))

        # sent again: processed again, stored again under the same UIDs: nothing added
        assert pacs.post("/modalities/mmtrt/store", order, "application/json")["FailedInstancesCount"] == 0
        _wait(lambda: spool.pending() == [], 90, "the resent images done")
        assert set(_instances(pacs, study_id, tmp_path / "again")) == set(stored)
        # the study held the results too: answered, but not spooled as images to evaluate
        assert {p.name for p in spool.done.iterdir()} == sources and list(spool.failed.iterdir()) == []
    finally:
        worker.close()
        scp.shutdown()
        pacs.stop()
        archive.stop()


@needs_server
def test_a_destination_that_is_down_gets_the_results_once_back(server, tmp_path, caplog):
    """Two C-STORE destinations, one where nothing listens yet: the image stays in incoming/
    (one log line per retry), is inferred once, and is finished once the destination listens;
    the destination that acknowledged at once is not sent the results again."""
    caplog.set_level(logging.INFO, logger="mmtrt.node")
    port = _free_port("127.0.0.1")
    spool = Spool(tmp_path / "spool")
    pa = _radiograph(43)
    spool.store(_bytes(pa), pa.SOPInstanceUID)
    early = _Catcher(_free_port("127.0.0.1"))
    destinations = [
        CStoreDestination("127.0.0.1", early.server.server_address[1], "CATCHER"),
        CStoreDestination("127.0.0.1", port, "CATCHER"),
    ]
    worker = _Worker(spool, _triton(server), destinations, backoff=FAST)
    catcher = None
    try:
        _wait(lambda: caplog.text.count("retrying 1 image(s)") >= 3, 60, "three retries")
        assert [p.name for p in spool.pending()] == [f"{pa.SOPInstanceUID}.dcm"]
        assert f"C-STORE CATCHER@127.0.0.1:{port}: association" in caplog.text
        assert len(early.received) == 3  # acknowledged once, not sent again on each retry
        catcher = _Catcher(port)
        _wait(lambda: spool.pending() == [], 30, "the image done once the destination is back")
        assert (spool.done / f"{pa.SOPInstanceUID}.dcm").exists()
        assert sorted(ds.SOPClassUID for ds in catcher.received) == sorted(
            [SegmentationStorage, SecondaryCaptureImageStorage, ComprehensiveSRStorage]
        )
        assert len(early.received) == 3
        assert worker.worker._passes == 1  # inferred once: the retries only sent the results
    finally:
        worker.close()
        early.close()
        if catcher is not None:
            catcher.close()


@needs_server
def test_no_triton_server_keeps_the_images_until_one_answers(server, tmp_path, caplog):
    """Triton unreachable: the image stays in incoming/, retried with one log line each time;
    once a server answers (the dead one first in --url order: fail-over) it is done."""
    caplog.set_level(logging.INFO, logger="mmtrt.node")
    dead = f"127.0.0.1:{_free_port('127.0.0.1')}"
    up = threading.Event()

    def servers():
        return Servers([dead, server.http_url] if up.is_set() else [dead], retries=0)

    spool = Spool(tmp_path / "spool")
    pa = _radiograph(47)
    spool.store(_bytes(pa), pa.SOPInstanceUID)
    catcher = _Catcher(_free_port("127.0.0.1"))
    destination = CStoreDestination("127.0.0.1", catcher.server.server_address[1], "CATCHER")
    worker = _Worker(spool, servers, [destination], backoff=FAST)
    try:
        _wait(lambda: caplog.text.count("retrying 1 image(s)") >= 2, 60, "two retries")
        assert f"cannot reach a ready Triton server at {dead}" in caplog.text
        assert [p.name for p in spool.pending()] == [f"{pa.SOPInstanceUID}.dcm"] and catcher.received == []
        up.set()
        _wait(lambda: spool.pending() == [], 60, "the image done once a server answers")
        assert len(catcher.received) == 3 and list(spool.failed.iterdir()) == []
    finally:
        worker.close()
        catcher.close()


@needs_server
def test_a_destination_that_does_not_answer_is_tried_once_a_pass(server, tmp_path):
    """An archive that accepts the connection and never answers (a hung PACS): the first batch's
    association times out, the pass's later batches are not sent there (each would wait for the
    time-out again), and every image waits for the next pass, its results kept."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connections.append(silent.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    spool = Spool(tmp_path / "spool")
    for seed in (51, 52, 53):
        ds = _radiograph(seed)
        spool.store(_bytes(ds), ds.SOPInstanceUID)
    destination = CStoreDestination("127.0.0.1", silent.getsockname()[1], "HUNG", timeout_s=1.0)
    worker = Worker(spool, _triton(server), [destination], batch_size=1)
    try:
        report = worker.run_once()
        assert len(connections) == 1  # three batches, one try
        assert sorted(report.waiting) == sorted(p.name for p in spool.pending()) and len(report.waiting) == 3
        assert all("association" in why for why in report.waiting.values()), report.waiting
        assert sorted(report.inferred) == sorted(report.waiting)  # made once, kept for the next pass
    finally:
        worker.close()
        silent.close()
        for c in connections:
            c.close()


def test_store_destinations_are_parsed():
    assert CStoreDestination.parse("PACS@10.0.0.2:4242", "NODE") == CStoreDestination(
        "10.0.0.2", 4242, "PACS", "NODE"
    )
    assert CStoreDestination.parse("PACS@[::1]:104").host == "::1"
    for bad in ("PACS@host", "@host:104", "PACS@host:0", "A234567890123456X@h:104", "PACS@h:99999"):
        with pytest.raises(ValueError, match="is not AET@HOST:PORT"):
            CStoreDestination.parse(bad)


@needs_server
def test_permanent_failures_go_to_failed_with_the_reason(server, tmp_path):
    """A spooled file that cannot be decoded, and results a destination refuses for good (0xA900):
    both in failed/ with the reason; an unreachable DICOMweb root is only transient."""
    spool = Spool(tmp_path / "spool")
    broken = _radiograph(44)
    broken.PixelData = broken.PixelData[:1000]
    spool.store(_bytes(broken), broken.SOPInstanceUID)
    pa = _radiograph(45)
    spool.store(_bytes(pa), pa.SOPInstanceUID)
    refusing = _Catcher(_free_port("127.0.0.1"), status=0xA900)
    worker = _Worker(
        spool, _triton(server), [CStoreDestination("127.0.0.1", refusing.server.server_address[1], "CATCHER")]
    )
    try:
        _wait(lambda: len(list(spool.failed.glob("*.dcm"))) == 2, 60, "both images failed")
        reasons = {p.name: p.read_text() for p in spool.failed.glob("*.reason.txt")}
        assert "pixel" in reasons[f"{broken.SOPInstanceUID}.reason.txt"].lower()
        assert "refused with status 0xA900" in reasons[f"{pa.SOPInstanceUID}.reason.txt"]
        assert spool.pending() == []
        folder = worker.worker.results_folder()
        _wait(lambda: list(folder.iterdir()) == [], 10, "nothing kept of them")
    finally:
        worker.close()
        refusing.close()
    stow = StowDestination(f"http://127.0.0.1:{_free_port('127.0.0.1')}/dicom-web")
    outcomes = stow.send([[p] for p in spool.failed.glob("*.dcm")])
    assert len(outcomes) == 2 and outcomes[0] is outcomes[1]  # not reached: the second not tried
    assert isinstance(outcomes[0], DeliveryError) and outcomes[0].transient and "STOW-RS" in str(outcomes[0])


def test_c_store_sends_several_images_over_a_few_associations_and_answers_per_image(tmp_path):
    """The results of four images in one send over two associations: the image refused for good
    (0xA900) and the one whose file is gone (to be made again) fail alone, the others are
    acknowledged. A destination down: every image waits, with the same transient error."""
    images = [_radiograph(60 + i) for i in range(3)]
    refused = images[1].SOPInstanceUID
    results = []
    for ds in images:
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(_bytes(ds))
        results.append([path])
    results.insert(2, [tmp_path / "gone.dcm"])
    catcher = _Catcher(
        _free_port("127.0.0.1"), status=lambda ds: 0xA900 if ds.SOPInstanceUID == refused else 0
    )
    try:
        destination = CStoreDestination(
            "127.0.0.1", catcher.server.server_address[1], "CATCHER", associations=2
        )
        outcomes = destination.send(results)
    finally:
        catcher.close()
    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], DeliveryError) and not outcomes[1].transient
    assert f"{refused}.dcm refused with status 0xA900" in str(outcomes[1])
    assert isinstance(outcomes[2], FileNotFoundError)
    assert len(catcher.associations) == 2
    received = {ds.SOPInstanceUID: ds for ds in catcher.received}
    assert sorted(received) == sorted(ds.SOPInstanceUID for ds in images)
    assert received[images[0].SOPInstanceUID].PixelData == images[0].PixelData  # sent as stored, whole

    down = CStoreDestination("127.0.0.1", _free_port("127.0.0.1"), "CATCHER").send(results[:2])
    assert all(isinstance(e, DeliveryError) and e.transient and "association" in str(e) for e in down)


def test_the_node_needs_a_destination(tmp_path):
    r = CliRunner().invoke(main, ["dicom-node", "--spool", str(tmp_path / "spool")])
    assert r.exit_code == 2 and "no destination for the results" in r.output
    r = CliRunner().invoke(main, ["dicom-node", "--spool", str(tmp_path / "spool"), "--store", "PACS@host"])
    assert r.exit_code == 2 and "is not AET@HOST:PORT" in r.output


@needs_server
def test_dicom_node_command_receives_infers_sends_and_stops_on_sigterm(server, tmp_path):
    """`mmtrt dicom-node` as a process: a modality's C-STORE is answered, the results reach the
    --store destination, SIGTERM stops it cleanly (exit 0, the SCP closed)."""
    catcher = _Catcher(_free_port("127.0.0.1"))
    port = _free_port("127.0.0.1")
    args = ["--spool", str(tmp_path / "spool"), "--port", str(port), "--url", server.http_url]
    args += ["--store", f"CATCHER@127.0.0.1:{catcher.server.server_address[1]}"]
    code = "from mmtrt.cli import main; main()"
    here = Path(__file__).resolve().parents[2]  # this checkout's mmtrt, not an installed one
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "dicom-node", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=here,
    )
    try:
        scu = AE(ae_title="MODALITY")
        scu.add_requested_context(DigitalXRayImageStorageForPresentation)
        pa = _radiograph(46)

        def stored() -> bool:
            assoc = scu.associate("127.0.0.1", port, ae_title="MMTRT")
            if not assoc.is_established:
                return False
            try:
                return assoc.send_c_store(pa).Status == 0x0000
            finally:
                assoc.release()

        _wait(stored, 60, "the node accepting a C-STORE")
        _wait(lambda: len(catcher.received) == 3, 60, "the results at the destination")
        _wait(
            lambda: (tmp_path / "spool" / "done" / f"{pa.SOPInstanceUID}.dcm").exists(), 10, "the image done"
        )
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, output
        assert "SIGTERM: stopping" in output and "0 image(s) left" in output
        assert not scu.associate("127.0.0.1", port, ae_title="MMTRT").is_established
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        catcher.close()
