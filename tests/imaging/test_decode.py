"""Tests for service.imaging.decode: whatever the bytes, decode_image answers with a clean 4xx domain error."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from imaging_support import dicom_bytes, encode, noise_rgb, png_with_header
from PIL import Image

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge
from service.imaging import SUPPORTED_FORMATS, ImageLimits, decode_image

# --------------------------------------------------------------------------------------------------------------------
# garbage in → clean 4xx out
# --------------------------------------------------------------------------------------------------------------------


def test_empty_body_is_invalid_image() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(b"")
    assert info.value.status == 422
    assert "empty" in info.value.detail


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(1).bytes(4096),
        b"Hello, this is a plain text file.\nIt is not an image at all.\n" * 20,
        b"\x08\x00" + np.random.default_rng(2).bytes(300),  # looks like a preamble-less DICOM group, is not
    ],
    ids=["random", "text", "fake-dicom-group"],
)
def test_unrecognised_bytes_name_the_supported_formats(data: bytes) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(data)
    assert info.value.status == 422
    assert info.value.detail.startswith("not a recognised image format")
    assert "DICOM" in info.value.detail and "PNG" in info.value.detail


def test_dicom_fallback_is_not_tried_on_implausible_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real_dcmread = pydicom.dcmread

    def counting_dcmread(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return real_dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting_dcmread)
    with pytest.raises(InvalidImage):
        decode_image(b"GIF-like? no. " + bytes(range(256)) * 4)
    assert calls == []  # pydicom's force=True parser never saw the garbage
    decode_image(dicom_bytes("CT_small.dcm")[132:])
    assert len(calls) == 1


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image_says_truncated(fmt: str) -> None:
    data = encode(noise_rgb(), fmt)
    decode_image(data)  # the untruncated file is fine
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.detail == "image is truncated"


def test_corrupt_png_data_is_invalid_image() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(png_with_header(8, 8, idat=b"definitely not zlib data"))
    assert info.value.status == 422


def test_png_bomb_header_is_rejected_with_413() -> None:
    data = png_with_header(50_000, 50_000)
    assert len(data) < 100
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(data)
    assert info.value.status == 413
    assert "above the limit of 40000000" in info.value.detail
    assert "2.5e+09" in info.value.detail


def test_pixel_limit_message_names_the_size() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(png_with_header(7_000, 7_000))
    assert info.value.detail == "image is 7000×7000 = 4.9e+07 pixels, above the limit of 40000000"


def test_pixel_limit_is_checked_before_decoding() -> None:
    # the IDAT is garbage: if pixels were decoded first this would be a 422, not a 413
    corrupt = png_with_header(20, 20, idat=b"garbage")
    with pytest.raises(PayloadTooLarge):
        decode_image(corrupt, ImageLimits(max_pixels=399))
    with pytest.raises(InvalidImage):
        decode_image(corrupt, ImageLimits(max_pixels=400))


def test_side_limit() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(png_with_header(30_000, 1))
    assert "20000" in info.value.detail


def test_no_decompression_bomb_warning_escapes() -> None:
    data = png_with_header(10_000, 10_000)  # 1e8 pixels: PIL would warn (> 89.5 M), not raise
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(PayloadTooLarge) as info:
            decode_image(data)
    assert "1e+08 pixels" in info.value.detail
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # even with warnings as errors, the result is our error
        with pytest.raises(PayloadTooLarge):
            decode_image(data)


@pytest.mark.parametrize("frame", [-1, 1.5, "0", True])
def test_bad_frame_option(frame: object) -> None:
    with pytest.raises(InvalidOption):
        decode_image(encode(noise_rgb(), "PNG"), frame=frame)  # type: ignore[arg-type]


def test_frame_out_of_range_for_single_frame_image() -> None:
    with pytest.raises(InvalidOption) as info:
        decode_image(encode(noise_rgb(), "PNG"), frame=1)
    assert "1 frame" in info.value.detail


def test_supported_formats_name_every_decoder() -> None:
    from service.imaging.pil import _FORMAT_NAMES, _PIL_FORMATS

    # the list in the "not recognised" message and DecodedImage.format must agree with what is really decoded
    assert {_FORMAT_NAMES.get(name, name) for name in _PIL_FORMATS} | {"DICOM"} == set(SUPPORTED_FORMATS)
