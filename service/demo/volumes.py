"""Synthetic volumes for the 3-D path: shapes with exact masks, written as a DICOM series (pydicom, proper UIDs and
geometry) or as NIfTI, so that the series path is tested end to end on data whose every voxel is known.

Example::

    volume, masks, labels = shapes_volume(np.random.default_rng(0), size=(24, 32, 32))
    files = dicom_series(volume, spacing=(2.5, 0.8, 0.8))        # list of Part-10 bytes, shuffled by the caller
    nii = nifti_file(volume, spacing=(2.5, 0.8, 0.8))           # the same voxels and geometry as .nii.gz bytes
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

__all__ = ["SHAPES", "dicom_series", "series_affine", "nifti_file", "shapes_volume"]

SHAPES = ("sphere", "cube")


def shapes_volume(rng: np.random.Generator, size: Sequence[int] = (24, 32, 32), count: int = 2
                  ) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """A volume ``[D, H, W]`` of noisy background (CT-like values around 0 HU) with ``count`` bright shapes; their
    exact boolean masks and names."""
    d, h, w = (int(s) for s in size)
    volume = rng.normal(0.0, 20.0, (d, h, w)).astype(np.float32)
    zz, yy, xx = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    masks, names = [], []
    for _ in range(count):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        r = rng.uniform(0.15, 0.22) * min(d, h, w)
        c = [rng.uniform(r + 1, s - r - 1) for s in (d, h, w)]
        if kind == "sphere":
            mask = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r
        else:
            mask = (np.abs(zz - c[0]) <= r) & (np.abs(yy - c[1]) <= r) & (np.abs(xx - c[2]) <= r)
        volume[mask] += 400.0
        masks.append(mask)
        names.append(kind)
    return np.rint(volume), masks, names   # whole HU, as a CT stores them: the series and NIfTI hold equal values


def series_affine(spacing: Sequence[float], origin: Sequence[float] = (-100.0, -120.0, 40.0)) -> np.ndarray:
    """The axial LPS affine of :func:`dicom_series`: voxel (i, j, k) → mm."""
    dz, dy, dx = (float(s) for s in spacing)
    affine = np.diag([dx, dy, dz, 1.0])
    affine[:3, 3] = origin
    return affine


def dicom_series(volume: np.ndarray, spacing: Sequence[float] = (2.5, 0.8, 0.8),
                 origin: Sequence[float] = (-100.0, -120.0, 40.0), *, window: tuple[float, float] = (200.0, 800.0),
                 patient: str = "Synthetic^Volume") -> list[bytes]:
    """One axial CT Part-10 file per slice (int16 with RescaleSlope 1, RescaleIntercept -1024), slice ``k`` at
    ``origin + k * dz`` along the normal; shared Study/Series/Frame of Reference UIDs, InstanceNumber in order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    dz, dy, dx = (float(s) for s in spacing)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    stored = np.clip(np.rint(volume + 1024.0), -32768, 32767).astype(np.int16)
    out = []
    for k in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.Modality = patient, "SYN0001", "CT"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.PatientBirthDate, ds.PatientSex, ds.ReferringPhysicianName = "", "O", ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + k * dz]
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = stored[k].tobytes()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def nifti_file(volume: np.ndarray, spacing: Sequence[float] = (2.5, 0.8, 0.8),
               origin: Sequence[float] = (-100.0, -120.0, 40.0)) -> bytes:
    """The same voxels and geometry as :func:`dicom_series`, as ``.nii.gz`` bytes (RAS affine, float32)."""
    from ..imaging.volume import nifti_bytes

    return nifti_bytes(volume.astype(np.float32), series_affine(spacing, origin))
