"""Run inside a private network namespace (``unshare -n``) by tests/ui/test_pacs_picker.py: Orthanc, the service
pointed at it (uvicorn, real HTTP), and headless Chromium on the review page.

STOWs pydicom's CT and MR into Orthanc, reads the service's QIDO-RS routes, then picks the CT in the page's PACS
picker, opens it and explains it. Prints one JSON line with what it saw; the test makes the assertions.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._server import free_port
from tests.dicomweb_roundtrip import PORT, start_orthanc


class _Live:
    def __init__(self, url: str):
        self.url = url


@contextlib.contextmanager
def live_server(pacs_url: str):
    """The app under uvicorn in a thread of this process: a real HTTP server for the browser, started without a
    second interpreter (``xaas serve`` takes seconds longer to come up inside the namespace)."""
    import uvicorn

    from service.app import create_app
    from service.config import DEFAULT_MODELS_FILE, Settings

    settings = Settings(models=DEFAULT_MODELS_FILE, device="cpu", dicomweb_url=pacs_url, dicomweb_timeout=20)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    live = _Live(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(live.url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise SystemExit("the service did not become ready")
            time.sleep(0.1)
        yield live
    finally:
        server.should_exit = True
        thread.join(30)


def main(chromium: str, args: list[str], shots: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from playwright.sync_api import sync_playwright

    seen: dict = {"errors": [], "timings": {}}
    started = time.monotonic()

    def mark(name: str) -> None:
        seen["timings"][name] = round(time.monotonic() - started, 1)

    with tempfile.TemporaryDirectory() as tmp:
        orthanc = start_orthanc(Path(tmp))
        try:
            url = f"http://127.0.0.1:{PORT}/dicom-web"
            ct, mr = (pydicom.dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm"))
            mark("orthanc")
            DICOMwebClient(url=url).store_instances([ct, mr])
            seen["ct"] = {"study": ct.StudyInstanceUID, "series": ct.SeriesInstanceUID, "sop": ct.SOPInstanceUID,
                          "patient": [str(ct.PatientName), str(ct.PatientID), str(mr.PatientName), str(mr.PatientID)]}
            with live_server(url) as srv:
                mark("xaas")
                studies = httpx.get(srv.url + "/dicomweb/studies").json()
                series = httpx.get(f"{srv.url}/dicomweb/studies/{ct.StudyInstanceUID}/series").json()
                instances = httpx.get(f"{srv.url}/dicomweb/studies/{ct.StudyInstanceUID}/series/"
                                      f"{ct.SeriesInstanceUID}/instances").json()
                part10 = httpx.get(f"{srv.url}/dicomweb/studies/{ct.StudyInstanceUID}/series/"
                                   f"{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}")
                seen.update(studies=studies, series=series, instances=instances,
                            part10={"status": part10.status_code, "type": part10.headers.get("content-type"),
                                    "sop": str(pydicom.dcmread(__import__("io").BytesIO(part10.content))
                                               .SOPInstanceUID)})
                mark("qido")
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.set_default_timeout(30_000)
                    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
                    mark("chromium")
                    page.goto(srv.url + "/ui")
                    page.get_by_label("Study", exact=True).wait_for()
                    page.wait_for_function("() => !document.getElementById('pacs-open').disabled")
                    page.get_by_label("Study", exact=True).select_option(ct.StudyInstanceUID)
                    page.wait_for_function("(uid) => document.getElementById('pacs-instance').value === uid "
                                           "&& !document.getElementById('pacs-open').disabled", arg=ct.SOPInstanceUID)
                    seen["study_options"] = page.locator("#pacs-study option").all_inner_texts()
                    page.get_by_role("button", name="Open instance").click()
                    page.wait_for_function("() => window.xaasReview.state.predictions.length > 0")
                    seen["image_info"] = page.locator("#image-info").inner_text()
                    page.get_by_role("button", name="Explain").click()
                    page.wait_for_function("() => document.getElementById('status').textContent"
                                           ".startsWith('Explained')")
                    seen["caption"] = page.locator("#caption-1").inner_text()
                    mark("explained")
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / "07-pacs.png"))
                    browser.close()
        finally:
            orthanc.terminate()
            orthanc.wait(10)
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]))
