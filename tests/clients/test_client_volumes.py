"""The client on the shipped volume model (``demo-3d``) against a live server: a DICOM series as a folder, as a list
of paths or bytes (sent as one zip) and NIfTI give the same map; 3-D boxes and volume members are typed through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.demo.volume_model import VOLUME_CLASSES, volume_sample
from service.demo.volumes import dicom_series, nifti_file
from xaas_client import Client, InvalidInput


def test_a_series_in_every_form_and_nifti_explain_alike(server: str, tmp_path: Path):
    voxels, _, label = volume_sample(5, 2)
    files = dicom_series(voxels)
    folder = tmp_path / "series"
    folder.mkdir()
    for k, blob in enumerate(files[::-1]):
        (folder / f"s{k:03d}.dcm").write_bytes(blob)
    nii = tmp_path / "v.nii.gz"
    nii.write_bytes(nifti_file(voxels))
    with Client(server) as xaas:
        forms = {"folder": folder, "paths": sorted(folder.iterdir()), "bytes": files, "nifti": nii}
        maps = {k: xaas.explain("gradcam", v, model="demo-3d", target=VOLUME_CLASSES[label],
                                outputs="raw").explanations[0].raw_array() for k, v in forms.items()}
        for k, m in maps.items():
            assert m.ndim == 3, k
            np.testing.assert_allclose(m, maps["nifti"], rtol=1e-5, atol=1e-7, err_msg=k)
        predicted = xaas.predict(folder, model="demo-3d")
        assert predicted.predictions[0].label == VOLUME_CLASSES[label]
        assert predicted.image.depth == voxels.shape[0]
        box = xaas.localize(nii, model="demo-3d", target=VOLUME_CLASSES[label]).boxes[0]
        assert len(box.box3d) == 6 and len(box.box_mm) == 6
        with pytest.raises(InvalidInput, match="volume"):
            xaas.predict(files[:3], model="demo")          # a 2-D model refuses a series
        with pytest.raises(ValueError, match="at least one"):
            xaas.predict([], model="demo-3d")
