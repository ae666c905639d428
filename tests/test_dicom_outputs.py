"""DICOM results (highdicom): PM, SEG and SC for pydicom's real CT and MR files; read back, references, dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

from pydicom.data import get_testdata_file  # noqa: E402

from service.dicom_outputs import build_outputs, source_grid_map  # noqa: E402
from service.errors import InvalidOption  # noqa: E402

SOURCES = ["CT_small.dcm", "MR_small.dcm"]


def _source(name: str):
    return pydicom.dcmread(get_testdata_file(name))


def _map(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.random((7, 7)).astype(np.float32)
    values[3, 3] = 2.5  # a clear peak, so the thresholded SEG is neither empty nor full
    return values


def _build(name: str, kinds: list[str]) -> tuple[object, dict[str, bytes]]:
    source = _source(name)
    overlay = np.full((int(source.Rows), int(source.Columns), 3), 80, dtype=np.uint8)
    return source, build_outputs(kinds, source, _map(), overlay_rgb=overlay, threshold=0.5, label="lesion",
                                 method="gradcam", family="cam", model="demo", version="1.2.3")


def _dciodvfy_errors(data: bytes, tmp_path) -> list[str]:
    path = tmp_path / "object.dcm"
    path.write_bytes(data)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("name", SOURCES)
def test_parametric_map_holds_the_raw_map_on_the_source_grid(name):
    source, out = _build(name, ["dicom-pm"])
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(out["pm"])))
    assert pm.StudyInstanceUID == source.StudyInstanceUID
    assert pm.SeriesInstanceUID != source.SeriesInstanceUID and pm.SOPInstanceUID != source.SOPInstanceUID
    assert pm.PatientID == source.PatientID
    values = pm.get_volume().array[0] if hasattr(pm, "get_volume") else pm.pixel_array
    np.testing.assert_allclose(np.squeeze(values), source_grid_map(_map(), source), rtol=1e-6, atol=1e-6)
    assert np.squeeze(values).shape == (source.Rows, source.Columns)
    referenced = pm.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert referenced == source.SOPInstanceUID
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130403"
    equipment = [item for item in pm.ContributingEquipmentSequence if item.Manufacturer == "xaas"]
    assert [(item.ManufacturerModelName, item.SoftwareVersions) for item in equipment] == [("gradcam", "1.2.3")]
    assert str(pm.ContentCreatorName)


@pytest.mark.parametrize("name", SOURCES)
def test_segmentation_is_the_thresholded_map(name):
    source, out = _build(name, ["dicom-seg"])
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(out["seg"])))
    assert seg.SegmentationType == "BINARY" and seg.StudyInstanceUID == source.StudyInstanceUID
    mask = np.squeeze(seg.pixel_array).astype(bool)
    grid = source_grid_map(_map(), source)
    np.testing.assert_array_equal(mask, grid / grid.max() >= 0.5)
    assert 0 < mask.sum() < mask.size
    assert seg.SegmentSequence[0].SegmentLabel.startswith("lesion")
    assert source.SOPInstanceUID in {item.ReferencedSOPInstanceUID for item in
                                     seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}


@pytest.mark.parametrize("name", SOURCES)
def test_secondary_capture_references_the_source(name):
    source, out = _build(name, ["dicom-sc"])
    sc = pydicom.dcmread(io.BytesIO(out["sc"]))
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientName == source.PatientName
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.pixel_array.shape == (source.Rows, source.Columns, 3) and int(sc.pixel_array[0, 0, 0]) == 80


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
@pytest.mark.parametrize("name", SOURCES)
def test_every_object_passes_dciodvfy(name, tmp_path):
    _, out = _build(name, ["dicom-pm", "dicom-seg", "dicom-sc"])
    assert set(out) == {"pm", "seg", "sc"}
    for kind, data in out.items():
        assert _dciodvfy_errors(data, tmp_path) == [], kind


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) is not installed")
@pytest.mark.parametrize("name", SOURCES)
def test_fractional_segmentation_passes_dciodvfy_and_holds_the_normalised_map(name, tmp_path):
    source = _source(name)
    out = build_outputs(["dicom-seg"], source, _map(), overlay_rgb=None, threshold=0.5, label="lesion",
                        method="gradcam", family="cam", model="demo", version="1.2.3", fractional=True)
    assert _dciodvfy_errors(out["seg"], tmp_path) == []
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(out["seg"])))
    assert seg.SegmentationType == "FRACTIONAL"
    grid = source_grid_map(_map(), source)
    values = np.squeeze(seg.pixel_array).astype(np.float64) / float(seg.MaximumFractionalValue)
    # stored as 8-bit fractions (of MaximumFractionalValue): within one step of the normalised map
    np.testing.assert_allclose(values, np.clip(grid / grid.max(), 0, 1), atol=1 / 255 + 1e-6)


def test_uids_are_new_per_object():
    _, first = _build("CT_small.dcm", ["dicom-pm"])
    _, second = _build("CT_small.dcm", ["dicom-pm"])
    assert pydicom.dcmread(io.BytesIO(first["pm"])).SOPInstanceUID != \
        pydicom.dcmread(io.BytesIO(second["pm"])).SOPInstanceUID


def test_non_dicom_input_is_refused_naming_outputs():
    from service.dicom_outputs import read_source

    with pytest.raises(InvalidOption) as info:
        read_source(b"\x89PNG\r\n\x1a\n" + b"\0" * 200)
    assert info.value.errors[0].field == "outputs"


# --- through the API: /explain with DICOM outputs ------------------------------------------------------------------

def _post_dicom(client, name: str, outputs: str, **fields):
    from pathlib import Path

    data = Path(get_testdata_file(name)).read_bytes()
    return client.post("/explain/gradcam", files={"image": (name, data, "application/dicom")},
                       data={"outputs": outputs, **fields})


def _raw(explanation) -> np.ndarray:
    import base64

    raw = explanation["raw"]
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").reshape(raw["shape"])


@pytest.mark.parametrize("name", SOURCES)
def test_explain_returns_dicom_objects_whose_pm_is_the_served_raw_map(client, name, caplog):
    import base64
    import logging

    caplog.set_level(logging.DEBUG)
    response = _post_dicom(client, name, "raw,dicom-pm,dicom-seg,dicom-sc")
    assert response.status_code == 200, response.text
    explanation = response.json()["explanations"][0]
    assert set(explanation["dicom"]) == {"pm", "seg", "sc"}
    source = _source(name)
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(base64.b64decode(explanation["dicom"]["pm"]))))
    np.testing.assert_allclose(np.squeeze(pm.pixel_array), source_grid_map(_raw(explanation), source), atol=1e-6)
    assert pm.StudyInstanceUID == source.StudyInstanceUID and pm.PatientID == source.PatientID
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(explanation["dicom"]["seg"])))
    assert seg.SegmentationType == "BINARY"
    # identity is only inside the DICOM objects: not in the rest of the JSON, nor in any log record
    identity = [str(source.PatientName), str(source.PatientID)]
    body = response.json()
    for item in body["explanations"]:
        item.pop("dicom")
    text = response.headers.get("x-request-id", "") + str(body) + "\n".join(r.getMessage() for r in caplog.records)
    for value in identity:
        assert value and value not in text


def test_fractional_segmentation_on_request(client):
    import base64

    response = _post_dicom(client, "CT_small.dcm", "dicom-seg", segmentation_type="fractional")
    assert response.status_code == 200, response.text
    seg = pydicom.dcmread(io.BytesIO(base64.b64decode(response.json()["explanations"][0]["dicom"]["seg"])))
    assert seg.SegmentationType == "FRACTIONAL"


def test_png_input_asking_for_a_dicom_output_is_a_422_naming_outputs(client, demo_sample):
    png, _ = demo_sample
    response = client.post("/explain/gradcam", files={"image": ("x.png", png, "image/png")},
                           data={"outputs": "heatmap,dicom-pm"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [error["field"] for error in response.json()["errors"]] == ["outputs"]


# --- /localize with dicom-sr --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SOURCES)
def test_localize_report_has_one_planar_roi_per_box(client, name, tmp_path):
    import base64
    from pathlib import Path

    data = Path(get_testdata_file(name)).read_bytes()
    response = client.post("/localize", files={"image": (name, data, "application/dicom")},
                           data={"outputs": "dicom-sr", "top_k": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["boxes"], "the demo model boxes something on any image"
    blob = base64.b64decode(body["dicom"]["sr"])
    report = pydicom.dcmread(io.BytesIO(blob))
    source = _source(name)
    assert report.StudyInstanceUID == source.StudyInstanceUID
    assert report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    parsed = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(blob)))
    rois = parsed.content.get_planar_roi_measurement_groups()
    assert len(rois) == len(body["boxes"])
    for roi, box in zip(rois, body["boxes"], strict=True):
        assert roi.finding_type.meaning == box["label"]
        x0, y0, x1, y1 = box["box"]
        region = roi.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value[:4], [[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        assert roi.get_measurements()[0].value == pytest.approx(box["score"], rel=1e-6)
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(blob, tmp_path) == []
    for value in (str(source.PatientName), str(source.PatientID)):
        body.pop("dicom", None)
        assert value not in str(body)


def test_png_input_asking_localize_for_a_report_is_a_422_naming_outputs(client, demo_sample):
    png, _ = demo_sample
    response = client.post("/localize", files={"image": ("x.png", png, "image/png")}, data={"outputs": "dicom-sr"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["outputs"]


# --- Accept: application/dicom ------------------------------------------------------------------------------------

def test_accept_dicom_answers_with_the_object_itself(client):
    from pathlib import Path

    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    response = client.post("/explain/gradcam", files={"image": ("mr.dcm", data, "application/dicom")},
                           data={"outputs": "dicom-pm"}, headers={"Accept": "application/dicom"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom" and response.headers["vary"] == "Accept"
    pm = pydicom.dcmread(io.BytesIO(response.content))
    assert pm.SOPClassUID == hd.pm.ParametricMap.from_dataset(pm).SOPClassUID
    assert pm.StudyInstanceUID == _source("MR_small.dcm").StudyInstanceUID
    report = client.post("/localize", files={"image": ("mr.dcm", data, "application/dicom")},
                         data={"outputs": "dicom-sr"}, headers={"Accept": "application/dicom"})
    assert report.status_code == 200, report.text
    assert pydicom.dcmread(io.BytesIO(report.content)).Modality == "SR"


def test_accept_dicom_with_two_kinds_is_a_422_naming_outputs(client):
    from pathlib import Path

    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    response = client.post("/explain/gradcam", files={"image": ("mr.dcm", data, "application/dicom")},
                           data={"outputs": "dicom-pm,dicom-seg"}, headers={"Accept": "application/dicom"})
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["outputs"]


# --- conditional requests: DICOM results are new objects every time ------------------------------------------------

def test_dicom_results_carry_no_etag_and_are_never_304(client):
    import base64
    from pathlib import Path

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    image = {"image": ("ct.dcm", data, "application/dicom")}
    plain = client.post("/explain/gradcam", files=image, data={"outputs": "heatmap"})
    assert plain.status_code == 200 and plain.headers["etag"].startswith('W/"')
    # the same maps without DICOM outputs are tagged, and "*" is then answered 304
    assert client.post("/explain/gradcam", files=image, data={"outputs": "heatmap"},
                       headers={"If-None-Match": "*"}).status_code == 304

    uids = set()
    for headers in ({}, {"If-None-Match": "*"}, {"If-None-Match": plain.headers["etag"]}):
        response = client.post("/explain/gradcam", files=image, data={"outputs": "heatmap,dicom-pm"}, headers=headers)
        assert response.status_code == 200, response.text
        assert "etag" not in response.headers and response.headers["x-cache"] == "hit"  # maps cached, objects new
        blob = base64.b64decode(response.json()["explanations"][0]["dicom"]["pm"])
        uids.add(pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID)
    assert len(uids) == 3

    alone = client.post("/explain/gradcam", files=image, data={"outputs": "dicom-seg"},
                        headers={"Accept": "application/dicom", "If-None-Match": "*"})
    assert alone.status_code == 200 and alone.headers["content-type"] == "application/dicom"
    assert "etag" not in alone.headers
    report = client.post("/localize", files=image, data={"outputs": "dicom-sr"}, headers={"If-None-Match": "*"})
    assert report.status_code == 200 and "etag" not in report.headers and report.json()["dicom"]["sr"]
    boxes = client.post("/localize", files=image, headers={"If-None-Match": "*"})
    assert boxes.status_code == 304  # without the SR, localize stays conditional


# --- asynchronous jobs: the job's result holds the same DICOM objects --------------------------------------------

def _job_result(client, response) -> dict:
    import time

    assert response.status_code == 202, response.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        doc = client.get(response.headers["location"]).json()
        if doc["status"] not in ("queued", "running"):
            assert doc["status"] == "done", doc
            return doc["result"]
        time.sleep(0.05)
    raise AssertionError("the job did not finish in 120 s")


def test_an_async_job_returns_dicom_objects_that_read_back(client):
    import base64
    from pathlib import Path

    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    image = {"image": ("mr.dcm", data, "application/dicom")}
    # saliency, not the other tests' gradcam: the job computes its maps instead of finding them cached
    result = _job_result(client, client.post("/explain/saliency", files=image, data={"outputs": "raw,dicom-pm"},
                                             headers={"Prefer": "respond-async"}))
    explanation = result["explanations"][0]
    source = _source("MR_small.dcm")
    pm = hd.pm.ParametricMap.from_dataset(pydicom.dcmread(io.BytesIO(base64.b64decode(explanation["dicom"]["pm"]))))
    np.testing.assert_allclose(np.squeeze(pm.pixel_array), source_grid_map(_raw(explanation), source), atol=1e-6)
    assert pm.StudyInstanceUID == source.StudyInstanceUID
    assert pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0] \
        .QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130404"  # Saliency
    assert source.PatientID not in str({**explanation, "dicom": None})

    report = _job_result(client, client.post("/localize", files=image,
                                             data={"outputs": "dicom-sr", "method": "saliency"},
                                             headers={"Prefer": "respond-async"}))
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(io.BytesIO(base64.b64decode(report["dicom"]["sr"]))))
    assert len(sr.content.get_planar_roi_measurement_groups()) == len(report["boxes"])
