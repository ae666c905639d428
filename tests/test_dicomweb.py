"""DICOMweb round trip against a real Orthanc (in a private network namespace), and PACS failures as problems."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")

from tests.support import make_client, wait_ready

PM, SEG, SR = "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34"


def _namespace_reason() -> str | None:
    if shutil.which("Orthanc") is None or not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        return "Orthanc with its DICOMweb plugin is not installed (Debian orthanc, orthanc-dicomweb)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare/ip are needed to give Orthanc a private network namespace"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        return "cannot create a network namespace here (unshare -n needs CAP_SYS_ADMIN)"
    return None


@pytest.mark.skipif(_namespace_reason() is not None, reason=str(_namespace_reason()))
def test_round_trip_stores_pm_seg_sr_into_the_source_study():
    script = Path(__file__).with_name("dicomweb_roundtrip.py")
    run = subprocess.run(["unshare", "-n", sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "PYTHONPATH": str(script.parents[1])})
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["missing_status"] == 404
    for name in ("CT_small.dcm", "MR_small.dcm"):
        result = seen[name]
        assert (result["explain_status"], result["localize_status"]) == (200, 200)
        assert len(result["stored"]) == 3
        found = result["found"]
        # QIDO-RS finds each stored object in the source's study, with the source's patient
        assert set(result["stored"]) <= set(found)
        assert sorted(found[uid]["sop_class"] for uid in result["stored"]) == sorted([PM, SEG, SR])
        assert {item["patient_id"] for item in found.values()} == {result["source_patient_id"]}
        assert result["source_sop"] in found


def test_unreachable_pacs_is_a_502_in_bounded_time():
    # port 9 (discard) on loopback has no listener here: connection refused at once
    with make_client(dicomweb_url="http://127.0.0.1:9/dicom-web", dicomweb_timeout=2) as client:
        wait_ready(client)
        started = time.monotonic()
        response = client.post("/dicomweb/explain/gradcam", json={"study": "1.2", "series": "1.2.3",
                                                                  "instance": "1.2.3.4", "outputs": ["dicom-pm"]})
        assert time.monotonic() - started < 10
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "1.2.3.4" not in response.text


def test_without_a_pacs_configured_the_endpoint_is_503_and_bad_uids_are_400():
    with make_client() as client:
        wait_ready(client)
        response = client.post("/dicomweb/localize", json={"study": "1.2", "series": "1.2.3", "instance": "1.2.3.4"})
        assert response.status_code == 503
    with make_client(dicomweb_url="http://127.0.0.1:9/dicom-web") as client:
        wait_ready(client)
        response = client.post("/dicomweb/localize", json={"study": "x y", "series": "1.2.3", "instance": "1.2.3.4"})
        assert response.status_code == 400
        response = client.post("/dicomweb/localize", json={"series": "1.2.3", "instance": "1.2.3.4"})
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == "study"
