"""Tests for service.imaging.pil: formats, pixel modes, frames, EXIF orientation and the warnings lock."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import pytest
from imaging_support import encode, noise_rgb, png_with_header
from PIL import Image, ImageOps

from service.errors import InvalidImage, InvalidOption, PayloadTooLarge
from service.imaging import ImageLimits, decode_image

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


# --------------------------------------------------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------------------------------------------------


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


def exif_block(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A little-endian EXIF block, one IFD of (tag, type, count, 4-byte value) entries; by hand, so it can be bad."""
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHI", tag, kind, count) + value for tag, kind, count, value in entries)
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


SHORT, LONG, ASCII = 3, 4, 2


def displayed(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for ``stored`` with this EXIF Orientation, from the tag's definition (EXIF 2.3, 0x0112)
    rather than from PIL: the value says where the stored row 0 and column 0 end up (6 = row 0 right, column 0 top)."""
    h, w = stored.shape[:2]
    i, j = np.indices((w, h) if orientation >= 5 else (h, w))
    source = {
        1: (i, j),  # row 0 top, column 0 left
        2: (i, w - 1 - j),  # row 0 top, column 0 right
        3: (h - 1 - i, w - 1 - j),  # row 0 bottom, column 0 right
        4: (h - 1 - i, j),  # row 0 bottom, column 0 left
        5: (j, i),  # row 0 left, column 0 top
        6: (h - 1 - j, i),  # row 0 right, column 0 top
        7: (h - 1 - j, w - 1 - i),  # row 0 right, column 0 bottom
        8: (j, w - 1 - i),  # row 0 left, column 0 bottom
    }[orientation]
    return stored[source]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "JPEG"])
def test_every_exif_orientation_is_displayed_as_defined(fmt: str, orientation: int) -> None:
    if fmt == "JPEG":
        # flat 8×8 blocks of distinct greys survive JPEG almost exactly (DC terms only); 3×2 of them are asymmetric
        levels = np.arange(6, dtype=np.uint8).reshape(3, 2) * 40 + 20
        stored, atol = np.kron(levels, np.ones((8, 8), dtype=np.uint8)), 3 / 255
    else:
        stored, atol = np.asarray(noise_rgb(7, 5, seed=orientation)), 1e-6
    im = Image.fromarray(stored)
    if fmt == "TIFF":
        data = encode(im, fmt, tiffinfo={274: orientation})  # Orientation in the TIFF's own IFD
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        data = encode(im, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    expected = displayed(stored, orientation)
    decoded = decode_image(data)
    assert (decoded.height, decoded.width) == expected.shape[:2]
    assert decoded.pixels.shape == expected.shape[:2] + (1 if stored.ndim == 2 else 3,)
    np.testing.assert_allclose(decoded.pixels, expected.reshape(decoded.pixels.shape) / 255.0, atol=atol, rtol=0)


@pytest.mark.parametrize("orientation", [1, 6])
def test_exif_orientation_is_applied_in_place(orientation: int) -> None:
    from service.imaging.pil import _apply_exif_orientation

    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(io.BytesIO(encode(noise_rgb(6, 4), "PNG", exif=exif))) as im:
        im.load()
        assert _apply_exif_orientation(im) is im  # no copy of a 40 MP image, turned or not
        assert im.size == ((4, 6) if orientation == 6 else (6, 4))


def test_unparseable_exif_is_ignored() -> None:
    data = encode(noise_rgb(6, 4), "PNG", exif=b"XX*\x00\x08\x00\x00\x00")  # no TIFF byte-order mark
    with Image.open(io.BytesIO(data)) as im, pytest.raises(SyntaxError):
        ImageOps.exif_transpose(im)  # what decode_image must not let through
    decoded = decode_image(data)
    np.testing.assert_allclose(decoded.pixels, np.asarray(noise_rgb(6, 4)) / 255.0, atol=1e-6)


def test_failed_exif_rewrite_after_turning_is_ignored() -> None:
    # the Orientation reads fine, but exif_transpose then re-serialises the EXIF without it, follows the Exif sub-IFD
    # pointer (far outside the block) and warns "Corrupt EXIF data"; with warnings as errors that raises after turning
    exif = exif_block((0x0112, SHORT, 1, struct.pack("<HH", 6, 0)), (0x8769, LONG, 1, struct.pack("<I", 10**6)))
    data = encode(noise_rgb(6, 4), "PNG", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(io.BytesIO(data)) as im, pytest.raises(UserWarning):
            ImageOps.exif_transpose(im, in_place=True)
        assert im.size == (4, 6)  # the library had turned the pixels before it failed
        decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (4, 6)
    np.testing.assert_allclose(decoded.pixels, displayed(np.asarray(noise_rgb(6, 4)), 6) / 255.0, atol=1e-6)


def test_failed_exif_transposition_is_invalid_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_exif_transpose(image: Image.Image, *, in_place: bool = False) -> None:
        raise OSError("transpose failed for <PIL.PngImagePlugin.PngImageFile object at 0x7f00>")

    monkeypatch.setattr(ImageOps, "exif_transpose", failing_exif_transpose)
    exif = Image.Exif()
    exif[0x0112] = 6
    with pytest.raises(InvalidImage) as info:
        decode_image(encode(noise_rgb(6, 4), "PNG", exif=exif))
    assert info.value.detail == "image data is corrupt or unreadable (OSError)"  # PIL's message is not echoed


def test_exif_orientation_stored_as_text_turns_nothing() -> None:
    # Orientation is a SHORT; Pillow reads an ASCII one as the string "6", which exif_transpose does not act on
    data = encode(noise_rgb(6, 4), "PNG", exif=exif_block((0x0112, ASCII, 2, b"6\x00\x00\x00")))
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(0x0112) == "6"
    decoded = decode_image(data)
    assert (decoded.width, decoded.height) == (6, 4)
    np.testing.assert_allclose(decoded.pixels, np.asarray(noise_rgb(6, 4)) / 255.0, atol=1e-6)




# --------------------------------------------------------------------------------------------------------------------
# concurrency
# --------------------------------------------------------------------------------------------------------------------


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
