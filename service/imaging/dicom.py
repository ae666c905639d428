"""DICOM through pydicom: detection, header checks, transfer syntax and the LUT pipeline to [0, 1].

* **Detection.** DICOM Part 10 is detected by ``DICM`` at offset 128 (:func:`has_dicom_magic`); a DICOM stream
  without preamble (:func:`read_dicom_without_preamble`) is tried only when PIL cannot identify the bytes.
* **Limits before decoding.** Rows, Columns and NumberOfFrames are read from the parsed header and checked before
  any pixel data is decoded; pydicom's reader leaves the pixel bytes raw until :func:`pydicom.pixels.pixel_array`.
* **Grey pipeline:** stored values → Modality LUT (rescale slope/intercept or LUT) → VOI LUT or window (first one
  when several are given) → [0, 1]; when the file has no (valid) VOI LUT/window the min–max of the selected frame is
  used. MONOCHROME1 is inverted afterwards so that 1.0 is always white. Colour (RGB, YBR converted by pydicom,
  PALETTE COLOR) is scaled by its bit depth.
* **PHI rule.** pydicom messages and attribute values never reach an error detail or a log line. Only the
  pixel-module attributes are ever accessed (so pydicom does not even convert/validate identifying elements),
  pydicom exceptions are re-raised "from None" (no chained message in tracebacks), and details mention geometry and
  problem names only.

pydicom is imported on first use: a process that never sees a DICOM file never loads it.
"""

from __future__ import annotations

import copy
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

from .common import DecodedImage, ImageLimits, check_frame_index, check_size, min_max

__all__ = ["GreyDisplay", "decode_dicom", "dicom_grey_display", "has_dicom_magic", "read_dicom",
           "read_dicom_without_preamble"]

_PIXEL_DATA_KEYWORDS: tuple[str, ...] = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_dicom_magic(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_dicom(data: bytes) -> Any:
    """Parse a Part 10 file (header + raw pixel bytes; pixels are not decoded here)."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for a corrupt header: all are the client's problem
        raise InvalidImage("DICOM file is corrupt: its header could not be parsed") from None


# Groups that a DICOM data set written without preamble/meta plausibly starts with (file meta, identifying module).
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0008})


def read_dicom_without_preamble(data: bytes) -> Any | None:
    """Try a preamble-less DICOM stream; ``None`` unless it really looks like DICOM.

    pydicom's ``force=True`` reads almost any bytes as *something*, so the stream must start with a plausible group
    and the result must carry pixel data or a SOP Class UID; random bytes therefore still get "not recognised".
    """
    if len(data) < 8:
        return None
    first_group_le = int.from_bytes(data[0:2], "little")
    first_group_be = int.from_bytes(data[0:2], "big")
    if first_group_le not in _PLAUSIBLE_FIRST_GROUPS and first_group_be not in _PLAUSIBLE_FIRST_GROUPS:
        return None
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        if any(keyword in dataset for keyword in _PIXEL_DATA_KEYWORDS) or "SOPClassUID" in dataset:
            return dataset
    except Exception:  # noqa: BLE001 - sniffing only: anything pydicom cannot parse is simply not DICOM
        return None
    return None


@dataclass(frozen=True)
class _DicomGeometry:
    rows: int
    columns: int
    frames: int
    samples: int
    photometric: str
    pixel_keyword: str


def decode_dicom(ds: Any, limits: ImageLimits, frame: int | None) -> DecodedImage:
    geometry = _dicom_geometry(ds)
    check_size(geometry.columns, geometry.rows, limits)
    if geometry.frames > limits.max_frames:
        raise PayloadTooLarge(f"DICOM file has {geometry.frames} frames, above the limit of {limits.max_frames}")
    index = 0 if frame is None else int(frame)
    check_frame_index(index, geometry.frames, limits)
    _ensure_transfer_syntax(ds, geometry)
    stored = _decode_dicom_frame(ds, geometry, index)
    pixels = _dicom_to_unit(stored, ds, geometry, index)
    height, width = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=width, height=height, format="DICOM", frames=geometry.frames)


def _int_attribute(ds: Any, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword, None)
    except Exception:  # noqa: BLE001 - a malformed attribute of any kind is the client's problem
        raise InvalidImage(f"DICOM attribute {keyword} is malformed") from None
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidImage(f"DICOM attribute {keyword} is not an integer") from None


def _dicom_geometry(ds: Any) -> _DicomGeometry:
    """Read (only) the pixel-module header attributes needed to check limits and decode."""
    pixel_keyword = next((kw for kw in _PIXEL_DATA_KEYWORDS if kw in ds), None)
    if pixel_keyword is None:
        raise InvalidImage("DICOM file has no pixel data (it is not an image object, e.g. a plan or report)")
    rows = _int_attribute(ds, "Rows")
    columns = _int_attribute(ds, "Columns")
    if rows is None or columns is None:
        raise InvalidImage("DICOM image is missing Rows or Columns")
    frames = _int_attribute(ds, "NumberOfFrames", 1)
    assert frames is not None
    if frames < 1:
        raise InvalidImage("DICOM NumberOfFrames must be at least 1")
    samples = _int_attribute(ds, "SamplesPerPixel", 1)
    assert samples is not None
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        if samples != 1:
            raise InvalidImage("DICOM colour image is missing PhotometricInterpretation")
        photometric = "MONOCHROME2"
        ds.PhotometricInterpretation = photometric
    if samples not in (1, 3):
        raise UnsupportedMediaType(f"DICOM images with {samples} samples per pixel are not supported")
    return _DicomGeometry(rows, columns, frames, samples, photometric, pixel_keyword)


def _ensure_transfer_syntax(ds: Any, geometry: _DicomGeometry) -> None:
    """Give a meta-less (force-read) data set the transfer syntax it was actually encoded with."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if geometry.pixel_keyword == "PixelData" and getattr(ds["PixelData"], "is_undefined_length", False):
        raise InvalidImage("DICOM file has compressed pixel data but no transfer syntax")
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if little is False:
        uid = ExplicitVRBigEndian
    elif implicit:
        uid = ImplicitVRLittleEndian
    else:
        uid = ExplicitVRLittleEndian
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid


def _transfer_syntax_name(ds: Any) -> str:
    """A transfer syntax's *dictionary* name (never the raw UID string from the file)."""
    try:
        uid = ds.file_meta.TransferSyntaxUID
        if uid.is_transfer_syntax and uid.name != str(uid):
            return uid.name
    except Exception:  # noqa: BLE001 - only a name for a message: a malformed UID falls back to "unknown"
        pass
    return "an unknown transfer syntax"


def _decode_dicom_frame(ds: Any, geometry: _DicomGeometry, index: int) -> np.ndarray:
    """Decode one frame of stored values (YBR colour is converted to RGB by pydicom)."""
    from pydicom.pixels import get_decoder, pixel_array

    if geometry.pixel_keyword == "PixelData":
        try:
            decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        except Exception:  # noqa: BLE001 - no decoder of any kind for this transfer syntax
            raise UnsupportedMediaType(
                f"DICOM pixel data in {_transfer_syntax_name(ds)} cannot be decoded by this service"
            ) from None
        if not decoder.is_available:
            raise UnsupportedMediaType(
                f"no decoder is installed for DICOM pixel data in {_transfer_syntax_name(ds)}"
            )
    try:
        arr = pixel_array(ds, index=index if geometry.frames > 1 else None)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - never leak a decoder exception (or its message) to a client
        raise InvalidImage(_dicom_decode_failure(exc, ds)) from None
    expected = (geometry.rows, geometry.columns) + ((3,) if geometry.samples == 3 else ())
    if arr.shape != expected:
        raise InvalidImage("DICOM pixel data does not match its declared Rows/Columns/SamplesPerPixel")
    return arr


def _dicom_decode_failure(exc: Exception, ds: Any) -> str:
    text = str(exc).lower()
    if "less than expected" in text or "truncat" in text or isinstance(exc, EOFError):
        return "DICOM pixel data is truncated"
    return f"DICOM pixel data in {_transfer_syntax_name(ds)} is corrupt and could not be decoded"


def _dicom_to_unit(stored: np.ndarray, ds: Any, geometry: _DicomGeometry, index: int) -> np.ndarray:
    try:
        if geometry.photometric == "PALETTE COLOR":
            return _palette_to_unit(stored, ds)
        if geometry.samples == 3:
            return _colour_to_unit(stored, ds)
        if geometry.pixel_keyword != "PixelData":  # float pixel data: no LUTs apply, no nominal range
            grey = min_max(stored.astype(np.float32))
        else:
            grey = _grey_to_unit(stored, _frame_view(ds, index))
    except (InvalidImage, UnsupportedMediaType):
        raise
    except Exception:  # noqa: BLE001 - a malformed LUT or pixel module of any kind is the client's problem
        raise InvalidImage("DICOM pixel values could not be converted (malformed LUT or pixel module)") from None
    if geometry.photometric == "MONOCHROME1":
        grey = np.float32(1.0) - grey
    return np.ascontiguousarray(grey[:, :, None], dtype=np.float32)


def _colour_to_unit(rgb: np.ndarray, ds: Any) -> np.ndarray:
    bits = _int_attribute(ds, "BitsStored") or 8 * rgb.dtype.itemsize
    scale = 1.0 / (2.0 ** min(bits, 32) - 1.0)
    return np.clip(rgb.astype(np.float32) * np.float32(scale), 0.0, 1.0)


def _palette_to_unit(stored: np.ndarray, ds: Any) -> np.ndarray:
    from pydicom.pixels import apply_color_lut

    rgb = apply_color_lut(stored, ds)
    maximum = 255.0 if rgb.dtype == np.uint8 else 65535.0
    return np.clip(rgb.astype(np.float32) / np.float32(maximum), 0.0, 1.0)


# Pixel-module attributes a grey frame's LUT pipeline needs, copied into a private view so pydicom's helpers (which
# assign to the data set) never touch the caller's data set and never see anything identifying.
_VIEW_KEYWORDS: tuple[str, ...] = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)


def _frame_view(ds: Any, index: int) -> Any:
    """A small data set with the LUT attributes that apply to frame ``index``.

    Enhanced multi-frame objects keep rescale and window in functional groups (per-frame overriding shared); those
    are lifted to the top level here, as pydicom's LUT helpers only look there.
    """
    from pydicom.dataset import Dataset

    view = Dataset()
    if getattr(ds, "file_meta", None) is not None:
        view.file_meta = ds.file_meta
    for keyword in _VIEW_KEYWORDS:
        if keyword in ds:
            view.add(copy.deepcopy(ds[keyword]))
    for sequence_keyword in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
        item = _functional_group_item(ds, index, sequence_keyword)
        if item is None:
            continue
        for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction"):
            if keyword in item:
                view.add(copy.deepcopy(item[keyword]))
    return view


def _functional_group_item(ds: Any, index: int, sequence_keyword: str) -> Any | None:
    candidates = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    if per_frame is not None and index < len(per_frame):
        candidates.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        sequence = group.get(sequence_keyword, None)
        if sequence:
            return sequence[0]
    return None


def _grey_to_unit(stored: np.ndarray, view: Any) -> np.ndarray:
    """Modality LUT, then VOI LUT/window (or min–max when there is none), scaled to [0, 1]."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(stored, view)
    windowed = _apply_voi(values, view)
    if windowed is None:
        return min_max(np.asarray(values, dtype=np.float64))
    out, low, high = windowed
    scaled = (out.astype(np.float64) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _apply_voi(values: np.ndarray, view: Any) -> tuple[np.ndarray, float, float] | None:
    """Apply the first VOI LUT (preferred, as pydicom does) or window; return it with its output range.

    ``None`` when the file has no usable VOI transform (absent, or e.g. a zero window width): the caller then falls
    back to the frame's min–max.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    if _has_voi_lut(view):
        try:
            descriptor = view.VOILUTSequence[0].LUTDescriptor
            entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
            # clamp to the LUT's input range first: pydicom stores the index in the LUT's (8/16-bit) dtype, so
            # larger inputs would wrap around instead of mapping to the last entry
            integral = np.clip(np.rint(np.asarray(values, dtype=np.float64)), first, first + entries - 1)
            out = apply_voi(integral.astype(np.int64), view)
            lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), view)
            low, high = float(lut.min()), float(lut.max())
            if high > low:
                return out, low, high
        except Exception:  # noqa: BLE001 - an unusable VOI LUT of any kind: try the window
            pass
    if "WindowCenter" in view and "WindowWidth" in view:
        try:
            out = apply_windowing(np.asarray(values), view)
            with np.errstate(over="ignore", invalid="ignore"):
                ends = apply_windowing(np.array([-np.inf, np.inf]), view)
            low, high = float(ends[0]), float(ends[1])
            if math.isfinite(low) and math.isfinite(high) and high != low:
                return out, low, high
        except Exception:  # noqa: BLE001 - an unusable window of any kind: fall back to min-max
            pass
    return None


def _has_voi_lut(view: Any) -> bool:
    sequence = view.get("VOILUTSequence", None)
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor", None) is not None and item.get("LUTData", None) is not None


@dataclass(frozen=True)
class GreyDisplay:
    """One grey DICOM frame as a viewer needs it: the Modality-LUT values (e.g. Hounsfield units) and the file's
    windows, so a browser can re-window instantly instead of asking the server for each drag step."""

    values: np.ndarray  # float32 [H, W], after the Modality LUT (rescale slope/intercept)
    windows: tuple[tuple[float, float], ...]  # the file's (centre, width) pairs, first = the one the model sees
    invert: bool  # MONOCHROME1: high values are dark
    frames: int


def dicom_grey_display(ds: Any, limits: ImageLimits, frame: int | None) -> GreyDisplay | None:
    """The values of a grey, integer-coded frame for client-side windowing; ``None`` for colour, palette and float
    pixel data (those have no window: the caller shows them as decoded)."""
    geometry = _dicom_geometry(ds)
    if geometry.samples != 1 or geometry.photometric == "PALETTE COLOR" or geometry.pixel_keyword != "PixelData":
        return None
    check_size(geometry.columns, geometry.rows, limits)
    if geometry.frames > limits.max_frames:
        raise PayloadTooLarge(f"DICOM file has {geometry.frames} frames, above the limit of {limits.max_frames}")
    index = 0 if frame is None else int(frame)
    check_frame_index(index, geometry.frames, limits)
    _ensure_transfer_syntax(ds, geometry)
    stored = _decode_dicom_frame(ds, geometry, index)
    from pydicom.pixels import apply_modality_lut

    view = _frame_view(ds, index)
    try:
        values = np.asarray(apply_modality_lut(stored, view), dtype=np.float32)
    except Exception:  # noqa: BLE001 - a malformed Modality LUT of any kind is the client's problem
        raise InvalidImage("DICOM pixel values could not be converted (malformed LUT or pixel module)") from None
    return GreyDisplay(values=np.ascontiguousarray(values), windows=_windows(view),
                       invert=geometry.photometric == "MONOCHROME1", frames=geometry.frames)


def _windows(view: Any) -> tuple[tuple[float, float], ...]:
    """The file's (centre, width) pairs, multi-valued windows included; malformed or non-positive widths dropped."""
    if "WindowCenter" not in view or "WindowWidth" not in view:
        return ()
    try:
        centres, widths = view.WindowCenter, view.WindowWidth
        centres = list(centres) if hasattr(centres, "__iter__") and not isinstance(centres, str) else [centres]
        widths = list(widths) if hasattr(widths, "__iter__") and not isinstance(widths, str) else [widths]
        pairs = [(float(c), float(w)) for c, w in zip(centres, widths)]
    except Exception:  # noqa: BLE001 - a malformed window is no window: the viewer falls back to the value range
        return ()
    return tuple((c, w) for c, w in pairs if math.isfinite(c) and math.isfinite(w) and w > 0)
