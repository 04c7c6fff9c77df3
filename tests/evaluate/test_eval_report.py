"""The HTML report of `mmtrt evaluate`, opened in real headless Chromium (driven over the DevTools
protocol): every embedded image decodes (naturalWidth > 0), nothing is fetched from outside the
file, and the page logs no error. Skips, saying why, where Chromium is not installed
(scripts/setup.sh installs Debian's package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from urllib.request import urlopen

import pytest
from click.testing import CliRunner
from helpers import stop_process

from mmtrt.cli import main
from mmtrt.data import write_synthetic_datasets

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (scripts/setup.sh installs it as root)"
)

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--remote-allow-origins=*",
]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportdata")
    write_synthetic_datasets(root / "a", n_cls={"test": 4}, n_seg={"test": 2}, seed=1, size=128)
    write_synthetic_datasets(root / "b", n_cls={"test": 4}, n_seg={"test": 2}, seed=2, size=128)
    ckpt = root / "rand.pt"
    assert CliRunner().invoke(main, ["init", str(ckpt)]).exit_code == 0
    out = root / "eval"
    args = [
        "evaluate", str(ckpt), str(ckpt), "--name", "one", "--name", "two",
        "--cls-data", str(root / "a" / "cls"), "--seg-data", str(root / "a" / "seg"),
        "--cross-cls", str(root / "b" / "cls"), "--cross-seg", str(root / "b" / "seg"),
        "--out", str(out), "--bootstrap", "20", "--gallery", "2",
    ]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    return out


class DevTools:
    """One headless Chromium page over the DevTools protocol (websocket-client)."""

    def __init__(self, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = []
        while not pages and time.monotonic() < deadline:
            pages = [
                t for t in json.load(urlopen(f"http://127.0.0.1:{port}/json/list")) if t["type"] == "page"
            ]
            time.sleep(0.1)
        self.ws = websocket.create_connection(
            pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            assert time.monotonic() < deadline, f"no {method} within {timeout} s"
            self.events.append(json.loads(self.ws.recv()))

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"network: {p.get('errorText')}")
        return out

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        stop_process(self.proc, 10)


def test_report_opens_in_chromium_with_every_image_loaded(report, tmp_path):
    html = (report / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    assert "<h2>Calibration and operating point</h2>" in html
    metrics = json.loads((report / "metrics.json").read_text())
    for domain in ("in-domain", "cross-domain"):
        block = metrics["results"]["one"][domain]["classification"]
        for k in ("sensitivity", "specificity", "brier"):
            lo, hi = block[k]["ci95"]
            assert lo <= block[k]["value"] <= hi
        lo, hi = block["ece"]["ci95"]  # (resampling biases ECE up: its value may lie below)
        assert 0 <= lo <= hi <= 1
        assert sum(block["reliability"]["count"]) == block["n"]
    figures = sorted((report / "figures").glob("*.png"))
    names = {p.name for p in figures}
    for want in ("dice_boxplot.png", "roc.png", "confusion.png", "intensity_histograms.png",
                 "boundaries_in-domain.png", "boundaries_cross-domain.png",
                 "saliency_in-domain.png", "saliency_cross-domain.png",
                 "reliability_in-domain.png", "reliability_cross-domain.png"):  # fmt: skip
        assert want in names
    profile = tmp_path / "profile"
    profile.mkdir()
    page = DevTools(profile)
    try:
        for domain in ("Runtime", "Log", "Page", "Network"):
            page.send(f"{domain}.enable")
        requests = []
        page.send("Page.navigate", url=(report / "report.html").resolve().as_uri())
        page.wait_event("Page.loadEventFired")
        images = page.send(
            "Runtime.evaluate",
            expression="Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])",
            returnByValue=True,
        )["result"]["value"]
        requests = [
            e["params"]["request"]["url"][:40]
            for e in page.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        errors = page.errors()
    finally:
        page.close()
    assert len(images) == len(figures), images
    bad = [i for i in images if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert not bad, f"images that did not load: {bad}"
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
