"""``POST /display`` for volumes: a demo-3d volume as a DICOM series (several files, a zip), NIfTI and an enhanced
multi-frame file comes back as its values on the bounded display grid, checked against an independent resampling
(``scipy.ndimage.zoom``, linear, half-voxel grid) of the generator's voxels; what is too big or broken is a problem."""

from __future__ import annotations

import io
import random
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from service.demo.volume_model import VOLUME_WINDOW, volume_sample
from service.demo.volumes import dicom_series, nifti_file
from service.imaging.volume import DISPLAY_MAX_SIDE, DISPLAY_MAX_VOXELS, display_grid
from tests.support import decode_raw, make_client

SPACING = (2.5, 0.8, 0.8)   # the generators' default: 60 x 25.6 x 25.6 mm


@pytest.fixture(scope="module")
def client():
    with make_client() as c:
        yield c


@pytest.fixture(scope="module")
def voxels():
    v, _, _ = volume_sample(1, 0)   # what `xaas demo-volume DIR` writes (seed 1, index 0)
    return v


def _parts(files):
    return [("image", (f"slice{i:03d}.dcm", f, "application/dicom")) for i, f in enumerate(files)]


def _expected(v: np.ndarray, size) -> np.ndarray:
    """Trilinear resampling with half-voxel centres and clamped edges, by SciPy (not the service's torch path)."""
    zoom = [n / s for n, s in zip(size, v.shape)]
    return ndimage.zoom(v.astype(np.float64), zoom, order=1, mode="nearest", grid_mode=True)


def test_a_series_comes_back_on_the_display_grid(client, voxels):
    files = dicom_series(voxels, SPACING)
    random.Random(2).shuffle(files)   # upload order does not matter: slices are sorted by position
    r = client.post("/display", files=_parts(files))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "volume" and body["format"] == "dicom-series" and body["frames"] == 24
    assert body["image"] == {"width": 32, "height": 32, "depth": 24, "spacing": list(SPACING)}
    # the same 60 x 25.6 x 25.6 mm box in cubic voxels as fine as the finest spacing: 75 x 32 x 32 of 0.8 mm
    assert body["values"]["shape"] == [75, 32, 32]
    np.testing.assert_allclose(body["spacing"], [0.8, 0.8, 0.8])
    shown = decode_raw(body["values"])
    np.testing.assert_allclose(shown, _expected(voxels, (75, 32, 32)), rtol=0, atol=1e-3)
    assert body["range"] == [float(voxels.min()), float(voxels.max())]
    assert body["windows"] == [{"center": VOLUME_WINDOW[0], "width": VOLUME_WINDOW[1]}]   # the series' own window
    # one zip of the same files is the same volume
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, f in enumerate(files):
            z.writestr(f"s/{i}.dcm", f)
    zipped = client.post("/display", files={"image": ("s.zip", buf.getvalue(), "application/zip")}).json()
    np.testing.assert_array_equal(decode_raw(zipped["values"]), shown)


def test_nifti_and_an_enhanced_multiframe_file_are_volumes_too(client, voxels):
    import highdicom as hd
    import pydicom

    nii = client.post("/display", files={"image": ("v.nii.gz", nifti_file(voxels, SPACING), "application/gzip")})
    assert nii.status_code == 200, nii.text
    body = nii.json()
    assert body["kind"] == "volume" and body["format"] == "nifti" and body["windows"] == []
    np.testing.assert_allclose(decode_raw(body["values"]), _expected(voxels, (75, 32, 32)), rtol=0, atol=1e-3)
    sources = [pydicom.dcmread(io.BytesIO(f)) for f in dicom_series(voxels, SPACING)]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(sources, series_instance_uid=hd.UID(), series_number=7,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    out = io.BytesIO()
    enhanced.save_as(out)
    one = {"image": ("ct.dcm", out.getvalue(), "application/dicom")}
    as_frames = client.post("/display", files=one).json()   # without volume=true: a multi-frame image, frame 0
    assert as_frames["kind"] == "grey" and as_frames["frames"] == 24
    as_volume = client.post("/display", files=one, data={"volume": "true"}).json()
    assert as_volume["kind"] == "volume" and as_volume["format"] == "dicom-multiframe"
    np.testing.assert_allclose(decode_raw(as_volume["values"]), _expected(voxels, (75, 32, 32)), rtol=0, atol=1e-3)


@pytest.mark.parametrize(("shape", "spacing"), [((300, 512, 512), (2.5, 0.7, 0.7)), ((600, 512, 512), (0.5,) * 3),
                                                 ((2, 3000, 40), (5.0, 0.1, 0.1)), ((24, 32, 32), SPACING)])
def test_the_display_grid_is_bounded_and_keeps_proportions(shape, spacing):
    grid = display_grid(shape, spacing)
    assert max(grid) <= DISPLAY_MAX_SIDE and np.prod(grid) <= DISPLAY_MAX_VOXELS and min(grid) >= 1
    extent = np.multiply(shape, spacing)
    step = extent / np.asarray(grid)
    big = np.asarray(grid) > 20   # sides of a few voxels cannot keep the ratio to better than their rounding
    assert np.ptp(step[big]) / step[big].mean() < 0.03
    assert step.min() >= min(spacing) - 1e-9   # never finer than the source's finest spacing


def test_too_big_and_broken_volumes_are_problems(voxels):
    files = dicom_series(voxels, SPACING)
    with make_client(max_voxels=10_000) as c:
        big = c.post("/display", files=_parts(files))
        assert big.status_code == 413 and big.headers["content-type"] == "application/problem+json"
        assert "voxels" in big.json()["detail"]
    with make_client() as c:
        gap = c.post("/display", files=_parts(files[:10] + files[11:]))   # a missing slice
        assert gap.status_code == 422 and "evenly spaced" in gap.json()["detail"]
        bad_zip = c.post("/display", files={"image": ("s.zip", b"PK\x03\x04" + b"\0" * 64, "application/zip")})
        assert bad_zip.status_code == 422 and "zip" in bad_zip.json()["detail"]
        bad_gz = c.post("/display", files={"image": ("v.nii.gz", b"\x1f\x8b" + b"\0" * 64, "application/gzip")})
        assert bad_gz.status_code == 422 and bad_gz.headers["content-type"] == "application/problem+json"
        mixed = c.post("/display", files=_parts(files[:3]) + [("image", ("x.png", b"\x89PNG\r\n\x1a\n", "image/png"))])
        assert mixed.status_code == 422 and "file 4" in mixed.json()["detail"]
        single = c.post("/display", files=_parts(files[:1]), data={"volume": "true"})
        assert single.status_code == 422 and "not a volume" in single.json()["detail"]
