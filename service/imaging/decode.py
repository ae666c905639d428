"""The entry point, :func:`decode_image`: choose the decoder, and turn every failure into a domain error.

Everything a client uploads passes through here, so this is the one place that must never crash on hostile or
broken bytes: every failure becomes a domain error from :mod:`service.errors` whose detail names the problem (never a
raw PIL/pydicom/numpy exception or its message, never a DICOM attribute value). The decoders raise those errors
themselves where they know what went wrong; the ``except Exception`` here is the last line of defence.

Detection order: ``DICM`` at offset 128 means DICOM Part 10; otherwise PIL's allow-listed plugins get the bytes; only
when PIL does not recognise them is a DICOM stream without preamble tried, so that pydicom's permissive
``force=True`` reader never sees ordinary uploads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType

from .common import SUPPORTED_FORMATS, DecodedImage, ImageLimits
from .dicom import decode_dicom, has_dicom_magic, read_dicom, read_dicom_without_preamble
from .pil import decode_pil, open_pil

__all__ = ["decode_image"]

_NOT_RECOGNISED = f"not a recognised image format ({', '.join(SUPPORTED_FORMATS)})"


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
        if has_dicom_magic(data):
            return decode_dicom(read_dicom(data), limits, frame)
        pil_image = open_pil(data, limits)
        if pil_image is None:
            dataset = read_dicom_without_preamble(data)
            if dataset is None:
                raise InvalidImage(_NOT_RECOGNISED)
            return decode_dicom(dataset, limits, frame)
        with pil_image:
            return decode_pil(pil_image, limits, frame)
    except (InvalidImage, InvalidOption, PayloadTooLarge, UnsupportedMediaType):
        raise
    except MemoryError:
        raise PayloadTooLarge("image needs more memory to decode than is available") from None
    except Exception as exc:  # noqa: BLE001 - last line of defence: never leak a library error (or its message)
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
