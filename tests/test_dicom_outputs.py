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
