"""Run inside a private network namespace (``unshare -n``) by tests/ui/test_pacs_picker.py: Orthanc, a live
``xaas serve`` pointed at it, and headless Chromium on the review page.

STOWs pydicom's CT and MR into Orthanc, reads the service's QIDO-RS routes, then picks the CT in the page's PACS
picker, opens it and explains it. Prints one JSON line with what it saw; the test makes the assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench._server import running_server
from tests.dicomweb_roundtrip import PORT, start_orthanc


def main(chromium: str, args: list[str], shots: Path) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    from playwright.sync_api import sync_playwright

    seen: dict = {"errors": []}
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = start_orthanc(Path(tmp))
        try:
            url = f"http://127.0.0.1:{PORT}/dicom-web"
            ct, mr = (pydicom.dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm"))
            DICOMwebClient(url=url).store_instances([ct, mr])
            seen["ct"] = {"study": ct.StudyInstanceUID, "series": ct.SeriesInstanceUID, "sop": ct.SOPInstanceUID,
                          "patient": [str(ct.PatientName), str(ct.PatientID), str(mr.PatientName), str(mr.PatientID)]}
            env = {"XAAS_DEVICE": "cpu", "XAAS_DICOMWEB_URL": url, "XAAS_DICOMWEB_TIMEOUT": "20"}
            with running_server(env=env) as srv:
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
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
                    page = browser.new_page(viewport={"width": 1280, "height": 800})
                    page.set_default_timeout(30_000)
                    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
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
                    shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(shots / "07-pacs.png"))
                    browser.close()
        finally:
            orthanc.terminate()
            orthanc.wait(10)
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]))
