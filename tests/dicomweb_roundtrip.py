"""Run inside a private network namespace (``unshare -n``) by tests/test_dicomweb.py: Orthanc + the app under test.

Starts Orthanc (HTTP only, DICOM port off, temp storage) on the namespace's loopback, STOWs pydicom's CT and MR,
explains each through ``/dicomweb/explain/gradcam`` and ``/dicomweb/localize`` with ``store``, then finds the
results by QIDO-RS and reads them back. Prints one JSON line with what it saw; the test makes the assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import make_client, wait_ready

PORT = 8042
PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def start_orthanc(folder: Path) -> subprocess.Popen:
    config = {"Name": "xaas-test", "HttpPort": PORT, "DicomServerEnabled": False, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "StorageDirectory": str(folder / "storage"),
              "IndexDirectory": str(folder / "index"), "Plugins": [PLUGIN],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{PORT}/system", timeout=1).ok:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("Orthanc did not start within 30 s")


def _series_round_trip(client, pacs: DICOMwebClient) -> dict:
    """A synthetic CT series (demo-3d's kind of volume) STOWed slice by slice, explained as a whole series (no
    instance: WADO-RS of the series) with store; the multi-frame PM and SEG found back by QIDO-RS."""
    import io

    from service.demo.volume_model import VOLUME_CLASSES, volume_sample
    from service.demo.volumes import dicom_series

    voxels, _, label = volume_sample(4040, 1)
    slices = [pydicom.dcmread(io.BytesIO(blob)) for blob in dicom_series(voxels)]
    pacs.store_instances(slices)
    study, series = slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID
    explained = client.post("/dicomweb/explain/gradcam", json={
        "study": study, "series": series, "model": "demo-3d", "target": VOLUME_CLASSES[label], "store": True,
        "outputs": ["dicom-pm", "dicom-seg"]})
    body = explained.json()
    frames = {}
    for stored in body.get("stored", []):
        for found in pacs.search_for_series(study_instance_uid=study):
            uid = found["0020000E"]["Value"][0]
            for instance in pacs.search_for_instances(study_instance_uid=study, series_instance_uid=uid):
                if instance["00080018"]["Value"][0] == stored:
                    ds = pacs.retrieve_instance(study, uid, stored)
                    referenced = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence
                                  for r in s.ReferencedInstanceSequence}
                    frames[stored] = {"frames": int(ds.NumberOfFrames), "sop_class": str(ds.SOPClassUID),
                                      "references_all": referenced == {s.SOPInstanceUID for s in slices}}
    return {"status": explained.status_code, "stored": body.get("stored", []), "found": frames,
            "slices": len(slices), "detail": body.get("detail")}


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = start_orthanc(Path(tmp))
        try:
            url = f"http://127.0.0.1:{PORT}/dicom-web"
            pacs = DICOMwebClient(url=url)
            seen = {}
            with make_client(dicomweb_url=url, dicomweb_timeout=20) as client:
                wait_ready(client)
                missing = client.post("/dicomweb/explain/gradcam",
                                      json={"study": "1.2.3", "series": "1.2.3.4", "instance": "1.2.3.4.5"})
                seen["missing_status"] = missing.status_code
                for name in ("CT_small.dcm", "MR_small.dcm"):
                    source = pydicom.dcmread(get_testdata_file(name))
                    pacs.store_instances([source])
                    ref = {"study": source.StudyInstanceUID, "series": source.SeriesInstanceUID,
                           "instance": source.SOPInstanceUID}
                    started = time.monotonic()
                    explained = client.post("/dicomweb/explain/gradcam",
                                            json={**ref, "store": True, "outputs": ["dicom-pm", "dicom-seg", "raw"]})
                    localized = client.post("/dicomweb/localize", json={**ref, "store": True, "outputs": ["dicom-sr"]})
                    elapsed = time.monotonic() - started
                    stored = explained.json().get("stored", []) + localized.json().get("stored", [])
                    found = {}
                    for series in pacs.search_for_series(study_instance_uid=source.StudyInstanceUID):
                        series_uid = series["0020000E"]["Value"][0]
                        for instance in pacs.search_for_instances(study_instance_uid=source.StudyInstanceUID,
                                                                  series_instance_uid=series_uid):
                            sop = instance["00080018"]["Value"][0]
                            ds = pacs.retrieve_instance(source.StudyInstanceUID, series_uid, sop)
                            found[sop] = {"modality": str(ds.Modality), "sop_class": str(ds.SOPClassUID),
                                          "patient_id": str(ds.PatientID)}
                    seen[name] = {"explain_status": explained.status_code, "localize_status": localized.status_code,
                                  "stored": stored, "found": found, "seconds": round(elapsed, 2),
                                  "source_patient_id": str(source.PatientID), "source_sop": source.SOPInstanceUID}
                seen["series"] = _series_round_trip(client, pacs)
            print(json.dumps(seen))
        finally:
            orthanc.terminate()
            orthanc.wait(timeout=20)


if __name__ == "__main__":
    main()
