"""Inputs shared by the imaging tests (imported as ``imaging_support``): all generated here or taken from pydicom's
bundled test files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def noise_rgb(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_header(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A structurally valid PNG (correct CRCs) whose IHDR claims width × height, with (almost) no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16) if idat is None else idat
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def dicom_bytes(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} must be bundled with pydicom"
    with open(path, "rb") as handle:
        return handle.read()


def dicom_dataset(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(dicom_bytes(name)))


def dataset_to_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def expected_minmax(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    return (values - values.min()) / (values.max() - values.min())


def expected_linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' window to [0, 1], written independently of pydicom."""
    values = values.astype(np.float64)
    c, w = center - 0.5, width - 1.0
    out = (values - c) / w + 0.5
    out[values <= c - w / 2] = 0.0
    out[values > c + w / 2] = 1.0
    return out


CT_PATIENT_NAME = "CompressedSamples^CT1"
