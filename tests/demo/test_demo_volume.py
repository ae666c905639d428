"""The demo 3-D model: the generator's exact masks, the shipped weights' held-out accuracy and 3-D Grad-CAM pointing
on an unseen seed, and the served ``demo-3d`` entry end to end from a DICOM series and from NIfTI."""

from __future__ import annotations

import numpy as np

from service.demo.volume_model import VOLUME_CLASSES, VOLUME_SIZE, evaluate_demo_volume, volume_sample
from service.demo.volumes import dicom_series, nifti_file
from tests.support import decode_raw

UNSEEN_SEED = 9091   # neither the training stream (1) nor the README's evaluation seed (7331)


def test_samples_are_reproducible_and_their_masks_exact():
    a, mask, label = volume_sample(3, 4)
    b, mask_b, label_b = volume_sample(3, 4)
    assert np.array_equal(a, b) and np.array_equal(mask, mask_b) and label == label_b
    assert a.shape == VOLUME_SIZE and mask.dtype == bool and 0.01 < mask.mean() < 0.5
    assert float(a[mask].mean()) > float(a[~mask].mean()) + 200   # the object is bright, every voxel of it
    assert {volume_sample(3, i)[2] for i in range(30)} == set(range(len(VOLUME_CLASSES)))


def test_shipped_weights_classify_and_point_inside_the_objects():
    result = evaluate_demo_volume(n=60, seed=UNSEEN_SEED)
    assert result["accuracy"] >= 0.9, result
    assert result["pointing_gradcam"] >= 0.85, result
    assert result["pointing_gradcam"] > 3 * result["pointing_random_voxel"], result


def test_the_served_demo_3d_explains_a_series_and_nifti_alike(client):
    voxels, mask, label = volume_sample(UNSEEN_SEED, 5)
    files = dicom_series(voxels)
    parts = [("image", (f"{k}.dcm", f, "application/dicom")) for k, f in enumerate(files[::-1])]
    fields = {"model": "demo-3d", "target": VOLUME_CLASSES[label], "outputs": "raw"}
    by_series = client.post("/explain/gradcam", files=parts, data=fields)
    by_nifti = client.post("/explain/gradcam", files={"image": ("v.nii.gz", nifti_file(voxels), "x")}, data=fields)
    assert by_series.status_code == 200, by_series.text
    a, b = decode_raw(by_series.json()["explanations"][0]["raw"]), decode_raw(by_nifti.json()["explanations"][0]["raw"])
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    predicted = client.post("/predict", files=parts, data={"model": "demo-3d"}).json()["predictions"][0]
    assert predicted["label"] == VOLUME_CLASSES[label]
    boxes = client.post("/localize", files=parts, data={"model": "demo-3d", "target": VOLUME_CLASSES[label]}).json()
    x0, y0, z0, x1, y1, z1 = boxes["boxes"][0]["box3d"]
    zs, ys, xs = np.nonzero(mask)
    inter = [max(0, min(hi, m.max() + 1) - max(lo, m.min())) for lo, hi, m in ((x0, x1, xs), (y0, y1, ys),
                                                                                (z0, z1, zs))]
    assert np.prod(inter) > 0, (boxes["boxes"][0], (xs.min(), xs.max(), ys.min(), ys.max(), zs.min(), zs.max()))
