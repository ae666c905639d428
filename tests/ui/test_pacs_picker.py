"""The review page's PACS picker against a real Orthanc, and the QIDO-RS routes behind it (in a private network
namespace: Orthanc binds every interface). Without a PACS the routes are 404 problems and the picker stays hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, make_client
from tests.test_dicomweb import _namespace_reason
from tests.ui.browser_support import CHROMIUM, CHROMIUM_ARGS, SHOTS, browser_skip_reason


def test_without_a_pacs_the_routes_are_404_and_the_picker_is_off():
    with make_client() as client:
        r = client.get("/dicomweb/studies")
        assert r.status_code == 404 and "XAAS_DICOMWEB_URL" in r.json()["detail"]
        assert client.get("/dicomweb/studies/1.2/series/1.2.3/instances/1.2.3.4").status_code == 404
        assert client.get("/dicomweb/studies/not-a-uid/series").status_code == 422
        assert '<meta name="xaas-pacs" content="">' in client.get("/ui").text


def test_an_unreachable_pacs_is_a_502_and_the_picker_is_on():
    with make_client(dicomweb_url="http://127.0.0.1:9/dicom-web", dicomweb_timeout=2) as client:
        assert client.get("/dicomweb/studies").status_code == 502
        assert '<meta name="xaas-pacs" content="on">' in client.get("/ui").text


@pytest.mark.skipif(_namespace_reason() is not None, reason=str(_namespace_reason()))
def test_a_study_is_picked_from_orthanc_opened_and_explained():
    reason = browser_skip_reason()
    if reason:
        pytest.skip(reason)
    script = Path(__file__).with_name("pacs_review.py")
    run = subprocess.run(["unshare", "-n", sys.executable, str(script), CHROMIUM, json.dumps(CHROMIUM_ARGS),
                          str(SHOTS)], capture_output=True, text=True, timeout=240,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    ct = seen["ct"]
    # QIDO through the service: the allow-listed members only, never the patient
    text = json.dumps({k: seen[k] for k in ("studies", "series", "instances", "study_options")})
    for identity in ct["patient"]:
        assert identity not in text
    assert {s["study"] for s in seen["studies"]["studies"]} >= {ct["study"]}
    study = next(s for s in seen["studies"]["studies"] if s["study"] == ct["study"])
    assert set(study) == {"study", "date", "time", "description", "modalities", "series_count", "instance_count"}
    assert study["modalities"] == ["CT"] and study["instance_count"] == 1
    assert [s["series"] for s in seen["series"]["series"]] == [ct["series"]]
    [instance] = seen["instances"]["instances"]
    assert instance["instance"] == ct["sop"] and (instance["rows"], instance["columns"]) == (128, 128)
    assert seen["part10"] == {"status": 200, "type": "application/dicom", "sop": ct["sop"]}
    # the page: picked, opened, explained, no console error
    assert "DICOM 128 × 128" in seen["image_info"]
    assert "gradcam" in seen["caption"]
    assert seen["errors"] == []
