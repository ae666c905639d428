"""Volume models over HTTP: a DICOM series (several files, or a zip) and NIfTI of the same volume give the same
prediction and explanation whatever the file order; the served map equals the engine's; montage, one slice, NIfTI
(affine round trip) and raw volume outputs; 3-D boxes in voxels and mm; inconsistent series and misdirected inputs
answered with a 4xx naming the problem."""

from __future__ import annotations

import base64
import gzip
import io
import random
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from service.demo.volumes import dicom_series, nifti_file, series_affine, shapes_volume
from tests.support import decode_raw, make_client, wait_ready

PROBLEM = "application/problem+json"
SIZE = (16, 24, 24)
SHAPE = (20, 28, 30)
SPACING = (2.5, 0.8, 0.8)


@pytest.fixture(scope="module")
def vol_client(tmp_path_factory):
    path = tmp_path_factory.mktemp("vol") / "models.yaml"
    path.write_text("models:\n  - name: vol\n    source: python:tests.engine.vol_support:tiny_net3d\n"
                    f"    spatial_dims: 3\n    input_size: {list(SIZE)}\n    channels: 1\n    window: [200, 800]\n"
                    "    mean: [0.5]\n    std: [0.25]\n    labels: [none, sphere, cube, both]\n")
    with make_client(models=str(path)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def volume():
    voxels, masks, names = shapes_volume(np.random.default_rng(0), size=SHAPE)
    return voxels, masks


def _series_parts(files: list[bytes]):
    return [("image", (f"{i}.dcm", f, "application/dicom")) for i, f in enumerate(files)]


def _zip(files: list[bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate(files):
            z.writestr(f"series/{i}.dcm", f)
    return buf.getvalue()


def _raw(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return decode_raw(resp.json()["explanations"][0]["raw"])


def test_models_reports_a_volume_model(vol_client):
    body = vol_client.get("/models/vol").json()
    assert body["spatial_dims"] == 3 and body["input_size"] == list(SIZE)
    assert {"gradcam", "hirescam", "saliency", "occlusion"} <= set(body["methods"])
    assert "volumes" in body["refused"]["scorecam"]
    assert any(layer["layout"] == "ncdhw" and len(layer["grid"]) == 3 for layer in body["layers"])


def test_a_series_in_any_order_a_zip_and_nifti_give_the_same_answer(vol_client, volume):
    voxels, _ = volume
    files = dicom_series(voxels, SPACING)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    nii = nifti_file(voxels, SPACING)
    inputs = {"ordered": _series_parts(files), "shuffled": _series_parts(shuffled),
              "zip": {"image": ("s.zip", _zip(shuffled[::-1]), "application/zip")},
              "nifti": {"image": ("v.nii.gz", nii, "application/gzip")},
              "nii": {"image": ("v.nii", gzip.decompress(nii), "application/octet-stream")}}
    predictions = {k: vol_client.post("/predict", files=v).json() for k, v in inputs.items()}
    for k, body in predictions.items():
        assert body["image"] == {"width": 30, "height": 28, "depth": 20, "spacing": list(SPACING)}, k
        assert [p["index"] for p in body["predictions"]] == [p["index"] for p in predictions["ordered"]["predictions"]]
        assert [p["score"] for p in body["predictions"]] == pytest.approx(
            [p["score"] for p in predictions["ordered"]["predictions"]], abs=1e-6), k
    maps = {k: _raw(vol_client.post("/explain/gradcam", files=v, data={"target": "sphere", "outputs": "raw"}))
            for k, v in inputs.items()}
    for k, m in maps.items():
        assert m.shape == (8, 12, 12)
        np.testing.assert_allclose(m, maps["ordered"], rtol=1e-5, atol=1e-7, err_msg=k)
    assert float(maps["ordered"].max()) > 0


def test_the_served_map_equals_the_engine_on_the_same_input(vol_client, volume):
    from service.engine import get_method
    from service.imaging.volume import decode_volume, volume_to_model_input
    from tests.engine.vol_support import tiny_net3d

    voxels, _ = volume
    nii = nifti_file(voxels, SPACING)
    served = _raw(vol_client.post("/explain/hirescam", files={"image": ("v.nii.gz", nii, "application/gzip")},
                                  data={"target": "2", "outputs": "raw"}))
    x = volume_to_model_input(decode_volume(nii), input_size=SIZE, channels=1, mean=[0.5], std=[0.25],
                              window=(200, 800))
    model = tiny_net3d().eval().requires_grad_(False)
    mine = get_method("hirescam").explain(model, x[None], torch.tensor([2]), layer="features")[0].numpy()
    np.testing.assert_allclose(served, mine, rtol=1e-4, atol=1e-6 * float(np.abs(mine).max()))


def test_montage_one_slice_and_nifti_outputs(vol_client, volume):
    import nibabel as nib

    voxels, _ = volume
    nii = nifti_file(voxels, SPACING)
    body = vol_client.post("/explain/gradcam", files={"image": ("v.nii.gz", nii, "application/gzip")},
                           data={"target": "1", "outputs": "heatmap,nifti"}).json()
    row = body["explanations"][0]
    assert len(row["slices"]) == 9 and row["slices"] == sorted(row["slices"])
    with Image.open(io.BytesIO(base64.b64decode(row["heatmap"]))) as sheet:
        assert sheet.size == (3 * 30 + 4, 3 * 28 + 4)            # 3 x 3 axial slices of 30 x 28, 2-pixel gaps
    returned = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(row["nifti"])))
    source = nib.Nifti1Image.from_bytes(gzip.decompress(nii))
    np.testing.assert_allclose(returned.affine, source.affine, atol=1e-5)
    assert returned.shape == source.shape == (30, 28, 20)
    heat = np.asarray(returned.get_fdata())
    assert heat.max() > 0
    one = vol_client.post("/explain/gradcam", files={"image": ("v.nii.gz", nii, "application/gzip")},
                          data={"target": "1", "slice": "5", "axis": "coronal"}).json()["explanations"][0]
    assert one["slices"] == [5]
    with Image.open(io.BytesIO(base64.b64decode(one["heatmap"]))) as picture:
        assert picture.size == (30, 20)                           # a coronal slice: width x depth
        coronal = np.asarray(picture, dtype=float) / 255
    expected = heat.transpose(2, 1, 0)[:, 5, :]
    np.testing.assert_allclose(coronal, expected / heat.max(), atol=1 / 255 + 1e-6)


def test_localize_gives_3d_boxes_in_voxels_and_mm(vol_client, volume):
    voxels, _ = volume
    files = dicom_series(voxels, SPACING)
    resp = vol_client.post("/localize", files=_series_parts(files), data={"target": "1", "all_components": "true"})
    assert resp.status_code == 200, resp.text
    boxes = resp.json()["boxes"]
    assert boxes
    affine = series_affine(SPACING)
    for b in boxes:
        x0, y0, z0, x1, y1, z1 = b["box3d"]
        assert 0 <= x0 < x1 <= 30 and 0 <= y0 < y1 <= 28 and 0 <= z0 < z1 <= 20
        assert b["box"] == [x0, y0, x1, y1]
        lo = affine @ np.array([x0 - 0.5, y0 - 0.5, z0 - 0.5, 1.0])
        hi = affine @ np.array([x1 - 0.5, y1 - 0.5, z1 - 0.5, 1.0])
        assert b["box_mm"] == pytest.approx([*np.minimum(lo, hi)[:3], *np.maximum(lo, hi)[:3]], abs=1e-3)


def _edited(files: list[bytes], edit) -> list[bytes]:
    import pydicom

    out = []
    for k, blob in enumerate(files):
        ds = pydicom.dcmread(io.BytesIO(blob))
        ds = edit(k, ds)
        if ds is None:
            continue
        buf = io.BytesIO()
        ds.save_as(buf)
        out.append(buf.getvalue())
    return out


def _missing_middle(k, ds):
    return None if k == 7 else ds


def _tilted(k, ds):
    if k == 3:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    return ds


def _duplicate(k, ds):
    if k == 4:
        ds.ImagePositionPatient = list(ds.ImagePositionPatient)[:2] + [40.0 + 5 * 2.5]
    return ds


def _no_position(k, ds):
    if k == 2:
        del ds.ImagePositionPatient
    return ds


@pytest.mark.parametrize("edit,needle", [(_missing_middle, "a slice is missing"), (_tilted, "orientations"),
                                         (_duplicate, "share a position"), (_no_position, "ImagePositionPatient")])
def test_inconsistent_series_are_422_naming_the_problem(vol_client, volume, edit, needle):
    files = _edited(dicom_series(volume[0], SPACING), edit)
    resp = vol_client.post("/explain/gradcam", files=_series_parts(files))
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert needle.lower() in resp.json()["detail"].lower()


def test_mixed_sizes_and_foreign_files_are_refused(vol_client, volume, demo_sample):
    small = dicom_series(np.zeros((3, 10, 10), dtype=np.float32), SPACING)
    resp = vol_client.post("/predict", files=_series_parts(dicom_series(volume[0], SPACING)[:4] + small))
    assert resp.status_code == 422 and "mixes slice sizes" in resp.json()["detail"]
    resp = vol_client.post("/predict", files=_series_parts([b"not dicom at all" * 20, demo_sample[0]]))
    assert resp.status_code == 422 and "not a readable dicom" in resp.json()["detail"].lower()
    resp = vol_client.post("/predict", files={"image": ("x.png", demo_sample[0], "image/png")})
    assert resp.status_code == 422 and "not a volume" in resp.json()["detail"]
    resp = vol_client.post("/explain/gradcam", files={"image": ("v.nii.gz", nifti_file(volume[0]), "x")},
                           data={"outputs": "overlay"})
    assert resp.status_code == 422 and "for 2-D images" in resp.json()["detail"]


def test_a_2d_model_refuses_a_volume_and_volume_options(client, volume, demo_sample):
    resp = client.post("/predict", files=_series_parts(dicom_series(volume[0], SPACING)[:3]))
    assert resp.status_code == 422 and "volume models" in resp.json()["detail"]
    resp = client.post("/explain/gradcam", files={"image": ("x.png", demo_sample[0], "image/png")},
                       data={"outputs": "nifti"})
    assert resp.status_code == 422 and "volume models" in resp.json()["detail"]


def test_the_voxel_limit_is_checked_before_decoding(tmp_path, volume):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: vol\n    source: python:tests.engine.vol_support:tiny_net3d\n"
                    f"    spatial_dims: 3\n    input_size: {list(SIZE)}\n    channels: 1\n    mean: [0.5]\n"
                    "    std: [0.25]\n")
    with make_client(models=str(path), max_voxels=10_000) as c:
        wait_ready(c)
        resp = c.post("/predict", files={"image": ("v.nii.gz", nifti_file(volume[0]), "application/gzip")})
        assert resp.status_code == 413, resp.text
        assert "voxels" in resp.json()["detail"]


def _dciodvfy_errors(data: bytes, tmp_path, name: str) -> list[str]:
    import subprocess

    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_a_series_gets_multiframe_pm_and_seg_referencing_every_slice(vol_client, volume, tmp_path):
    import shutil

    import highdicom as hd
    import pydicom

    voxels, _ = volume
    files = dicom_series(voxels, SPACING)
    sources = [pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True) for f in files]
    shuffled = _series_parts(files[::-1])
    resp = vol_client.post("/explain/gradcam", files=shuffled,
                           data={"target": "1", "outputs": "raw,dicom-pm,dicom-seg", "threshold": "0.3"})
    assert resp.status_code == 200, resp.text
    assert "etag" not in resp.headers                        # new UIDs in every answer
    row = resp.json()["explanations"][0]
    from service.rendering_volume import map_on_grid

    grid = map_on_grid(decode_raw(row["raw"]), SHAPE)
    pm_ds = pydicom.dcmread(io.BytesIO(base64.b64decode(row["dicom"]["pm"])))
    pm = hd.pm.ParametricMap.from_dataset(pm_ds)
    assert int(pm.NumberOfFrames) == SHAPE[0]
    assert pm.StudyInstanceUID == sources[0].StudyInstanceUID and pm.PatientID == sources[0].PatientID
    referenced = {r.ReferencedSOPInstanceUID for s in pm.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}
    # every frame lies where a source slice lies (highdicom orders frames itself) and holds the map on that slice
    depth_of = {round(float(s.ImagePositionPatient[2]), 3): k for k, s in enumerate(sources)}
    frames = pm.pixel_array.astype(np.float32)
    seen = []
    for f, group in enumerate(pm.PerFrameFunctionalGroupsSequence):
        k = depth_of[round(float(group.PlanePositionSequence[0].ImagePositionPatient[2]), 3)]
        np.testing.assert_allclose(frames[f], grid[k], rtol=1e-5, atol=1e-6)
        seen.append(k)
    assert sorted(seen) == list(range(SHAPE[0]))
    seg_ds = pydicom.dcmread(io.BytesIO(base64.b64decode(row["dicom"]["seg"])))
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    assert int(seg.NumberOfFrames) == SHAPE[0]
    expected = grid >= 0.3 * grid.max()
    for f, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = depth_of[round(float(group.PlanePositionSequence[0].ImagePositionPatient[2]), 3)]
        assert np.array_equal(seg.pixel_array[f].astype(bool), expected[k]), k
    nifti = vol_client.post("/explain/gradcam", files={"image": ("v.nii.gz", nifti_file(voxels), "x")},
                            data={"target": "1", "outputs": "dicom-pm"})
    assert nifti.status_code == 422 and "DICOM series" in nifti.json()["detail"]
    if shutil.which("dciodvfy"):
        for name in ("pm", "seg"):
            assert _dciodvfy_errors(base64.b64decode(row["dicom"][name]), tmp_path, name) == [], name


def test_an_enhanced_multiframe_ct_reads_as_its_series(vol_client, volume):
    """The series converted to one Legacy Converted Enhanced CT (highdicom): rescale from the functional groups,
    frames sorted by their plane positions — the same map; its DICOM results are refused as not built yet."""
    import warnings

    import highdicom as hd
    import pydicom

    voxels, _ = volume
    files = dicom_series(voxels, SPACING)
    sources = [pydicom.dcmread(io.BytesIO(f)) for f in files]
    random.Random(5).shuffle(sources)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(sources, series_instance_uid=hd.UID(), series_number=7,
                                                            sop_instance_uid=hd.UID(), instance_number=1)
    buf = io.BytesIO()
    enhanced.save_as(buf)
    one_file = {"image": ("ct.dcm", buf.getvalue(), "application/dicom")}
    fields = {"target": "1", "outputs": "raw"}
    np.testing.assert_allclose(_raw(vol_client.post("/explain/gradcam", files=one_file, data=fields)),
                               _raw(vol_client.post("/explain/gradcam", files=_series_parts(files), data=fields)),
                               rtol=1e-5, atol=1e-7)
    refused = vol_client.post("/explain/gradcam", files=one_file, data={"outputs": "dicom-pm"})
    assert refused.status_code == 422 and "multi-frame" in refused.json()["detail"]


def test_keep_aspect_pads_the_volume_and_crops_the_map_back(tmp_path, volume):
    """keep_aspect: the 50 x 22.4 x 24 mm volume keeps its proportions inside [16, 24, 24] (16 x 7 x 8 voxels,
    centred, the rest the window's low end); the NIfTI map is the raw map on the input grid with the padding cut
    off, resampled to the source's voxels."""
    import nibabel as nib
    import torch.nn.functional as F

    from service.imaging.volume import decode_volume, volume_to_model_input

    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - name: vol\n    source: python:tests.engine.vol_support:tiny_net3d\n"
                    f"    spatial_dims: 3\n    input_size: {list(SIZE)}\n    channels: 1\n    window: [200, 800]\n"
                    "    keep_aspect: true\n    mean: [0.5]\n    std: [0.25]\n")
    nii = nifti_file(volume[0], SPACING)
    decoded = decode_volume(nii)
    x = volume_to_model_input(decoded, input_size=SIZE, channels=1, mean=[0.5], std=[0.25], window=(200, 800),
                              keep_aspect=True)
    assert decoded.content == ((0, 16, 16), (8, 15, 24), (8, 16, 24))
    assert torch.all(x[0, :, :8] == -2.0) and torch.all(x[0, :, 15:] == -2.0)   # (0 - 0.5) / 0.25 outside
    with make_client(models=str(path)) as c:
        wait_ready(c)
        body = c.post("/explain/gradcam", files={"image": ("v.nii.gz", nii, "x")},
                      data={"target": "1", "outputs": "raw,nifti"}).json()
    row = body["explanations"][0]
    raw = torch.from_numpy(decode_raw(row["raw"]).copy())
    on_input = F.interpolate(raw[None, None], size=SIZE, mode="trilinear", align_corners=False)[0, 0]
    expected = F.interpolate(on_input[0:16, 8:15, 8:16][None, None].contiguous(), size=SHAPE, mode="trilinear",
                             align_corners=False)[0, 0].numpy()
    returned = nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(row["nifti"])))
    np.testing.assert_allclose(np.asarray(returned.get_fdata()).transpose(2, 1, 0), expected, rtol=1e-4, atol=1e-7)


def test_oip_takes_a_volume_as_bytes_or_a_preprocessed_tensor(vol_client, volume):
    from service.imaging.volume import decode_volume, volume_to_model_input

    nii = nifti_file(volume[0], SPACING)
    meta = vol_client.get("/v2/models/vol").json()
    assert {"name": "input", "datatype": "FP32", "shape": [-1, 1, *SIZE]} in meta["inputs"]
    as_bytes = vol_client.post("/v2/models/vol/infer", json={"inputs": [{
        "name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(nii).decode()]}]})
    assert as_bytes.status_code == 200, as_bytes.text
    x = volume_to_model_input(decode_volume(nii), input_size=SIZE, channels=1, mean=[0.5], std=[0.25],
                              window=(200, 800))
    as_tensor = vol_client.post("/v2/models/vol/infer", json={"inputs": [{
        "name": "input", "shape": [1, 1, *SIZE], "datatype": "FP32", "data": x.flatten().tolist()}]})
    assert as_tensor.status_code == 200, as_tensor.text
    np.testing.assert_allclose(as_bytes.json()["outputs"][0]["data"], as_tensor.json()["outputs"][0]["data"],
                               rtol=1e-5, atol=1e-6)
