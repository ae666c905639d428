"""Tests for service.rendering: heatmap PNG, overlay PNG, raw float32."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from service.errors import InvalidOption
from service.rendering import (
    MapStats,
    encode_raw,
    list_colormaps,
    normalised_map,
    render_heatmap,
    render_overlay,
    validate_overlay_options,
)

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no divide-by-zero / invalid-value warnings


def decode_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    return im


def peak_map() -> np.ndarray:
    heatmap = np.zeros((7, 7), dtype=np.float32)
    heatmap[1, 5] = 3.0
    return heatmap


# --------------------------------------------------------------------------------------------------------------------
# heatmap
# --------------------------------------------------------------------------------------------------------------------


def test_heatmap_png_is_grey_at_original_size() -> None:
    png, stats = render_heatmap(peak_map(), (123, 45))
    im = decode_png(png)
    assert (im.mode, im.size) == ("L", (123, 45))
    pixels = np.asarray(im)
    assert pixels.max() == 255  # the map's maximum
    assert pixels[-1, 0] == 0  # far from the peak: zero stays zero
    y, x = np.unravel_index(int(pixels.argmax()), pixels.shape)
    assert x > 123 * 0.6 and y < 45 * 0.4  # the peak is where it was (top right)
    assert stats == MapStats(min=0.0, max=3.0, empty=False, nonfinite=False)


def test_heatmap_scaling_is_linear_from_zero_at_native_size() -> None:
    heatmap = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    png, _ = render_heatmap(heatmap, (2, 2))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), [[0, 64], [128, 255]])


def test_heatmap_upsampling_is_bilinear_half_pixel() -> None:
    # align_corners=False: 2 → 4 samples the source at -0.25, 0.25, 0.75, 1.25 (clamped) → 0, .25, .75, 1
    heatmap = np.array([[0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    png, _ = render_heatmap(heatmap, (4, 3))
    pixels = np.asarray(decode_png(png))
    assert pixels.shape == (3, 4)
    np.testing.assert_array_equal(pixels, np.tile([0, 64, 191, 255], (3, 1)))


def test_heatmap_negative_values_are_clipped_to_zero() -> None:
    heatmap = np.array([[-5.0, 0.0], [1.0, 2.0]], dtype=np.float32)
    png, stats = render_heatmap(heatmap, (2, 2))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), [[0, 0], [128, 255]])
    assert (stats.min, stats.max, stats.empty) == (-5.0, 2.0, False)


def test_negative_values_are_clipped_before_upsampling() -> None:
    # clipped first: [0, 2] → 0, .25, .75, 1; clipping only at the end would let -4 drag its neighbours down
    png, _ = render_heatmap(np.array([[-4.0, 2.0]], dtype=np.float32), (4, 1))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), [[0, 64, 191, 255]])


def test_heatmap_downsampling_when_map_is_larger_than_image() -> None:
    heatmap = np.zeros((64, 64), dtype=np.float32)
    heatmap[:, 32:] = 1.0
    png, _ = render_heatmap(heatmap, (4, 2))
    pixels = np.asarray(decode_png(png)).astype(int)
    # antialiased (widened triangle filter): the outer columns are pure, the inner ones average across the edge
    np.testing.assert_array_equal(pixels[:, 0], [0, 0])
    np.testing.assert_array_equal(pixels[:, 3], [255, 255])
    assert 0 < pixels[0, 1] < 64 and pixels[0, 1] + pixels[0, 2] == 255
    np.testing.assert_array_equal(pixels[0], pixels[1])


@pytest.mark.parametrize(
    ("heatmap", "nonfinite"),
    [
        (np.zeros((5, 6), dtype=np.float32), False),
        (np.full((5, 6), -1.0, dtype=np.float32), False),
        (np.full((5, 6), np.nan, dtype=np.float32), True),
        (np.array([[np.nan, -np.inf], [0.0, -2.0]], dtype=np.float32), True),
    ],
    ids=["zeros", "negative", "all-nan", "nan-and-negative"],
)
def test_empty_maps_give_zero_png_and_are_flagged(heatmap: np.ndarray, nonfinite: bool) -> None:
    png, stats = render_heatmap(heatmap, (20, 10))
    pixels = np.asarray(decode_png(png))
    assert pixels.shape == (10, 20)
    assert not pixels.any()
    assert stats.empty is True
    assert stats.nonfinite is nonfinite
    assert np.isfinite([stats.min, stats.max]).all()


def test_nonfinite_values_are_drawn_as_zero_and_flagged() -> None:
    heatmap = np.array([[np.nan, 1.0], [np.inf, 4.0]], dtype=np.float32)
    png, stats = render_heatmap(heatmap, (2, 2))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), [[0, 64], [0, 255]])
    assert stats == MapStats(min=1.0, max=4.0, empty=False, nonfinite=True)


def test_float64_and_huge_values_do_not_overflow() -> None:
    heatmap = np.array([[0.0, 3e38], [1e300, 1.5e38]], dtype=np.float64)  # 1e300 is inf in float32
    png, stats = render_heatmap(heatmap, (2, 2))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), [[0, 255], [0, 128]])
    assert stats.nonfinite is True


def test_normalised_map_is_the_shared_helper() -> None:
    unit, stats = normalised_map(peak_map(), (30, 20))
    assert unit.shape == (20, 30) and unit.dtype == np.float32
    assert unit.max() == 1.0 and unit.min() == 0.0
    png, _ = render_heatmap(peak_map(), (30, 20))
    np.testing.assert_array_equal(np.asarray(decode_png(png)), np.rint(unit * 255).astype(np.uint8))


def test_input_map_is_not_modified() -> None:
    heatmap = np.array([[np.nan, -1.0], [2.0, 4.0]], dtype=np.float32)
    before = heatmap.copy()
    render_heatmap(heatmap, (3, 3))
    np.testing.assert_array_equal(heatmap, before)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4)), np.zeros((0, 3)), np.zeros(5), np.array([["a"]])])
def test_bad_map_shapes_are_programming_errors(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        render_heatmap(bad, (4, 4))


def test_tensors_are_refused() -> None:
    with pytest.raises(TypeError):
        render_heatmap(torch.zeros(3, 3), (4, 4))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------------
# raw
# --------------------------------------------------------------------------------------------------------------------


def test_raw_round_trip_is_exact_and_little_endian() -> None:
    heatmap = np.array([[1.0, -2.5, np.nan], [np.inf, 1e-30, 3.25]], dtype=np.float32)
    raw = encode_raw(heatmap)
    assert raw["dtype"] == "float32" and raw["shape"] == [2, 3]
    data = base64.b64decode(raw["data"])
    assert data[:4] == b"\x00\x00\x80\x3f"  # 1.0 as little-endian IEEE 754
    back = np.frombuffer(data, dtype="<f4").reshape(raw["shape"])
    np.testing.assert_array_equal(back, heatmap)  # NaN == NaN for assert_array_equal, inf kept


def test_raw_of_big_endian_float64_input() -> None:
    heatmap = np.array([[0.5, 2.0]], dtype=">f8")
    back = np.frombuffer(base64.b64decode(encode_raw(heatmap)["data"]), dtype="<f4")
    np.testing.assert_array_equal(back, [0.5, 2.0])


# --------------------------------------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------------------------------------


def base_image(width: int = 40, height: int = 30) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_overlay_is_rgb_at_image_size() -> None:
    im = decode_png(render_overlay(peak_map(), base_image(40, 30)))
    assert (im.mode, im.size) == ("RGB", (40, 30))


def test_overlay_with_alpha_zero_is_the_image() -> None:
    base = base_image()
    pixels = np.asarray(decode_png(render_overlay(peak_map(), base, alpha=0.0)))
    np.testing.assert_array_equal(pixels, base)


def test_overlay_with_alpha_one_is_the_colormap() -> None:
    import matplotlib

    base = base_image(7, 7)
    pixels = np.asarray(decode_png(render_overlay(peak_map(), base, colormap="viridis", alpha=1.0)))
    viridis = matplotlib.colormaps["viridis"]
    np.testing.assert_array_equal(pixels[1, 5], np.asarray(viridis(1.0, bytes=True))[:3])  # the peak
    np.testing.assert_array_equal(pixels[6, 0], np.asarray(viridis(0.0, bytes=True))[:3])  # zero importance


def test_overlay_blends_linearly() -> None:
    import matplotlib

    base = np.full((7, 7, 3), 100, dtype=np.uint8)
    pixels = np.asarray(decode_png(render_overlay(peak_map(), base, colormap="jet", alpha=0.25)))
    jet_peak = np.asarray(matplotlib.colormaps["jet"](1.0, bytes=True))[:3].astype(np.float64)
    np.testing.assert_array_equal(pixels[1, 5], np.rint(0.75 * 100 + 0.25 * jet_peak))


def test_overlay_of_empty_map_is_defined() -> None:
    base = base_image(5, 5)
    pixels = np.asarray(decode_png(render_overlay(np.full((3, 3), np.nan, np.float32), base, alpha=1.0)))
    assert (pixels == pixels[0, 0]).all()  # uniformly the colormap's zero colour


@pytest.mark.parametrize("name", ["nope", "virdis", "", "JET", None])
def test_unknown_colormap(name: str | None) -> None:
    with pytest.raises(InvalidOption) as info:
        render_overlay(peak_map(), base_image(), colormap=name)  # type: ignore[arg-type]
    assert info.value.status == 422
    assert "viridis" in info.value.detail and "jet" in info.value.detail


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), float("inf"), "x", None, True])
def test_alpha_out_of_range(alpha: object) -> None:
    with pytest.raises(InvalidOption) as info:
        render_overlay(peak_map(), base_image(), alpha=alpha)  # type: ignore[arg-type]
    assert "alpha" in info.value.detail


def test_validate_overlay_options_and_list() -> None:
    assert validate_overlay_options("magma", 1) == ("magma", 1.0)
    names = list_colormaps()
    assert {"jet", "viridis", "gray", "viridis_r"} <= set(names)
    assert names == sorted(names)


def test_bad_base_image_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        render_overlay(peak_map(), np.zeros((4, 4, 3), dtype=np.float32))


def test_rendering_does_not_import_pyplot() -> None:
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from service.rendering import render_overlay, list_colormaps
        render_overlay(np.ones((2, 2), np.float32), np.zeros((4, 4, 3), np.uint8), colormap="turbo")
        list_colormaps()
        assert "matplotlib" in sys.modules
        assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
