"""Decode uploaded image bytes into pixels, safely, and turn them into model input.

Everything a client uploads passes through :func:`decode_image`, so this module is the one place that must never
crash on hostile or broken bytes: every failure becomes a domain error from :mod:`service.errors` whose detail names
the problem (never a raw PIL/pydicom/numpy exception, never a DICOM attribute value).

Design choices, in one place:

* **Limits before decoding.** Pixel count, side length and DICOM frame count are read from the header and checked
  against :class:`ImageLimits` *before* pixel data is decoded, so a decompression bomb costs a header parse only.
  PIL's own process-wide guard (``Image.MAX_IMAGE_PIXELS``) is left alone; its ``DecompressionBombError`` /
  ``DecompressionBombWarning`` are turned into :class:`PayloadTooLarge` where they can occur. Keep
  ``max_pixels`` at or below ``PIL.Image.MAX_IMAGE_PIXELS`` (~89.5 M) so that our check is the one that fires.
* **Formats.** PIL opens only JPEG, PNG (incl. APNG), WebP, BMP, TIFF and GIF (an allow-list, so PIL's many exotic
  plugins are not an attack surface). DICOM Part 10 is detected by ``DICM`` at offset 128; a DICOM stream without
  preamble is tried only when PIL cannot identify the bytes.
* **Alpha is flattened onto white** (documents and scans are usually shown on white, and a transparent black
  background would invent dark structure for the model to attend to).
* **Grey stays grey** (C = 1), colour becomes RGB (C = 3); conversion to the model's channel count happens in
  :func:`to_model_input`.
* **16-bit and integer images are scaled by their bit depth**, not min–max, so that intensities keep their meaning;
  only floating-point images (PIL mode ``F``) are min–max scaled, as they have no nominal range.
* **DICOM grey pipeline:** stored values → Modality LUT (rescale slope/intercept or LUT) → VOI LUT or window
  (first one when several are given) → [0, 1]; when the file has no (valid) VOI LUT/window the min–max of the
  selected frame is used. MONOCHROME1 is inverted afterwards so that 1.0 is always white.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageLimits",
    "decode_image",
    "rgb8",
    "to_model_input",
]

#: Formats accepted by :func:`decode_image`, as named in error messages and in ``DecodedImage.format``.
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF", "DICOM")

# PIL plugin names (upper case) that Image.open may use; everything else PIL knows is refused.
_PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
_FORMAT_NAMES: dict[str, str] = {"WEBP": "WebP", "MPO": "JPEG"}

_NOT_RECOGNISED = f"not a recognised image format ({', '.join(SUPPORTED_FORMATS)})"

# ITU-R BT.601 luma weights, used for RGB → grey.
_LUMA_601: tuple[float, float, float] = (0.299, 0.587, 0.114)

_PIXEL_DATA_KEYWORDS: tuple[str, ...] = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True)
class ImageLimits:
    """Resource limits applied from the header, before pixel data is decoded.

    The request body size is enforced by the HTTP layer, not here.
    """

    #: Largest width × height of the decoded frame (decompression bombs).
    max_pixels: int = 40_000_000
    #: Largest number of frames a DICOM file may declare, and the highest frame index + 1 that may be requested.
    max_frames: int = 1000
    #: Largest width or height; a very long thin strip is almost always a forged header.
    max_side: int = 20_000
    #: Pixels that may be decoded in total to reach a requested frame: GIF, APNG and animated WebP decode every
    #: earlier frame first, so ``(frame + 1) × width × height`` is bounded too.
    max_seek_pixels: int = 200_000_000


@dataclass(frozen=True)
class DecodedImage:
    """One decoded frame, ready for the model and for overlays.

    ``pixels`` is float32 ``[H, W, C]`` in [0, 1] with C = 1 (grey) or 3 (RGB); ``width``/``height`` are the size
    of the image *as displayed* (after EXIF orientation), which is the size heatmaps are rendered at.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    frames: int = 1

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


# --------------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------------


def decode_image(data: bytes, limits: ImageLimits = ImageLimits(), *, frame: int | None = None) -> DecodedImage:
    """Decode ``data`` (the uploaded file's bytes) into one frame of pixels.

    ``frame`` selects a frame of a multi-frame source (DICOM multi-frame, TIFF page, GIF/APNG/WebP animation frame),
    0-based; the default is the first. Raises :class:`InvalidImage` (422), :class:`PayloadTooLarge` (413),
    :class:`InvalidOption` (422, bad ``frame``) or :class:`UnsupportedMediaType` (415, e.g. a DICOM transfer syntax
    with no decoder); nothing else.
    """
    data = _as_bytes(data)
    if not data:
        raise InvalidImage("empty body: no image bytes were received")
    _validate_frame_option(frame)
    try:
        if _has_dicom_magic(data):
            return _decode_dicom(_read_dicom(data), limits, frame)
        pil_image = _open_pil(data, limits)
        if pil_image is None:
            dataset = _read_dicom_without_preamble(data)
            if dataset is None:
                raise InvalidImage(_NOT_RECOGNISED)
            return _decode_dicom(dataset, limits, frame)
        with pil_image:
            return _decode_pil(pil_image, limits, frame)
    except (InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType):
        raise
    except MemoryError:
        raise PayloadTooLarge("image needs more memory to decode than is available") from None
    except Exception as exc:  # last line of defence: never leak a library exception (or its message) to a client
        raise InvalidImage(f"image could not be decoded ({type(exc).__name__})") from None


def _as_bytes(data: Any) -> bytes:
    """Accept bytes-like input; anything else is a programming error, not a client error."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")


def _validate_frame_option(frame: int | None) -> None:
    if frame is None:
        return
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise InvalidOption("frame must be an integer (0-based frame index)")
    if frame < 0:
        raise InvalidOption(f"frame must be 0 or more (0-based frame index), got {int(frame)}")


def _check_size(width: int, height: int, limits: ImageLimits) -> None:
    """Reject empty and oversized images from their header dimensions."""
    if width <= 0 or height <= 0:
        raise InvalidImage(f"image has zero size ({width}×{height})")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}×{height} = {pixels:.3g} pixels, above the limit of {limits.max_pixels}"
        )
    if max(width, height) > limits.max_side:
        raise PayloadTooLarge(
            f"image is {width}×{height}, a side is longer than the limit of {limits.max_side} pixels"
        )


def _check_frame_index(frame: int, frames: int, limits: ImageLimits) -> None:
    if frame >= frames:
        raise InvalidOption(
            f"frame {frame} is out of range: the image has {frames} frame{'s' if frames != 1 else ''} "
            f"(valid: 0..{frames - 1})"
        )
    if frame >= limits.max_frames:
        raise PayloadTooLarge(f"frame {frame} is beyond the limit of {limits.max_frames} frames")


# --------------------------------------------------------------------------------------------------------------------
# PIL path
# --------------------------------------------------------------------------------------------------------------------

# warnings.catch_warnings() swaps a process-wide filter list and is not thread-safe before Python 3.14; the lock keeps
# our own uses from interleaving when decode_image runs in a thread pool. It covers header parsing, frame counting and
# seeking only (seeking an animation decodes earlier frames, bounded by ImageLimits.max_seek_pixels), never load().
_PIL_GUARD_LOCK = threading.Lock()


@contextlib.contextmanager
def _pil_guard(limits: ImageLimits) -> Iterator[None]:
    """Run a PIL header operation with its decompression-bomb warning raised (and then mapped), not printed."""
    with _PIL_GUARD_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise PayloadTooLarge(_bomb_detail(exc, limits)) from None


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _bomb_detail(exc: BaseException, limits: ImageLimits) -> str:
    """PIL refused the size before we could look at it; recover the pixel count from its message when possible."""
    match = _BOMB_PIXELS.search(str(exc))
    if match:
        return f"image is {int(match.group(1)):.3g} pixels, above the limit of {limits.max_pixels}"
    return f"image is above the limit of {limits.max_pixels} pixels (decompression bomb)"


def _open_pil(data: bytes, limits: ImageLimits) -> Image.Image | None:
    """Parse the header with PIL (no pixel decoding). ``None`` when PIL does not recognise the bytes."""
    try:
        with _pil_guard(limits):
            return Image.open(io.BytesIO(data), formats=list(_PIL_FORMATS))
    except UnidentifiedImageError:
        return None
    except PayloadTooLarge:
        raise
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, "image header")) from exc


def _pil_failure_detail(exc: BaseException, what: str) -> str:
    """A client-facing description of a PIL failure; PIL messages can contain object reprs, so they are not echoed."""
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncat" in text:
        return "image is truncated"
    return f"{what} is corrupt or unreadable ({type(exc).__name__})"


def _decode_pil(im: Image.Image, limits: ImageLimits, frame: int | None) -> DecodedImage:
    fmt = _FORMAT_NAMES.get(im.format or "", im.format or "unknown")
    _check_size(im.width, im.height, limits)
    frames = _pil_frame_count(im, limits)
    index = 0 if frame is None else int(frame)
    _check_frame_index(index, frames, limits)
    if index > 0:
        _seek_pil(im, index, limits)
    _load_pil(im, limits)
    im = _apply_exif_orientation(im)
    pixels = _pil_to_array(im)
    height, width = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt, frames=frames)


def _pil_frame_count(im: Image.Image, limits: ImageLimits) -> int:
    """Number of frames/pages; for GIF this scans the block structure (no pixel decoding)."""
    try:
        with _pil_guard(limits):
            return max(1, int(getattr(im, "n_frames", 1)))
    except PayloadTooLarge:
        raise
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, "image frame structure")) from exc


def _seek_pil(im: Image.Image, index: int, limits: ImageLimits) -> None:
    """Move to frame ``index``, bounding the work of formats that decode every earlier frame first."""
    work = (index + 1) * im.width * im.height
    if work > limits.max_seek_pixels:
        raise PayloadTooLarge(
            f"reaching frame {index} means decoding {work:.3g} pixels, above the limit of {limits.max_seek_pixels}"
        )
    try:
        with _pil_guard(limits):
            im.seek(index)
    except PayloadTooLarge:
        raise
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, f"frame {index}")) from exc
    _check_size(im.width, im.height, limits)  # pages and animation frames can have their own size


def _load_pil(im: Image.Image, limits: ImageLimits) -> None:
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(_bomb_detail(exc, limits)) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, "image data")) from exc


_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says, so width/height and maps match what a viewer shows.

    Malformed EXIF is ignored (the pixels are still good); this mirrors ``ImageOps.exif_transpose`` without its
    copy of un-rotated images.
    """
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:
        return im
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is None:
        return im
    try:
        return im.transpose(method)
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, "image data")) from exc


_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Loaded PIL image → float32 [H, W, C] in [0, 1], C ∈ {1, 3}."""
    mode = im.mode
    if mode in _INT16_MODES or mode == "I":
        return _integer_grey(im)[:, :, None]
    if mode == "F":
        return _min_max(np.asarray(im, dtype=np.float32))[:, :, None]
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    grey = mode in _GREY_MODES
    if has_alpha:
        target = "LA" if grey else "RGBA"
    else:
        target = "L" if grey else "RGB"
    if mode != target:
        try:
            im = im.convert(target)
        except (ValueError, OSError) as exc:
            raise UnsupportedMediaType(f"images with pixel mode {mode} are not supported") from exc
    arr = np.asarray(im, dtype=np.float32)
    arr *= np.float32(1.0 / 255.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if has_alpha:
        arr = _flatten_on_white(arr)
    return np.ascontiguousarray(arr)


def _flatten_on_white(arr: np.ndarray) -> np.ndarray:
    """Composite straight-alpha [H, W, C+1] over a white background: c·a + 1·(1 − a)."""
    colour, alpha = arr[:, :, :-1], arr[:, :, -1:]
    return colour * alpha + (np.float32(1.0) - alpha)


def _integer_grey(im: Image.Image) -> np.ndarray:
    """16/32-bit integer grey → [0, 1] using the nominal bit depth (not the image's own min–max)."""
    values = np.asarray(im)
    bits, signed = _integer_bit_depth(im, values)
    if bits is None:
        return _min_max(values.astype(np.float32))
    values64 = values.astype(np.float64)
    if signed:
        values64 += 2.0 ** (bits - 1)
    out = values64 / (2.0**bits - 1.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _integer_bit_depth(im: Image.Image, values: np.ndarray) -> tuple[int | None, bool]:
    """Nominal (bits, signed) of an integer image; ``None`` bits when no range can be trusted."""
    if im.mode in _INT16_MODES:
        bits = _tiff_bits(im) or 16
        return min(bits, 16), False
    if im.format == "PNG":  # PNG stores 16-bit grey; older PIL versions expose it as mode I
        return 16, False
    tiff_bits = _tiff_bits(im)
    if tiff_bits:
        signed = _tiff_tag(im, 339) == 2  # SampleFormat 2 = two's complement
        return tiff_bits, signed
    if values.size and values.min() >= 0 and values.max() <= 65535:
        return 16, False
    return None, False


def _tiff_tag(im: Image.Image, tag: int) -> int | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    try:
        value = tags.get(tag)
        if isinstance(value, (tuple, list)):
            value = value[0]
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _tiff_bits(im: Image.Image) -> int | None:
    bits = _tiff_tag(im, 258)  # BitsPerSample
    return bits if bits and 1 <= bits <= 32 else None


def _min_max(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the finite min–max; a constant (or all non-finite) image becomes 0."""
    values = values.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, dtype=np.float32)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    out = np.where(finite, values, np.float32(lo)).astype(np.float64)
    if hi > lo:
        out = (out - lo) / (hi - lo)
    else:
        out = np.zeros_like(out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# DICOM path
#
# PHI rule: pydicom messages and attribute values never reach an error detail or a log line. Only the pixel-module
# attributes are ever accessed (so pydicom does not even convert/validate identifying elements), pydicom exceptions
# are re-raised "from None" (no chained message in tracebacks), and details mention geometry and problem names only.
# --------------------------------------------------------------------------------------------------------------------


def _has_dicom_magic(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _read_dicom(data: bytes) -> Any:
    """Parse a Part 10 file (header + raw pixel bytes; pixels are not decoded here)."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception:
        raise InvalidImage("DICOM file is corrupt: its header could not be parsed") from None


# Groups that a DICOM data set written without preamble/meta plausibly starts with (file meta, identifying module).
_PLAUSIBLE_FIRST_GROUPS = frozenset({0x0002, 0x0008})


def _read_dicom_without_preamble(data: bytes) -> Any | None:
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
    except Exception:
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


def _decode_dicom(ds: Any, limits: ImageLimits, frame: int | None) -> DecodedImage:
    geometry = _dicom_geometry(ds)
    _check_size(geometry.columns, geometry.rows, limits)
    if geometry.frames > limits.max_frames:
        raise PayloadTooLarge(f"DICOM file has {geometry.frames} frames, above the limit of {limits.max_frames}")
    index = 0 if frame is None else int(frame)
    _check_frame_index(index, geometry.frames, limits)
    _ensure_transfer_syntax(ds, geometry)
    stored = _decode_dicom_frame(ds, geometry, index)
    pixels = _dicom_to_unit(stored, ds, geometry, index)
    height, width = pixels.shape[:2]
    return DecodedImage(pixels=pixels, width=width, height=height, format="DICOM", frames=geometry.frames)


def _int_attribute(ds: Any, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword, None)
    except Exception:
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
    except Exception:
        pass
    return "an unknown transfer syntax"


def _decode_dicom_frame(ds: Any, geometry: _DicomGeometry, index: int) -> np.ndarray:
    """Decode one frame of stored values (YBR colour is converted to RGB by pydicom)."""
    from pydicom.pixels import get_decoder, pixel_array

    if geometry.pixel_keyword == "PixelData":
        try:
            decoder = get_decoder(ds.file_meta.TransferSyntaxUID)
        except Exception:
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
    except Exception as exc:
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
            grey = _min_max(stored.astype(np.float32))
        else:
            grey = _grey_to_unit(stored, _frame_view(ds, index))
    except (InvalidImage, UnsupportedMediaType):
        raise
    except Exception:
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
        return _min_max(np.asarray(values, dtype=np.float64))
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
        except Exception:
            pass
    if "WindowCenter" in view and "WindowWidth" in view:
        try:
            out = apply_windowing(np.asarray(values), view)
            with np.errstate(over="ignore", invalid="ignore"):
                ends = apply_windowing(np.array([-np.inf, np.inf]), view)
            low, high = float(ends[0]), float(ends[1])
            if math.isfinite(low) and math.isfinite(high) and high != low:
                return out, low, high
        except Exception:
            pass
    return None


def _has_voi_lut(view: Any) -> bool:
    sequence = view.get("VOILUTSequence", None)
    if not sequence:
        return False
    item = sequence[0]
    return item.get("LUTDescriptor", None) is not None and item.get("LUTData", None) is not None


# --------------------------------------------------------------------------------------------------------------------
# Model input and overlay base
# --------------------------------------------------------------------------------------------------------------------


def to_model_input(
    img: DecodedImage,
    *,
    input_size: tuple[int, int],
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Float32 ``[channels, h, w]`` tensor for the model.

    The *whole* image is resized to ``input_size`` = (h, w) — no centre crop, aspect ratio not kept — so that every
    map position corresponds to a known region of the original and maps upsample straight back onto it. Resizing is
    bilinear with antialiasing (``torch.nn.functional.interpolate(mode="bilinear", antialias=True,
    align_corners=False)``), i.e. a triangle filter widened on downscaling, which avoids aliasing on large photos.
    Grey → RGB replicates the channel; RGB → grey uses ITU-R BT.601 luma. Then ``(x - mean) / std`` per channel.
    """
    height, width = (int(input_size[0]), int(input_size[1]))
    if height <= 0 or width <= 0:
        raise ValueError(f"input_size must be positive (h, w), got {input_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mean_t = _per_channel("mean", mean, channels)
    std_t = _per_channel("std", std, channels)
    if bool((std_t == 0).any()):
        raise ValueError("std must not contain zeros")

    pixels = img.pixels if img.pixels.flags.writeable else img.pixels.copy()
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1)  # [C, H, W]
    if channels == 1 and x.shape[0] == 3:
        x = _luma(x)  # before resizing: a third of the interpolation work
    if tuple(x.shape[1:]) != (height, width):
        x = F.interpolate(x.unsqueeze(0), size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        x = x.squeeze(0)
    if channels == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    return ((x - mean_t) / std_t).contiguous()


def _per_channel(name: str, values: Sequence[float], channels: int) -> torch.Tensor:
    vals = [float(v) for v in values]
    if len(vals) not in (1, channels):
        raise ValueError(f"{name} must have 1 or {channels} values, got {len(vals)}")
    if len(vals) == 1:
        vals = vals * channels
    return torch.tensor(vals, dtype=torch.float32).view(channels, 1, 1)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_LUMA_601, dtype=rgb.dtype).view(3, 1, 1)
    return (rgb * weights).sum(dim=0, keepdim=True)


def rgb8(img: DecodedImage) -> np.ndarray:
    """uint8 ``[H, W, 3]`` version of the image, the base for overlays (grey is replicated)."""
    scaled = img.pixels * np.float32(255.0)  # the only float temporary; the rest is in place (40 MP images)
    np.clip(scaled, np.float32(0.0), np.float32(255.0), out=scaled)
    np.rint(scaled, out=scaled)
    quantised = scaled.astype(np.uint8)
    if quantised.shape[2] == 3:
        return quantised
    return np.repeat(quantised, 3, axis=2)
