"""Tests for service.imaging: every input is generated here or taken from pydicom's bundled test files."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge, XaasError
from service.imaging import DecodedImage, ImageLimits, decode_image, rgb8, to_model_input

# --------------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# PIL formats and pixel modes
# --------------------------------------------------------------------------------------------------------------------


def test_png_rgb_exact_pixels_and_metadata() -> None:
    im = noise_rgb(5, 3)
    decoded = decode_image(encode(im, "PNG"))
    assert (decoded.width, decoded.height, decoded.format, decoded.frames) == (5, 3, "PNG", 1)
    assert decoded.pixels.dtype == np.float32 and decoded.pixels.shape == (3, 5, 3)
    np.testing.assert_allclose(decoded.pixels, np.asarray(im) / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    ("fmt", "kwargs", "name"),
    [("WEBP", {"lossless": True}, "WebP"), ("BMP", {}, "BMP"), ("TIFF", {}, "TIFF"), ("GIF", {}, "GIF")],
)
def test_other_formats_decode_exactly(fmt: str, kwargs: dict[str, object], name: str) -> None:
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[:, :4] = (200, 30, 10)
    pixels[2, 6] = (0, 0, 255)
    decoded = decode_image(encode(Image.fromarray(pixels), fmt, **kwargs))
    assert decoded.format == name
    assert decoded.pixels.shape == (6, 8, 3)
    np.testing.assert_allclose(decoded.pixels, pixels / 255.0, atol=1e-6)


def test_grey_png_stays_single_channel() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    decoded = decode_image(encode(Image.fromarray(grey), "PNG"))
    assert decoded.pixels.shape == (3, 4, 1)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], grey / 255.0, atol=1e-6)


def test_16bit_png_is_scaled_by_bit_depth() -> None:
    values = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    decoded = decode_image(encode(im, "PNG"))
    assert decoded.pixels.shape == (1, 4, 1)
    np.testing.assert_allclose(decoded.pixels[0, :, 0], values[0] / 65535.0, rtol=1e-6)
    # not min-max: a dark 16-bit image stays dark
    dark = decode_image(encode(Image.fromarray(np.array([[100, 200]], dtype=np.uint16)), "PNG"))
    np.testing.assert_allclose(dark.pixels[0, :, 0], [100 / 65535, 200 / 65535], rtol=1e-6)


def test_float_tiff_is_min_max_scaled() -> None:
    values = np.array([[-2.0, 0.0, 6.0]], dtype=np.float32)
    decoded = decode_image(encode(Image.fromarray(values), "TIFF"))
    np.testing.assert_allclose(decoded.pixels[0, :, 0], [0.0, 0.25, 1.0], atol=1e-6)


def test_bilevel_image_is_grey() -> None:
    im = Image.new("1", (4, 2), 0)
    im.putpixel((1, 1), 1)
    decoded = decode_image(encode(im, "PNG"))
    assert decoded.pixels.shape == (2, 4, 1)
    assert decoded.pixels[1, 1, 0] == 1.0 and decoded.pixels[0, 0, 0] == 0.0


def test_cmyk_jpeg_becomes_rgb() -> None:
    im = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan ink
    decoded = decode_image(encode(im, "JPEG", quality=95))
    assert decoded.pixels.shape == (16, 16, 3)
    np.testing.assert_allclose(decoded.pixels[8, 8], [0.0, 1.0, 1.0], atol=0.03)


def test_rgba_is_flattened_on_white() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black → white
    rgba[1, 2] = (0, 0, 0, 51)  # 20 % opaque black → 80 % white
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"))
    assert decoded.pixels.shape == (2, 3, 3)
    np.testing.assert_allclose(decoded.pixels[0, 0], [1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(decoded.pixels[0, 1], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(decoded.pixels[1, 2], [0.8, 0.8, 0.8], atol=1e-6)


def test_grey_alpha_png_is_flattened_and_stays_grey() -> None:
    la = np.array([[[0, 0], [0, 255], [100, 128]]], dtype=np.uint8)  # (L, A) pairs
    im = Image.frombytes("LA", (3, 1), la.tobytes())
    decoded = decode_image(encode(im, "PNG"))
    assert decoded.pixels.shape == (1, 3, 1)
    a = 128 / 255
    np.testing.assert_allclose(decoded.pixels[0, :, 0], [1.0, 0.0, 100 / 255 * a + (1 - a)], atol=1e-6)


def test_palette_png_with_transparency() -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0] + [0] * (253 * 3))
    im.putdata([0, 1, 2])
    data = encode(im, "PNG", transparency=1)  # index 1 (blue) is transparent
    assert Image.open(io.BytesIO(data)).mode == "P"
    decoded = decode_image(data)
    assert decoded.pixels.shape == (1, 3, 3)
    np.testing.assert_allclose(decoded.pixels[0], [[1, 0, 0], [1, 1, 1], [0, 1, 0]], atol=1e-6)


def _animated_gif() -> bytes:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (10, 6), colour) for colour in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_animated_gif_first_frame_by_default_and_frame_option() -> None:
    data = _animated_gif()
    first = decode_image(data)
    assert (first.format, first.frames, first.pixels.shape) == ("GIF", 3, (6, 10, 3))
    np.testing.assert_allclose(first.pixels[3, 5], [1.0, 0.0, 0.0], atol=1e-6)
    second = decode_image(data, frame=1)
    np.testing.assert_allclose(second.pixels[3, 5], [0.0, 1.0, 0.0], atol=1e-6)
    third = decode_image(data, frame=2)
    np.testing.assert_allclose(third.pixels[0, 0], [0.0, 0.0, 1.0], atol=1e-6)
    with pytest.raises(InvalidOption) as info:
        decode_image(data, frame=3)
    assert "3 frames" in info.value.detail


def test_seek_work_is_bounded() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_image(_animated_gif(), ImageLimits(max_seek_pixels=100), frame=2)


def test_multipage_tiff_frame_option() -> None:
    pages = [Image.new("L", (4, 4), value) for value in (10, 200)]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert decode_image(data).frames == 2
    assert decode_image(data).pixels[0, 0, 0] == pytest.approx(10 / 255)
    assert decode_image(data, frame=1).pixels[0, 0, 0] == pytest.approx(200 / 255)


def test_exif_orientation_6_rotates_and_swaps_size() -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # stored: 64 wide, 32 high
    stored[:, :32] = (255, 0, 0)  # left half red
    stored[:, 32:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored left edge becomes the top
    data = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif)
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (32, 64)
    assert decoded.pixels.shape == (64, 32, 3)
    np.testing.assert_allclose(decoded.pixels[10, 16], [1.0, 0.0, 0.0], atol=0.05)  # top: red
    np.testing.assert_allclose(decoded.pixels[54, 16], [0.0, 0.0, 1.0], atol=0.05)  # bottom: blue


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 10_000), (10_000, 1)])
def test_degenerate_sizes_decode_and_resize(width: int, height: int) -> None:
    im = Image.new("RGB", (width, height), (255, 0, 0))
    decoded = decode_image(encode(im, "PNG"))
    assert (decoded.width, decoded.height) == (width, height)
    assert decoded.pixels.shape == (height, width, 3)
    x = to_model_input(decoded, input_size=(224, 160), channels=3, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    assert x.shape == (3, 224, 160) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 100, 80], torch.tensor([1.0, -1.0, -1.0]))


# --------------------------------------------------------------------------------------------------------------------
# model input and overlay base
# --------------------------------------------------------------------------------------------------------------------


def _decoded(pixels: np.ndarray) -> DecodedImage:
    return DecodedImage(pixels=pixels.astype(np.float32), width=pixels.shape[1], height=pixels.shape[0], format="PNG")


def test_to_model_input_normalises_per_channel() -> None:
    img = _decoded(np.broadcast_to(np.array([0.2, 0.4, 0.6]), (10, 12, 3)).copy())
    x = to_model_input(img, input_size=(5, 6), channels=3, mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.1])
    assert x.shape == (3, 5, 6)
    torch.testing.assert_close(x[:, 2, 3], torch.tensor([0.2, 0.8, 3.0]))


def test_to_model_input_channel_conversions() -> None:
    rgb = _decoded(np.broadcast_to(np.array([1.0, 0.5, 0.0]), (4, 4, 3)).copy())
    grey = to_model_input(rgb, input_size=(4, 4), channels=1, mean=[0.0], std=[1.0])
    assert grey.shape == (1, 4, 4)
    assert grey[0, 0, 0].item() == pytest.approx(0.299 + 0.587 * 0.5)  # ITU-R BT.601 luma
    mono = _decoded(np.full((4, 4, 1), 0.25))
    replicated = to_model_input(mono, input_size=(2, 2), channels=3, mean=[0.0], std=[1.0])
    assert replicated.shape == (3, 2, 2)
    torch.testing.assert_close(replicated, torch.full((3, 2, 2), 0.25))


def test_to_model_input_resizes_whole_image_with_antialias() -> None:
    # 1-pixel lines every 4th column: an antialiased 8× reduction averages them to their density 0.25, while
    # plain bilinear would only look at the two columns around each sample point (giving 0.5 here)
    stripes = np.zeros((64, 64, 1), dtype=np.float32)
    stripes[:, ::4] = 1.0
    x = to_model_input(_decoded(stripes), input_size=(8, 8), channels=1, mean=[0.0], std=[1.0])
    torch.testing.assert_close(x, torch.full((1, 8, 8), 0.25), atol=0.03, rtol=0)
    # no crop: a marker in the bottom-right corner survives to the bottom-right of the input
    marked = np.zeros((100, 50, 1), dtype=np.float32)
    marked[-20:, -10:] = 1.0
    y = to_model_input(_decoded(marked), input_size=(10, 10), channels=1, mean=[0.0], std=[1.0])
    assert y[0, -1, -1].item() > 0.9 and y[0, 0, 0].item() == 0.0


def test_to_model_input_rejects_bad_configuration() -> None:
    img = _decoded(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        to_model_input(img, input_size=(2, 2), channels=3, mean=[0.0, 0.0], std=[1.0])
    with pytest.raises(ValueError):
        to_model_input(img, input_size=(2, 2), channels=3, mean=[0.0], std=[0.0])


def test_rgb8() -> None:
    grey = _decoded(np.array([[[0.0], [0.5], [1.0]]]))
    out = rgb8(grey)
    assert out.dtype == np.uint8 and out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0], [[0, 0, 0], [128, 128, 128], [255, 255, 255]])
    colour = _decoded(np.array([[[1.0, 0.0, 0.2]]]))
    np.testing.assert_array_equal(rgb8(colour)[0, 0], [255, 0, 51])


# --------------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------------


def test_dicom_ct_small_modality_lut_and_minmax_fallback() -> None:
    ds = dicom_dataset("CT_small.dcm")
    assert "WindowCenter" not in ds  # so the min-max fallback is what is tested here
    decoded = decode_image(dicom_bytes("CT_small.dcm"))
    assert (decoded.format, decoded.width, decoded.height, decoded.frames) == ("DICOM", 128, 128, 1)
    assert decoded.pixels.shape == (128, 128, 1)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(hu), atol=1e-6)


@pytest.mark.parametrize(("center", "width"), [(40.0, 400.0), (300.0, 1000.0)])
def test_dicom_ct_small_window_matches_numpy(center: float, width: float) -> None:
    ds = dicom_dataset("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth = center, width
    decoded = decode_image(dataset_to_bytes(ds))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = expected_linear_window(hu, center, width)
    assert 0.0 < expected.mean() < 1.0  # the window really cuts into the data
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_dicom_mr_small_uses_its_own_window() -> None:
    ds = dicom_dataset("MR_small.dcm")
    decoded = decode_image(dicom_bytes("MR_small.dcm"))
    expected = expected_linear_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_dicom_monochrome1_is_inverted() -> None:
    ds = dicom_dataset("CT_small.dcm")
    mono2 = decode_image(dataset_to_bytes(ds)).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    mono1 = decode_image(dataset_to_bytes(ds)).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert not np.allclose(mono1, mono2)


def test_dicom_without_preamble() -> None:
    data = dicom_bytes("CT_small.dcm")
    with_preamble = decode_image(data)
    without = decode_image(data[132:])  # drop the 128-byte preamble and the DICM magic
    assert without.format == "DICOM"
    np.testing.assert_array_equal(without.pixels, with_preamble.pixels)


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG2000.dcm"])
def test_dicom_compressed_grey(name: str) -> None:
    decoded = decode_image(dicom_bytes(name))
    assert decoded.pixels.shape == (1024, 256, 1)
    reference = decode_image(dicom_bytes("JPEG2000.dcm")).pixels[:, :, 0]
    assert decoded.pixels.min() == 0.0 and decoded.pixels.max() == 1.0
    assert np.corrcoef(decoded.pixels[:, :, 0].ravel(), reference.ravel())[0, 1] > 0.9


def test_dicom_jpeg_lossy_nonconformant_stream_is_a_clean_422() -> None:
    # JPEG-lossy.dcm has invalid SOS parameters; pylibjpeg and Pillow both refuse it (pydicom's test-file README
    # lists JPGExtended.dcm, used above, as its fixed version). It must be a clean 422 naming the transfer syntax.
    with pytest.raises(InvalidImage) as info:
        decode_image(dicom_bytes("JPEG-lossy.dcm"))
    assert info.value.detail == (
        "DICOM pixel data in JPEG Extended (Process 2 and 4) is corrupt and could not be decoded"
    )


def test_dicom_rgb_multiframe_rle() -> None:
    data = dicom_bytes("SC_rgb_rle_2frame.dcm")
    first = decode_image(data)
    assert (first.frames, first.pixels.shape) == (2, (100, 100, 3))
    np.testing.assert_allclose(first.pixels[0, 50], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(first.pixels[20, 50], [0.0, 1.0, 0.0], atol=1e-6)
    second = decode_image(data, frame=1)  # the second frame is the colour inverse of the first
    np.testing.assert_allclose(second.pixels[0, 50], [0.0, 1.0, 1.0], atol=1e-6)


def test_dicom_ybr_is_converted_to_rgb() -> None:
    uncompressed = decode_image(dicom_bytes("SC_ybr_full_422_uncompressed.dcm"))
    np.testing.assert_allclose(uncompressed.pixels[0, 0], [1.0, 0.0, 0.0], atol=0.01)  # red, not Y/Cb/Cr
    jpeg = decode_image(dicom_bytes("examples_ybr_color.dcm"), frame=5)  # JPEG baseline via pylibjpeg
    assert (jpeg.frames, jpeg.pixels.shape) == (30, (240, 320, 3))
    ds = dicom_dataset("examples_ybr_color.dcm")
    reference = pydicom.pixels.pixel_array(ds, index=5).astype(np.float32) / 255.0
    np.testing.assert_allclose(jpeg.pixels, reference, atol=1e-6)


def test_dicom_palette_colour() -> None:
    decoded = decode_image(dicom_bytes("examples_palette.dcm"))
    assert decoded.pixels.shape == (350, 800, 3)
    ds = dicom_dataset("examples_palette.dcm")
    reference = pydicom.pixels.apply_color_lut(ds.pixel_array, ds)
    scale = 255.0 if reference.dtype == np.uint8 else 65535.0
    np.testing.assert_allclose(decoded.pixels, reference / scale, atol=1e-6)


def test_dicom_multiframe_frame_selection() -> None:
    ds = dicom_dataset("rtdose.dcm")
    data = dicom_bytes("rtdose.dcm")
    decoded = decode_image(data, frame=3)
    assert (decoded.frames, decoded.pixels.shape) == (15, (10, 10, 1))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(ds.pixel_array[3]), atol=1e-6)
    assert not np.allclose(decode_image(data).pixels, decoded.pixels)  # default is frame 0, a different one
    with pytest.raises(InvalidOption) as info:
        decode_image(data, frame=15)
    assert info.value.status == 422
    assert "15 frames" in info.value.detail


def test_dicom_frame_limit_is_checked_before_decoding() -> None:
    truncated = dicom_bytes("rtdose.dcm")[:-3000]  # decoding would fail with 422
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(truncated, ImageLimits(max_frames=10))
    assert info.value.detail == "DICOM file has 15 frames, above the limit of 10"
    with pytest.raises(InvalidImage):
        decode_image(truncated)


def test_dicom_pixel_limit_is_checked_before_decoding() -> None:
    truncated = dicom_bytes("CT_small.dcm")[:-5000]
    with pytest.raises(PayloadTooLarge) as info:
        decode_image(truncated, ImageLimits(max_pixels=128 * 128 - 1))
    assert "128×128" in info.value.detail


def test_dicom_without_pixel_data() -> None:
    with pytest.raises(InvalidImage) as info:
        decode_image(dicom_bytes("rtplan.dcm"))
    assert info.value.status == 422
    assert "no pixel data" in info.value.detail


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_truncated_dicom(name: str) -> None:
    data = dicom_bytes(name)
    with pytest.raises(InvalidImage) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.detail == "DICOM pixel data is truncated"


def test_dicom_errors_and_logs_never_contain_patient_data(caplog: pytest.LogCaptureFixture) -> None:
    ct = dicom_dataset("CT_small.dcm")
    assert str(ct.PatientName) == CT_PATIENT_NAME
    secrets = [CT_PATIENT_NAME, "CompressedSamples", str(ct.PatientID)]
    failing: list[tuple[bytes, dict[str, object]]] = [
        (dicom_bytes("CT_small.dcm")[:20_000], {}),
        (dicom_bytes("CT_small.dcm"), {"frame": 1}),
        (dicom_bytes("CT_small.dcm"), {"limits": ImageLimits(max_pixels=10)}),
        (dicom_bytes("CT_small.dcm")[:700], {}),
        (dicom_bytes("JPEG-lossy.dcm"), {}),
        (dicom_bytes("rtplan.dcm"), {}),
    ]
    plan = dicom_dataset("rtplan.dcm")
    secrets += [str(plan.PatientName), str(plan.PatientID)]
    secrets = [secret for secret in secrets if len(secret) >= 4]
    assert len(secrets) >= 4
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data, kwargs in failing:
            with pytest.raises(XaasError) as info:
                decode_image(data, **kwargs)  # type: ignore[arg-type]
            texts = [info.value.detail, str(info.value), repr(info.value.__cause__), repr(info.value.__context__)]
            for secret in secrets:
                assert all(secret not in text for text in texts), (secret, texts)
    for secret in secrets:
        assert secret not in caplog.text
        assert all(secret not in str(w.message) for w in caught)


def test_dicom_voi_lut_sequence_is_preferred_over_window() -> None:
    from pydicom.dataset import Dataset
    from pydicom.dataelem import DataElement

    ds = dicom_dataset("MR_small.dcm")  # has a window too; a VOI LUT takes precedence (as in pydicom)
    item = Dataset()
    item.add(DataElement(0x00283002, "US", [256, 0, 8]))  # LUTDescriptor: 256 entries, first maps 0, 8 bits
    item.add(DataElement(0x00283006, "US", list(range(255, -1, -1))))  # LUTData: an inverting ramp
    ds.VOILUTSequence = [item]
    decoded = decode_image(dataset_to_bytes(ds))
    stored = ds.pixel_array.astype(np.int64)
    assert stored.max() > 255  # values beyond the LUT map to its last entry
    expected = (255 - np.clip(stored, 0, 255)) / 255.0
    assert 0.0 < expected.mean() < 1.0
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-6)


def test_dicom_enhanced_functional_groups_rescale_and_window() -> None:
    from pydicom.dataset import Dataset

    ds = dicom_dataset("CT_small.dcm")
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    del ds.RescaleSlope, ds.RescaleIntercept
    transform, shared_window, frame_window = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = slope, intercept, "HU"
    shared_window.WindowCenter, shared_window.WindowWidth = 1000.0, 10.0
    frame_window.WindowCenter, frame_window.WindowWidth = 40.0, 400.0  # per-frame overrides shared
    shared, per_frame = Dataset(), Dataset()
    shared.PixelValueTransformationSequence = [transform]
    shared.FrameVOILUTSequence = [shared_window]
    per_frame.FrameVOILUTSequence = [frame_window]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [per_frame]
    decoded = decode_image(dataset_to_bytes(ds))
    expected = expected_linear_window(ds.pixel_array * slope + intercept, 40.0, 400.0)
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected, atol=1e-5)


def test_invalid_window_falls_back_to_minmax() -> None:
    ds = dicom_dataset("MR_small.dcm")
    ds.WindowWidth = 0  # not allowed for LINEAR
    decoded = decode_image(dataset_to_bytes(ds))
    np.testing.assert_allclose(decoded.pixels[:, :, 0], expected_minmax(ds.pixel_array), atol=1e-6)


def test_concurrent_decodes_are_correct_and_leave_warning_filters_alone() -> None:
    from concurrent.futures import ThreadPoolExecutor

    filters_before = list(warnings.filters)
    good = encode(noise_rgb(32, 32), "PNG")
    expected = decode_image(good).pixels

    def work(i: int) -> str:
        if i % 2:
            try:
                decode_image(png_with_header(10_000, 10_000))
            except PayloadTooLarge:
                return "413"
            return "no error"
        return "ok" if np.array_equal(decode_image(good).pixels, expected) else "wrong pixels"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(64)))
    assert results == ["ok", "413"] * 32
    assert list(warnings.filters) == filters_before
