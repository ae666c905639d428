"""DICOMweb round trip against a real Orthanc (in a private network namespace), and PACS failures as problems."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")

from tests.fake_pacs import FakePacs, closed_port
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
    # a whole series for the volume model: multi-frame PM and SEG, one frame per slice, referencing every slice
    series = seen["series"]
    assert series["status"] == 200, series
    assert len(series["stored"]) == 2 and set(series["stored"]) == set(series["found"])
    assert sorted(f["sop_class"] for f in series["found"].values()) == sorted([PM, SEG])
    assert all(f["frames"] == series["slices"] and f["references_all"] for f in series["found"].values())


# --- PACS failures, against a scripted PACS on loopback (no Orthanc needed) ---------------------------------------

PACS_TIMEOUT = 2.0
REFERENCE = {"study": "1.2.826.0.1.3680043.2.1125.1", "series": "1.2.826.0.1.3680043.2.1125.2",
             "instance": "1.2.826.0.1.3680043.2.1125.3"}


@pytest.fixture(scope="module")
def pacs():
    with FakePacs() as fake:
        yield fake


@pytest.fixture(scope="module")
def pacs_client(pacs):
    with make_client(dicomweb_url=pacs.url, dicomweb_timeout=PACS_TIMEOUT) as client:
        wait_ready(client)
        yield client


@pytest.fixture()
def mode(pacs):
    """Set the scripted PACS's behaviour for one test."""
    def set_mode(value: str) -> FakePacs:
        pacs.mode = value
        return pacs

    yield set_mode
    pacs.mode = "ok"
    pacs.stored.clear()


def _timed_post(client, path: str, body: dict) -> tuple[object, float]:
    started = time.monotonic()
    response = client.post(path, json=body)
    return response, time.monotonic() - started


def _assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    for uid in REFERENCE.values():  # UIDs may identify a patient: never echoed in an error
        assert uid not in response.text
    return problem


def test_a_pacs_that_never_answers_is_a_504_within_the_configured_timeout(pacs_client, mode):
    mode("silent")
    response, elapsed = _timed_post(pacs_client, "/dicomweb/explain/gradcam", {**REFERENCE, "outputs": ["dicom-pm"]})
    problem = _assert_problem(response, 504)
    assert PACS_TIMEOUT * 0.9 <= elapsed < PACS_TIMEOUT + 4, elapsed
    assert "retrieve" in problem["detail"] and f"{PACS_TIMEOUT:g} s" in problem["detail"]


def test_a_pacs_that_trickles_its_answer_is_a_504_within_the_timeout_too(pacs_client, mode):
    pacs = mode("trickle")  # every read gets a byte in time: only a bound on the whole request ends it
    pacs.hung_up.clear()
    response, elapsed = _timed_post(pacs_client, "/dicomweb/explain/gradcam", {**REFERENCE, "outputs": ["dicom-pm"]})
    problem = _assert_problem(response, 504)
    assert PACS_TIMEOUT * 0.9 <= elapsed < PACS_TIMEOUT + 4, elapsed
    assert "retrieve" in problem["detail"]
    # and the service stopped reading: its thread is free, the PACS sees the connection closed
    assert pacs.hung_up.wait(5)


def test_a_store_that_never_answers_is_a_504_too(pacs_client, mode):
    mode("store-silent")  # the fetch works, then STOW-RS hangs: bounded by the same timeout
    response, elapsed = _timed_post(pacs_client, "/dicomweb/localize",
                                    {**REFERENCE, "outputs": ["dicom-sr"], "store": True})
    problem = _assert_problem(response, 504)
    assert "store" in problem["detail"] and elapsed < PACS_TIMEOUT + 10, elapsed


def test_unreachable_pacs_is_a_502_in_bounded_time():
    with make_client(dicomweb_url=f"http://127.0.0.1:{closed_port()}/dicom-web", dicomweb_timeout=2) as client:
        wait_ready(client)
        response, elapsed = _timed_post(client, "/dicomweb/explain/gradcam", {**REFERENCE, "outputs": ["dicom-pm"]})
    assert elapsed < 10
    problem = _assert_problem(response, 502)
    assert "could not be reached" in problem["detail"]


def test_a_pacs_answering_5xx_is_a_502_naming_the_status(pacs_client, mode):
    mode("broken")
    problem = _assert_problem(pacs_client.post("/dicomweb/localize", json=REFERENCE), 502)
    assert "HTTP 503" in problem["detail"] and "retrieve" in problem["detail"]


def test_a_failing_store_is_a_502(pacs_client, mode):
    pacs = mode("store-fails")
    problem = _assert_problem(pacs_client.post("/dicomweb/explain/gradcam",
                                               json={**REFERENCE, "outputs": ["dicom-pm"], "store": True}), 502)
    assert "store" in problem["detail"] and "HTTP 500" in problem["detail"]
    assert pacs.stored == []


def test_a_missing_instance_is_a_404(pacs_client, mode):
    mode("missing")
    problem = _assert_problem(pacs_client.post("/dicomweb/explain/gradcam", json=REFERENCE), 404)
    assert "no such instance" in problem["detail"]


def test_store_sends_the_results_and_answers_their_uids(pacs_client, mode, caplog):
    import logging

    import pydicom

    caplog.set_level(logging.DEBUG)
    pacs = mode("ok")
    response = pacs_client.post("/dicomweb/explain/gradcam",
                                json={**REFERENCE, "outputs": ["dicom-pm", "dicom-seg"], "store": True, "top_k": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    received = [pydicom.dcmread(io.BytesIO(blob)) for blob in pacs.stored]
    assert sorted(str(ds.SOPClassUID) for ds in received) == sorted([PM, SEG])
    assert body["stored"] == [str(ds.SOPInstanceUID) for ds in received]
    assert f"GET /dicom-web/studies/{REFERENCE['study']}/series/{REFERENCE['series']}/instances/" \
           f"{REFERENCE['instance']}" in pacs.requests
    # the request's UIDs stay out of the logs (dicomweb-client logs them at INFO)
    assert not any(uid in record.getMessage() for record in caplog.records for uid in REFERENCE.values())
    without_store = pacs_client.post("/dicomweb/explain/gradcam", json={**REFERENCE, "outputs": ["dicom-pm"]})
    assert without_store.status_code == 200 and without_store.json()["stored"] == []
    assert len(pacs.stored) == 2  # nothing more was sent


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


@pytest.mark.parametrize("uid", ["1.\u0663", "1..2", "1.2.", "", "1" * 65, "1.2/3"])
def test_a_malformed_uid_is_a_400_naming_it_before_any_pacs_request(pacs_client, pacs, uid):
    before = len(pacs.requests)
    response = pacs_client.post("/dicomweb/explain/gradcam", json={**REFERENCE, "series": uid})
    problem = _assert_problem(response, 400)
    assert [error["field"] for error in problem["errors"]] == ["series"]
    assert len(pacs.requests) == before


@pytest.mark.parametrize(("member", "status"), [({"all_components": 0}, 422), ({"store": "true"}, 400),
                                                ({"store": 1}, 400), ({"study": 12}, 400)])
def test_a_boolean_or_uid_of_the_wrong_type_is_refused(pacs_client, pacs, member, status):
    # 0 is not false (pydantic alone would take it), "true" is not true in JSON, 12 is not a UID string
    before = len(pacs.requests)
    response = pacs_client.post("/dicomweb/localize", json={**REFERENCE, **member})
    problem = _assert_problem(response, status)
    assert [error["field"] for error in problem["errors"]] == list(member)
    assert len(pacs.requests) == before


def test_the_auth_file_header_goes_to_the_pacs_and_nowhere_else(pacs, mode, tmp_path, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    mode("ok")
    secret = "Bearer s3cr3t-token"
    auth = tmp_path / "pacs-auth"
    auth.write_text(f"Authorization: {secret}\n")
    with make_client(dicomweb_url=pacs.url, dicomweb_auth_file=auth, dicomweb_timeout=PACS_TIMEOUT) as client:
        wait_ready(client)
        before = len(pacs.headers)
        response = client.post("/dicomweb/localize", json={**REFERENCE, "store": True, "outputs": ["dicom-sr"]})
        assert response.status_code == 200, response.text
        assert [headers.get("Authorization") for headers in pacs.headers[before:]] == [secret, secret]  # GET, STOW
        assert secret not in response.text
        assert not any("s3cr3t" in record.getMessage() for record in caplog.records)
        auth.write_text("no header here\n")  # read per request: a broken file is a clear 503, not a silent drop
        problem = _assert_problem(client.post("/dicomweb/localize", json=REFERENCE), 503)
        assert "credentials file" in problem["detail"] and "no header" not in problem["detail"]
        auth.unlink()
        problem = _assert_problem(client.post("/dicomweb/localize", json=REFERENCE), 503)
        assert "cannot be read" in problem["detail"]


HOSTILE = [True, False, None, [], {}, [[1]], 2**70, -0.0, 0.5, "¹", "a\x00b", "", "x" * 5000, [None], "1.2", "0"]


def _dicomweb_options() -> list[tuple[str, str]]:
    from service.api.schemas import DicomwebReference, ExplainOptions, LocalizeOptions

    reference = list(DicomwebReference.model_fields)
    return ([("/dicomweb/explain/gradcam", name) for name in reference + list(ExplainOptions.model_fields)]
            + [("/dicomweb/localize", name) for name in reference + list(LocalizeOptions.model_fields)])


@pytest.mark.parametrize(("path", "option"), _dicomweb_options(), ids=[f"{p}:{o}" for p, o in _dicomweb_options()])
def test_hostile_option_values_get_an_answer_or_a_problem_never_a_5xx(pacs_client, mode, path, option):
    mode("ok")
    for value in HOSTILE:
        response = pacs_client.post(path, json={**REFERENCE, "timeout": 20, option: value})
        what = f"{path} {option}={str(value)[:20]!r}"
        assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            assert response.headers["content-type"].startswith("application/problem+json"), what
            assert all(set(item) == {"field", "message"} for item in response.json().get("errors", [])), what


def test_a_2d_model_needs_an_instance_a_volume_model_does_not(pacs_client, mode):
    mode("ok")
    series_only = {k: v for k, v in REFERENCE.items() if k != "instance"}
    resp = pacs_client.post("/dicomweb/explain/gradcam", json=series_only)
    assert resp.status_code == 400, resp.text
    assert any(e["field"] == "instance" for e in resp.json()["errors"])
    # the volume model fetches the series: the scripted PACS answers one CT instance, which is no volume
    resp = pacs_client.post("/dicomweb/explain/gradcam", json={**series_only, "model": "demo-3d"})
    assert resp.status_code == 422, resp.text
    assert "not a volume" in resp.json()["detail"]
