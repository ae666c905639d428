"""Decode uploaded image bytes into pixels, safely, and turn them into model input.

The public API is re-exported here; the modules behind it, each with its design notes:

* :mod:`.decode` — :func:`decode_image`, the entry point: format detection and the never-leak rule for errors.
* :mod:`.common` — :class:`DecodedImage`, :class:`ImageLimits` and the header checks made before decoding.
* :mod:`.pil` — JPEG, PNG, WebP, BMP, TIFF and GIF through an allow-listed PIL (bomb guard, EXIF orientation, alpha).
* :mod:`.dicom` — DICOM through pydicom (transfer syntax, LUT pipeline, patient data kept out of errors).
* :mod:`.tensor` — :func:`to_model_input` (resize, channels, normalisation) and :func:`rgb8`, the overlay base.
"""

from __future__ import annotations

from .common import SUPPORTED_FORMATS, DecodedImage, ImageLimits, TileLimit
from .decode import decode_image
from .tensor import rgb8, to_bag, to_model_input

__all__ = [
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageLimits",
    "TileLimit",
    "decode_image",
    "rgb8",
    "to_bag",
    "to_model_input",
]
