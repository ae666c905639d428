"""Volumes: a DICOM series (a zip, or several files bundled by the HTTP layer), an enhanced multi-frame DICOM file, or
NIfTI (``.nii``, ``.nii.gz``) → :class:`Volume`, and from it the model input.

A series is sorted by the position of each slice along the slice normal (``ImagePositionPatient`` projected on
``row × column`` of ``ImageOrientationPatient``), never by file order or ``InstanceNumber``; slices must share their
size, orientation and pixel spacing, and be evenly spaced (a gap is a missing slice): each violation is a 422 naming
it. Limits (files, slices, voxels, decompressed bytes) are checked from headers before pixel data is decoded.

Coordinates: ``affine`` maps voxel indices ``(i, j, k)`` = (column, row, slice) to patient millimetres. DICOM
volumes are in DICOM's LPS frame; NIfTI affines are RAS (the file's own), converted to LPS so that both read alike
(``x_LPS = -x_RAS``, ``y_LPS = -y_RAS``).
"""

from __future__ import annotations

import gzip
import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidImage, PayloadTooLarge

__all__ = ["DISPLAY_MAX_SIDE", "DISPLAY_MAX_VOXELS", "Volume", "VolumeGeometry", "VolumeLimits", "decode_volume",
           "display_grid", "is_volume_container", "nifti_bytes", "resample_volume", "volume_to_model_input"]

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class VolumeLimits:
    """Bounds checked before voxels are decoded."""

    max_files: int = 2048
    max_slices: int = 2048
    max_voxels: int = 160_000_000        # 512 x 512 x 600
    max_side: int = 4096
    max_decompressed_bytes: int = 1 << 30   # zip members and gzip streams, together


@dataclass(frozen=True)
class VolumeGeometry:
    """What rendering a volume's map needs once its voxels are gone (a cache hit): the grid and its placement."""

    depth: int
    height: int
    width: int
    affine: tuple[tuple[float, ...], ...]   # 4x4, voxel (i, j, k) → LPS mm
    #: Where the volume lies in the model input when ``keep_aspect`` padded it: (start, stop, input side) per axis
    #: (D, H, W); None when the volume was stretched onto the whole input.
    content: tuple[tuple[int, int, int], ...] | None = None

    @property
    def size(self) -> tuple[int, int, int]:
        """(D, H, W)."""
        return (self.depth, self.height, self.width)

    @property
    def spacing(self) -> tuple[float, float, float]:
        cols = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)
        return (float(cols[2]), float(cols[1]), float(cols[0]))

    def to_mm(self, ijk: Any) -> np.ndarray:
        a = np.asarray(self.affine)
        return np.asarray(ijk, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


@dataclass
class Volume:
    """Voxels ``[D, H, W]`` float32 in the data's units (rescaled DICOM values, NIfTI scaled data), slice 0 first
    along the slice normal; ``affine`` voxel (i=column, j=row, k=slice) → LPS mm; ``window`` (centre, width) when
    the files carry one; ``datasets``: the DICOM slices in volume order (headers only, no pixel data) for results."""

    voxels: np.ndarray
    affine: np.ndarray
    format: str
    window: tuple[float, float] | None = None
    datasets: list[Any] = field(default_factory=list, repr=False)
    #: Set by :func:`volume_to_model_input`: where the voxels lie in the model input (see VolumeGeometry.content).
    content: tuple[tuple[int, int, int], ...] | None = None

    @property
    def depth(self) -> int:
        return int(self.voxels.shape[0])

    @property
    def height(self) -> int:
        return int(self.voxels.shape[1])

    @property
    def width(self) -> int:
        return int(self.voxels.shape[2])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm as (slice, row, column) = (z, y, x) steps."""
        cols = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(cols[2]), float(cols[1]), float(cols[0]))

    def to_mm(self, ijk: np.ndarray) -> np.ndarray:
        """Voxel coordinates ``[..., 3]`` (i, j, k) → LPS mm ``[..., 3]``."""
        return self.geometry.to_mm(ijk)

    @property
    def geometry(self) -> VolumeGeometry:
        return VolumeGeometry(self.depth, self.height, self.width,
                              tuple(tuple(float(v) for v in row) for row in self.affine), self.content)


def is_volume_container(data: bytes) -> bool:
    """A zip, a gzip stream or a bare NIfTI header: what a volume model takes and a 2-D decoder never does."""
    return data[:4] == b"PK\x03\x04" or data[:2] == b"\x1f\x8b" or _is_nifti(data)


def _is_nifti(data: bytes) -> bool:
    return len(data) >= 348 and data[344:348] in (b"n+1\x00", b"ni1\x00")


def decode_volume(data: bytes, limits: VolumeLimits | None = None) -> Volume:
    """Bytes of a zip of DICOM files, a (gzipped) NIfTI file or a multi-frame DICOM file → :class:`Volume`."""
    limits = limits or VolumeLimits()
    if data[:4] == b"PK\x03\x04":
        return _dicom_series(_zip_members(data, limits), limits)
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, limits)
        if not _is_nifti(data):
            raise InvalidImage("a gzip stream that is not a NIfTI file (.nii.gz); send a zip for a DICOM series")
    if _is_nifti(data):
        return _nifti(data, limits)
    if len(data) > 132 and data[128:132] == b"DICM":
        return _dicom_series([data], limits)
    raise InvalidImage("not a volume: send a DICOM series (several files, or one zip), a multi-frame DICOM file or "
                       "NIfTI (.nii / .nii.gz)")


def _gunzip(data: bytes, limits: VolumeLimits) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limits.max_decompressed_bytes + 1)
    except (OSError, EOFError) as exc:
        raise InvalidImage(f"broken gzip stream: {exc}") from None
    if len(out) > limits.max_decompressed_bytes:
        raise PayloadTooLarge(f"the gzip stream inflates beyond {limits.max_decompressed_bytes} bytes")
    return out


def _zip_members(data: bytes, limits: VolumeLimits) -> list[bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = [i for i in archive.infolist() if not i.is_dir() and not i.filename.upper().endswith("DICOMDIR")]
    except zipfile.BadZipFile as exc:
        raise InvalidImage(f"broken zip archive: {exc}") from None
    if not infos:
        raise InvalidImage("the zip archive holds no files")
    if len(infos) > limits.max_files:
        raise PayloadTooLarge(f"the zip archive holds {len(infos)} files, above the limit of {limits.max_files}")
    total = sum(i.file_size for i in infos)   # declared sizes: checked again while reading
    if total > limits.max_decompressed_bytes:
        raise PayloadTooLarge(f"the zip archive inflates to {total} bytes, above {limits.max_decompressed_bytes}")
    out, read = [], 0
    try:
        for info in infos:
            with archive.open(info) as member:
                blob = member.read(limits.max_decompressed_bytes - read + 1)
            read += len(blob)
            if read > limits.max_decompressed_bytes:
                raise PayloadTooLarge(f"the zip archive inflates beyond {limits.max_decompressed_bytes} bytes")
            out.append(blob)
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:   # RuntimeError: encrypted members
        raise InvalidImage(f"cannot read the zip archive: {exc}") from None
    return out


# --------------------------------------------------------------------------------------------------- DICOM


def _dicom_series(blobs: list[bytes], limits: VolumeLimits) -> Volume:
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for n, blob in enumerate(blobs):
        try:
            ds = pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        except (InvalidDicomError, Exception) as exc:  # noqa: BLE001 - any unreadable member is the client's input
            raise InvalidImage(f"file {n + 1} of the series is not a readable DICOM file ({type(exc).__name__})") \
                from None
        headers.append((ds, blob))
    if len(headers) == 1 and int(getattr(headers[0][0], "NumberOfFrames", 1) or 1) > 1:
        return _multiframe(*headers[0], limits)
    if len(headers) == 1:
        raise InvalidImage("one single-frame DICOM file is an image, not a volume: send every slice of the series "
                           "(or a multi-frame file)")
    rows = {(int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for ds, _ in headers}
    if len(rows) != 1:
        raise InvalidImage(f"the series mixes slice sizes ({', '.join(f'{c}x{r}' for r, c in sorted(rows))})")
    (h, w), d = rows.pop(), len(headers)
    _check_size(d, h, w, limits)
    orientation = _common(headers, "ImageOrientationPatient", "orientations")
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    spacing = _common(headers, "PixelSpacing", "pixel spacings")
    positions = []
    for ds, _ in headers:
        if "ImagePositionPatient" not in ds:
            raise InvalidImage("a slice of the series has no ImagePositionPatient: its place in the volume is unknown")
        positions.append(np.array([float(v) for v in ds.ImagePositionPatient]))
    along = np.array([float(p @ normal) for p in positions])
    order = np.argsort(along, kind="stable")
    along = along[order]
    steps = np.diff(along)
    if d > 1:
        if np.any(steps < 1e-3 * max(1.0, float(np.abs(steps).max()))):
            raise InvalidImage("two slices of the series share a position (duplicates, or several series mixed)")
        median = float(np.median(steps))
        if np.any(np.abs(steps - median) > 0.2 * median):
            worst = int(np.argmax(np.abs(steps - median)))
            raise InvalidImage(f"the slices are not evenly spaced (a step of {steps[worst]:.3g} mm between slices "
                               f"{worst + 1} and {worst + 2}, median {median:.3g} mm): a slice is missing")
        dz = median
    else:
        dz = float(getattr(headers[0][0], "SliceThickness", 1.0) or 1.0)
    voxels = np.empty((d, h, w), dtype=np.float32)
    datasets = []
    for out_index, k in enumerate(order.tolist()):
        ds = _read_pixels(headers[k][1], k)
        voxels[out_index] = _rescaled(ds, ds.pixel_array)
        datasets.append(headers[k][0])
    dy, dx = (float(v) for v in spacing)   # PixelSpacing = (row spacing, column spacing)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * dx
    affine[:3, 1] = col_dir * dy
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[int(order[0])]
    return Volume(voxels, affine, "dicom-series", _window(datasets[0]), datasets)


def _multiframe(ds: Any, blob: bytes, limits: VolumeLimits) -> Volume:
    frames = int(ds.NumberOfFrames)
    h, w = int(ds.Rows), int(ds.Columns)
    _check_size(frames, h, w, limits)
    try:
        groups = ds.PerFrameFunctionalGroupsSequence
        shared = ds.SharedFunctionalGroupsSequence[0]
        orientation = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
        spacing = [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing]
        positions = [np.array([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient]) for g in groups]
    except (AttributeError, IndexError, KeyError):
        raise InvalidImage("a multi-frame DICOM volume needs the enhanced functional groups (per-frame "
                           "PlanePositionSequence, shared PlaneOrientationSequence and PixelMeasuresSequence)"
                           ) from None
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    along = np.array([float(p @ normal) for p in positions])
    order = np.argsort(along, kind="stable")
    full = _read_pixels(blob, 0)
    pixels = np.asarray(full.pixel_array)
    voxels = np.stack([_rescaled(_frame_transform(shared, groups[k]), pixels[k])
                       for k in order.tolist()]).astype(np.float32)
    dz = float(np.median(np.diff(along[order]))) if frames > 1 else 1.0
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = normal * dz
    affine[:3, 3] = positions[int(order[0])]
    return Volume(voxels, affine, "dicom-multiframe", _window(_frame_voi(shared, groups[0]) or ds), [ds])


def _frame_transform(shared: Any, frame: Any) -> Any:
    """Where an enhanced object keeps a frame's RescaleSlope/Intercept: its own PixelValueTransformationSequence,
    else the shared one (the top-level attributes are not used by enhanced IODs)."""
    for group in (frame, shared):
        sequence = getattr(group, "PixelValueTransformationSequence", None)
        if sequence:
            return sequence[0]
    return shared


def _frame_voi(shared: Any, frame: Any) -> Any:
    for group in (frame, shared):
        sequence = getattr(group, "FrameVOILUTSequence", None)
        if sequence:
            return sequence[0]
    return None


def _read_pixels(blob: bytes, index: int) -> Any:
    import pydicom

    ds = None
    try:
        ds = pydicom.dcmread(io.BytesIO(blob))
        _ = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - the decoder's refusal is the client's input problem
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        named = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise InvalidImage(f"the pixel data of slice file {index + 1} cannot be decoded{named}: "
                           f"{type(exc).__name__}") from None
    return ds


def _common(headers: list[tuple[Any, bytes]], keyword: str, what: str) -> list[float]:
    values = set()
    for ds, _ in headers:
        if keyword not in ds:
            raise InvalidImage(f"a slice of the series has no {keyword}")
        values.add(tuple(round(float(v), 4) for v in ds.data_element(keyword).value))
    if len(values) != 1:
        raise InvalidImage(f"the series mixes {what} ({keyword}): slices of several series or a reformatted stack")
    return list(values.pop())


def _rescaled(ds: Any, pixels: np.ndarray) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return np.asarray(pixels, dtype=np.float32) * slope + intercept


def _window(ds: Any) -> tuple[float, float] | None:
    centre, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if centre is None or width is None:
        return None
    centre, width = _first_value(centre), _first_value(width)
    return (centre, width) if width > 0 else None


def _first_value(value: Any) -> float:
    """A window value, or the first of several (DICOM allows a list of windows)."""
    return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)


def _check_size(depth: int, height: int, width: int, limits: VolumeLimits) -> None:
    if min(depth, height, width) <= 0:
        raise InvalidImage(f"the volume has zero size ({width}x{height}x{depth})")
    if depth > limits.max_slices:
        raise PayloadTooLarge(f"the volume has {depth} slices, above the limit of {limits.max_slices}")
    if max(height, width) > limits.max_side:
        raise PayloadTooLarge(f"slices of {width}x{height} exceed the side limit of {limits.max_side}")
    if depth * height * width > limits.max_voxels:
        raise PayloadTooLarge(f"the volume has {depth * height * width:.3g} voxels, above the limit of "
                              f"{limits.max_voxels}")


# --------------------------------------------------------------------------------------------------- NIfTI


def _nifti(data: bytes, limits: VolumeLimits) -> Volume:
    import nibabel as nib

    try:
        image = nib.Nifti1Image.from_bytes(data)
        shape = image.header.get_data_shape()
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds for a broken header
        raise InvalidImage(f"not a readable NIfTI file: {type(exc).__name__}: {str(exc)[:200]}") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidImage(f"a NIfTI volume must be 3-D, this one is {len(shape)}-D {tuple(shape)}")
    # NIfTI stores (i, j, k) = (x, y, z) fastest-first; the volume is [k, j, i] = [D, H, W].
    _check_size(int(shape[2]), int(shape[1]), int(shape[0]), limits)
    try:
        array = np.asarray(image.get_fdata(dtype=np.float32)).reshape(shape)
    except Exception as exc:  # noqa: BLE001
        raise InvalidImage(f"the NIfTI voxel data cannot be read: {type(exc).__name__}") from None
    voxels = np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32)
    affine = _RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)
    return Volume(voxels, affine, "nifti")


def nifti_bytes(values: np.ndarray, affine_lps: np.ndarray) -> bytes:
    """``values`` ``[D, H, W]`` as a gzipped NIfTI-1 file whose affine is ``affine_lps`` (voxel → LPS mm) in NIfTI's
    RAS convention."""
    import nibabel as nib

    # [D, H, W] in C order is NIfTI's (i, j, k) in Fortran order: the transposed view is written without a copy.
    image = nib.Nifti1Image(np.asarray(values, dtype=np.float32).transpose(2, 1, 0), _RAS_TO_LPS @ affine_lps)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


# --------------------------------------------------------------------------------------------------- display grid

#: Bounds of the grid a viewer is sent (``/display``): each side, and all voxels (2^21 = 8 MiB of float32).
DISPLAY_MAX_SIDE = 256
DISPLAY_MAX_VOXELS = 1 << 21


def display_grid(shape: tuple[int, int, int], spacing: tuple[float, float, float], *,
                 max_side: int = DISPLAY_MAX_SIDE, max_voxels: int = DISPLAY_MAX_VOXELS) -> tuple[int, int, int]:
    """The (D, H, W) a viewer gets for a volume of ``shape`` voxels of ``spacing`` mm: the same physical box cut
    into (near) cubic voxels (physical proportions kept), as fine as the finest spacing of the source, coarser where
    needed to keep every side within ``max_side`` and the total within ``max_voxels``."""
    extent = [n * max(float(s), 1e-6) for n, s in zip(shape, spacing)]
    step = max(min(max(float(s), 1e-6) for s in spacing), max(extent) / max_side,
               (extent[0] * extent[1] * extent[2] / max_voxels) ** (1 / 3))
    while True:
        grid = tuple(max(1, min(max_side, round(e / step))) for e in extent)
        if grid[0] * grid[1] * grid[2] <= max_voxels:
            return grid
        step *= 1.01   # rounding up on every axis overshot the voxel bound by a little


def resample_volume(voxels: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """``voxels`` ``[D, H, W]`` resampled trilinearly (half-voxel centres, edges clamped) to ``size``: float32."""
    if tuple(voxels.shape) == tuple(size):
        return np.ascontiguousarray(voxels, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)[0, 0].numpy()


# --------------------------------------------------------------------------------------------------- model input


def volume_to_model_input(volume: Volume, *, input_size: tuple[int, int, int], channels: int, mean: Any, std: Any,
                          window: tuple[float, float] | None = None, keep_aspect: bool = False) -> torch.Tensor:
    """Float32 ``[channels, D, H, W]``: the window (the entry's, else the files', else the volume's range) maps
    values to [0, 1], the whole volume is resampled trilinearly to ``input_size`` = (D, H, W), then normalised.

    ``keep_aspect``: resampled instead to the largest size that keeps its physical proportions (voxel counts x
    spacing) inside ``input_size``, centred, the rest filled with the window's low end (0 after windowing); where
    it lies is recorded in ``volume.content`` so that maps are cropped back to the voxels before resampling."""
    v = torch.from_numpy(volume.voxels)
    chosen = window or volume.window
    if chosen is not None:
        lo, hi = chosen[0] - chosen[1] / 2, chosen[0] + chosen[1] / 2
    else:
        lo, hi = float(v.min()), float(v.max())
    # One copy of the voxels, changed in place: a 512 x 512 x 600 CT is 600 MiB of float32 per temporary.
    x = v.clone().sub_(lo).div_(max(hi - lo, 1e-12)).clamp_(0, 1)[None, None]
    target = tuple(int(s) for s in input_size)
    if keep_aspect:
        extent = [n * s for n, s in zip(volume.voxels.shape, volume.spacing)]
        scale = min(t / e for t, e in zip(target, extent))
        inner = tuple(max(1, min(t, round(e * scale))) for t, e in zip(target, extent))
        x = F.interpolate(x, size=inner, mode="trilinear", align_corners=False)
        starts = [(t - i) // 2 for t, i in zip(target, inner)]
        padded = x.new_zeros((1, 1, *target))
        padded[0, 0, starts[0]:starts[0] + inner[0], starts[1]:starts[1] + inner[1],
               starts[2]:starts[2] + inner[2]] = x[0, 0]
        x = padded
        volume.content = tuple((s, s + i, t) for s, i, t in zip(starts, inner, target))
    elif tuple(x.shape[2:]) != target:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    x = x[0].expand(channels, -1, -1, -1)
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    shape = (-1, 1, 1, 1)
    return ((x - m.view(shape)) / s.view(shape)).contiguous()
