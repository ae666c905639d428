"""Feature visualisation engine: activations, filters, class impressions on the shipped demo model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from service.config import DEFAULT_MODELS_FILE
from service.demo.data import generate_sample, sample_rng
from service.engine.features import (
    ClassImpression,
    ImpressionParams,
    activation_grid,
    channel_image,
    channel_stats,
    conv_layers,
    filter_grid,
    layer_activations,
    tile_origin,
    top_channels,
)
from service.errors import InvalidOption
from service.imaging import decode_image, to_model_input
from service.registry import load_model, read_registry_file


@pytest.fixture(scope="module")
def demo():
    spec = next(s for s in read_registry_file(DEFAULT_MODELS_FILE) if s.name == "demo")
    return load_model(spec, base_dir=DEFAULT_MODELS_FILE.parent, device_policy="cpu")


@pytest.fixture(scope="module")
def demo_input(demo):
    import io

    image, _ = generate_sample(sample_rng(777, 0))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    decoded = decode_image(buf.getvalue())
    s = demo.spec
    x = to_model_input(decoded, input_size=s.input_size, channels=s.channels, mean=s.mean, std=s.std)
    return x if x.dim() == 4 else x.unsqueeze(0)


def _no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in module.modules())


def _reference_activation(model, x, layer):
    """Independent of service.engine: a raw forward hook, removed by hand."""
    out = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, a, o: out.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out[0][0]


@pytest.mark.parametrize("layer", ["features.block6", "features.block2.conv"])
def test_activation_stats_and_grid_match_hooked_activation(demo, demo_input, layer):
    ref = _reference_activation(demo.module, demo_input, layer)
    act = layer_activations(demo.module, demo_input, layer)
    assert _no_hooks(demo.module)
    assert all(not p.requires_grad for p in demo.module.parameters())
    torch.testing.assert_close(act, ref)

    stats = channel_stats(act)
    flat = ref.flatten(1)
    for c in (0, 5, ref.shape[0] - 1):
        assert stats[c]["index"] == c
        assert stats[c]["mean"] == pytest.approx(float(flat[c].mean()), rel=1e-5, abs=1e-6)
        assert stats[c]["max"] == pytest.approx(float(flat[c].max()), rel=1e-6)
        assert stats[c]["fraction_positive"] == pytest.approx(float((flat[c] > 0).float().mean()))

    top = top_channels(act, 16)
    expected = torch.argsort(flat.mean(1), descending=True)[:16].tolist()
    assert top == expected

    grid, scale = activation_grid(act, top)
    h, w = ref.shape[1:]
    for pos in (0, 7, 15):
        y, x = tile_origin(pos, len(top), (h * scale, w * scale))
        tile = grid[y: y + h * scale: scale, x: x + w * scale: scale].astype(np.float32) / 255.0
        m = ref[top[pos]].numpy()
        expect = (m - m.min()) / (m.max() - m.min())
        np.testing.assert_allclose(tile, expect, atol=0.5 / 255 + 1e-6)

    one = channel_image(act, top[0])
    assert one.shape == (h, w) and one.dtype == np.uint8 and one.max() == 255 and one.min() == 0
    with pytest.raises(InvalidOption):
        channel_image(act, ref.shape[0])


def test_filter_grid_matches_weights(demo):
    convs = conv_layers(demo.module)
    assert convs[0] == "features.block1.conv" and len(convs) == 6
    out = filter_grid(demo.module)
    assert out["layer"] == convs[0] and out["mode"] == "rgb" and out["count"] == 32
    w = demo.module.get_submodule(convs[0]).weight.detach()
    kh, kw, s = *out["kernel_size"], out["scale"]
    for i in (0, 31):
        y, x = tile_origin(i, 32, (kh * s, kw * s))
        tile = out["grid"][y: y + kh * s: s, x: x + kw * s: s].astype(np.float32) / 255.0
        f = w[i].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(tile, (f - f.min()) / (f.max() - f.min()), atol=0.5 / 255 + 1e-6)

    grey = filter_grid(demo.module, "features.block3.conv")
    assert grey["mode"] == "grey-mean" and grey["grid"].ndim == 2
    w3 = demo.module.get_submodule("features.block3.conv").weight.detach()
    s = grey["scale"]
    tile0 = grey["grid"][0: 3 * s: s, 0: 3 * s: s].astype(np.float32) / 255.0
    m = w3[0].mean(0).numpy()
    np.testing.assert_allclose(tile0, (m - m.min()) / (m.max() - m.min()), atol=0.5 / 255 + 1e-6)

    with pytest.raises(InvalidOption, match="conv layers"):
        filter_grid(demo.module, "features.block3")


# ------------------------------------------------------------------------------------------------ impressions


def sobel_magnitude(grey: np.ndarray) -> torch.Tensor:
    g = torch.tensor(grey, dtype=torch.float32)[None, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])[None, None]
    gx, gy = F.conv2d(g, kx, padding=1), F.conv2d(g, kx.transpose(2, 3), padding=1)
    return (gx ** 2 + gy ** 2).sqrt()[0, 0]


def shape_edge_template(kind: str, radius: float, angle: float = 0.0) -> torch.Tensor:
    """Sobel magnitude of a filled circle / square, drawn like the demo data draws them."""
    n = int(2 * radius + 6)
    canvas = Image.new("L", (n, n), 0)
    draw, c = ImageDraw.Draw(canvas), n / 2
    if kind == "circle":
        draw.ellipse((c - radius, c - radius, c + radius, c + radius), fill=255)
    else:
        h = radius / math.sqrt(2)
        pts = np.array([[-h, -h], [h, -h], [h, h], [-h, h]]) @ np.array(
            [[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
        draw.polygon([(c + float(px), c + float(py)) for px, py in pts], fill=255)
    return sobel_magnitude(np.asarray(canvas, dtype=np.float32) / 255.0)


def best_template_correlation(edges: torch.Tensor, kind: str) -> float:
    """Max over positions, object sizes (demo radii 11..24 px, plus 8) and, for squares, rotations of the normalised
    cross-correlation between the image's edge map and the shape's edge template (colour-insensitive: grey Sobel)."""
    best = -1.0
    e = edges[None, None]
    for r in (8, 11, 14, 18, 24):
        for angle in ((0.0,) if kind == "circle" else (0.0, math.pi / 8, math.pi / 4)):
            t = shape_edge_template(kind, r, angle)
            t = ((t - t.mean()) / t.norm())[None, None]
            ones = torch.ones_like(t)
            num = F.conv2d(e, t)
            s1, s2 = F.conv2d(e, ones), F.conv2d(e * e, ones)
            var = (s2 - s1 ** 2 / t.numel()).clamp_min(1e-8)
            best = max(best, float((num / var.sqrt()).max()))
    return best


def _impression(demo, label: str) -> tuple[ClassImpression, float]:
    target = demo.labels.index(label)
    ci = ClassImpression(demo.module, target, demo.input_shape, demo.input_range, task=demo.task,
                         params=ImpressionParams(), device=demo.device)
    with torch.no_grad():
        start = float(torch.sigmoid(demo.module(ci.x))[0, target])
    while not ci.done:
        ci.run(10)
    return ci, start


@pytest.mark.parametrize("label,other", [("circle", "square"), ("square", "circle")])
def test_class_impression_reaches_class_and_looks_like_it(demo, label, other):
    ci, start = _impression(demo, label)
    assert ci.step == ImpressionParams().steps == 200
    assert _no_hooks(demo.module)
    assert all(not p.requires_grad and p.grad is None for p in demo.module.parameters())
    lo, hi = (torch.tensor(v).view(1, -1, 1, 1) for v in demo.input_range)
    assert bool((ci.x >= lo - 1e-6).all() and (ci.x <= hi + 1e-6).all())  # clamped to the valid pixel range

    target = demo.labels.index(label)
    with torch.no_grad():
        probs = torch.sigmoid(demo.module(ci.x))[0]
    assert start < 0.5, "starts from noise the model does not call the class"
    assert ci.probability >= 0.9 and float(probs[target]) >= 0.9
    # Classified as the class: positive for it (multi-label, sigmoid >= 0.5) and at least as likely as the rival shape.
    assert float(probs[target]) >= float(probs[demo.labels.index(other)])

    pixels = ci.pixels()
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8
    edges = sobel_magnitude(pixels.astype(np.float32).mean(2) / 255.0)
    own, rival = best_template_correlation(edges, label), best_template_correlation(edges, other)
    print(f"{label}: p {start:.4f} -> {ci.probability:.4f}; all probs {[round(float(p), 3) for p in probs]}; "
          f"edge NCC {label} {own:.3f} vs {other} {rival:.3f}")
    assert own > rival


def test_class_impression_is_resumable_and_deterministic(demo):
    a = ClassImpression(demo.module, 0, demo.input_shape, demo.input_range, task=demo.task,
                        params=ImpressionParams(steps=12, seed=3))
    b = ClassImpression(demo.module, 0, demo.input_shape, demo.input_range, task=demo.task,
                        params=ImpressionParams(steps=12, seed=3))
    assert a.run(5) == 5 and a.run(5) == 5 and a.run(5) == 2 and a.done
    assert b.run(100) == 12
    torch.testing.assert_close(a.x, b.x)
