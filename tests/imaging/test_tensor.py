"""Tests for service.imaging.tensor: model input (resize, channels, normalisation) and the overlay base."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from imaging_support import encode
from PIL import Image

from service.imaging import DecodedImage, decode_image, rgb8, to_model_input

# --------------------------------------------------------------------------------------------------------------------
# model input and overlay base
# --------------------------------------------------------------------------------------------------------------------


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
