"""Turn the many ways a caller holds an image into file bytes, and decode the PNGs the server returns.

NumPy and Pillow are optional (the ``[images]`` extra): paths, bytes and file objects are sent as they are, so a
client that only forwards files never needs them. They are imported lazily, and a missing one says which extra
to install instead of failing with a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib
import io
import mimetypes
import os
import zipfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Union

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image as PILImage

__all__ = ["EncodedImage", "ImageInput", "encode_image", "require"]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], "PILImage.Image", "np.ndarray",
                   "list[Any]", "tuple[Any, ...]"]
"""Anything :func:`encode_image` accepts (lists and tuples: the files of a DICOM series)."""

EXTRA_HINT = "pip install 'xaas-client[images]'  (from a checkout: pip install -e 'clients/python[images]')"


class EncodedImage(NamedTuple):
    """One multipart file part: ``(filename, content, content_type)``, the tuple httpx expects."""

    filename: str
    content: bytes
    content_type: str


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or raise an ImportError that names the ``[images]`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs numpy and Pillow, which are not installed: {EXTRA_HINT}") from exc


def encode_image(image: ImageInput) -> EncodedImage:
    """File bytes for ``image``: a path, bytes, a binary file object, a PIL image (→ PNG) or a NumPy array (→ PNG).
    For volume models, a DICOM series: a folder (its files, in name order) or a list of paths or bytes, sent as one
    zip (the server sorts the slices by their geometry); a zip or NIfTI file goes as it is.

    Files are sent untouched so the server sees the original format (DICOM, 16-bit PNG, EXIF orientation...).
    """
    if isinstance(image, (list, tuple)):
        return _series_zip(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if path.is_dir():
            return _series_zip(sorted(p for p in path.iterdir() if p.is_file()))
        return EncodedImage(path.name, path.read_bytes(), _guess_type(path.name))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return EncodedImage("image", bytes(image), "application/octet-stream")
    if _is_pil(image):
        return EncodedImage("image.png", _png(image), "image/png")
    if _is_numpy(image):
        return EncodedImage("image.png", _png(_array_to_pil(image)), "image/png")
    read = getattr(image, "read", None)
    if callable(read):
        data = read()
        if isinstance(data, str):
            raise TypeError("the file object is in text mode: open the image with 'rb'")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"file object's read() returned {type(data).__name__}, expected bytes")
        name = Path(str(getattr(image, "name", "image"))).name or "image"
        return EncodedImage(name, bytes(data), _guess_type(name))
    raise TypeError(f"unsupported image type {type(image).__name__}: pass a path, bytes, a binary file, "
                    "a PIL image or a NumPy array")


def _series_zip(files: Any) -> EncodedImage:
    if not files:
        raise ValueError("a series needs at least one file")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as bundle:
        for n, item in enumerate(files):
            if isinstance(item, (bytes, bytearray, memoryview)):
                bundle.writestr(f"{n:05d}.dcm", bytes(item))
            elif isinstance(item, (str, os.PathLike)):
                bundle.writestr(f"{n:05d}-{Path(item).name}", Path(item).read_bytes())
            else:
                raise TypeError(f"a series is a list of paths or bytes, not of {type(item).__name__}")
    return EncodedImage("series.zip", buf.getvalue(), "application/zip")


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _is_pil(obj: object) -> bool:
    # Checked by module name so that Pillow is only imported when the caller already uses it.
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "save")


def _is_numpy(obj: object) -> bool:
    return type(obj).__module__ == "numpy" and hasattr(obj, "__array_interface__")


def _png(image: PILImage.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _array_to_pil(array: np.ndarray) -> PILImage.Image:
    """HxW or HxWxC (C in 1, 3, 4) → PIL. uint8/uint16 are kept, bool → 0/255, floats must lie in [0, 1]."""
    np = require("numpy", "encoding a NumPy array")
    pil = require("PIL.Image", "encoding a NumPy array")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"expected an HxW or HxWxC (C = 1, 3 or 4) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
            raise ValueError("a float image must hold finite values in [0, 1] (scale it, or pass uint8)")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype == np.uint16 and array.ndim == 2:
        return pil.fromarray(np.ascontiguousarray(array, dtype=np.uint16))  # 16-bit grey PNG, decoded by the server
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported array dtype {array.dtype}: use uint8, uint16 (grey), bool or float in [0, 1]")
    return pil.fromarray(np.ascontiguousarray(array))
