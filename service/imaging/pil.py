"""Raster formats through PIL: JPEG, PNG (incl. APNG), WebP, BMP, TIFF and GIF.

* **An allow-list.** :func:`open_pil` lets ``Image.open`` use only the plugins in ``_PIL_FORMATS``, so PIL's many
  exotic plugins are not an attack surface; anything else is "not recognised" (and may still be DICOM).
* **PIL's bomb guard stays on.** Its process-wide ``Image.MAX_IMAGE_PIXELS`` is left alone; its
  ``DecompressionBombError`` / ``DecompressionBombWarning`` are turned into :class:`PayloadTooLarge` where they can
  occur. Keep ``ImageLimits.max_pixels`` at or below ``PIL.Image.MAX_IMAGE_PIXELS`` (~89.5 M) so that our
  :func:`~service.imaging.common.check_size` is the one that fires.
* **EXIF orientation is applied** (``ImageOps.exif_transpose``), so that width/height and maps match what a viewer
  shows; malformed EXIF is ignored, as the pixels are still good.
* **Alpha is flattened onto white** (documents and scans are usually shown on white, and a transparent black
  background would invent dark structure for the model to attend to).
* **16-bit and integer images are scaled by their bit depth**, not min–max, so that intensities keep their meaning;
  only floating-point images (PIL mode ``F``) are min–max scaled, as they have no nominal range.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.TiffImagePlugin import BITSPERSAMPLE, SAMPLEFORMAT

from service.errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

from .common import DecodedImage, ImageLimits, check_frame_index, check_size, min_max

__all__ = ["decode_pil", "open_pil"]

# PIL plugin names (upper case) that Image.open may use; everything else PIL knows is refused.
_PIL_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# PIL's name → ours (SUPPORTED_FORMATS); a JPEG with a second image (MPO) is still a JPEG to a client.
_FORMAT_NAMES: dict[str, str] = {"WEBP": "WebP", "MPO": "JPEG"}

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


def open_pil(data: bytes, limits: ImageLimits) -> Image.Image | None:
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


def decode_pil(im: Image.Image, limits: ImageLimits, frame: int | None) -> DecodedImage:
    """Check the header of an image from :func:`open_pil` against ``limits``, then decode frame ``frame``."""
    fmt = _FORMAT_NAMES.get(im.format or "", im.format or "unknown")
    check_size(im.width, im.height, limits)
    frames = _pil_frame_count(im, limits)
    index = 0 if frame is None else int(frame)
    check_frame_index(index, frames, limits)
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
    check_size(im.width, im.height, limits)  # pages and animation frames can have their own size


def _load_pil(im: Image.Image, limits: ImageLimits) -> None:
    try:
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PayloadTooLarge(_bomb_detail(exc, limits)) from None
    except MemoryError:
        raise
    except Exception as exc:
        raise InvalidImage(_pil_failure_detail(exc, "image data")) from exc


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    """Rotate/flip a loaded image as its EXIF (or XMP) Orientation says, in place (no copy when nothing turns).

    ``ImageOps.exif_transpose`` raises for three different reasons, told apart here: EXIF it cannot parse is ignored
    (the pixels are still good); a failed transposition is the image's fault, so :class:`InvalidImage`; and after
    turning it re-serialises the EXIF without the tag, which can trip over *other* malformed tags, but that metadata
    is discarded here, so such a failure is ignored too. An Orientation that Pillow does not read as an integer 2–8
    (one stored as text, say) turns nothing.
    """
    try:
        # parses and caches the EXIF block, so the parse cannot fail again inside exif_transpose
        im.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # noqa: BLE001 - EXIF it cannot parse is ignored (the pixels are still good)
        return im
    pixels_before = im.im
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception as exc:
        if im.im is pixels_before:  # in_place swaps the core image only once the transposition succeeded
            raise InvalidImage(_pil_failure_detail(exc, "image data")) from exc
    return im


_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_INT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Loaded PIL image → float32 [H, W, C] in [0, 1], C ∈ {1, 3}."""
    mode = im.mode
    if mode in _INT16_MODES or mode == "I":
        return _integer_grey(im)[:, :, None]
    if mode == "F":
        return min_max(np.asarray(im, dtype=np.float32))[:, :, None]
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
        return min_max(values.astype(np.float32))
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
        signed = _tiff_tag(im, SAMPLEFORMAT) == 2  # 2 = two's complement integer
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
    bits = _tiff_tag(im, BITSPERSAMPLE)
    return bits if bits and 1 <= bits <= 32 else None
