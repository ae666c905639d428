"""``augment``: the average of the maps of flipped and shifted copies, mapped back, against a hand computation (each
copy built by index arithmetic, explained alone, mapped back by slicing or the bilinear formula), batch
independence, top-k targets fixed by the clean image, no model mutation, and validation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from engine_support import TinyNet, frozen, randomise_bn
from torch import nn

from service.engine import METHODS, validate_params
from service.engine.passes import complete
from service.engine.targets import ClassLogit, TargetRequest
from service.errors import BadOption, InvalidOption


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return frozen(randomise_bn(TinyNet(5)).double())


def images(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def shifted(x: np.ndarray, flip: bool, dy: int, dx: int) -> np.ndarray:
    """``copy[y, x] = flipped[clamp(y - dy), clamp(x - dx)]`` by index arithmetic (independent of F.pad)."""
    img = x[..., ::-1] if flip else x
    h, w = img.shape[-2:]
    ys = np.clip(np.arange(h) - dy, 0, h - 1)
    xs = np.clip(np.arange(w) - dx, 0, w - 1)
    return np.ascontiguousarray(img[..., ys[:, None], xs[None, :]])


def back(m: np.ndarray, flip: bool, oy: float, ox: float) -> tuple[np.ndarray, np.ndarray]:
    """A copy's map in the original frame and where it has a value; bilinear at half cells, 0 outside."""
    h, w = m.shape

    def at(y: int, x: int) -> tuple[float, float]:
        return (float(m[y, x]), 1.0) if 0 <= y < h and 0 <= x < w else (0.0, 0.0)

    out, valid = np.zeros_like(m), np.zeros_like(m)
    for y in range(h):
        for x in range(w):
            fy, fx = y + oy, x + ox
            y0, x0 = int(np.floor(fy)), int(np.floor(fx))
            wy, wx = fy - y0, fx - x0
            for yy, ay in ((y0, 1 - wy), (y0 + 1, wy)):
                for xx, ax in ((x0, 1 - wx), (x0 + 1, wx)):
                    if ay * ax == 0:
                        continue
                    v, ok = at(yy, xx)
                    out[y, x] += ay * ax * v
                    valid[y, x] += ay * ax * ok
    if flip:
        out, valid = out[:, ::-1], valid[:, ::-1]
    return out, valid


def by_hand(method: str, model: nn.Module, x: torch.Tensor, targets: list[int], shift: int, **params) -> np.ndarray:
    """Each of the six copies explained alone (a loop of forwards, on purpose), mapped back and averaged."""
    meth = METHODS[method]
    copies = [(False, 0, 0), (True, 0, 0), (False, shift, 0), (False, -shift, 0), (False, 0, shift), (False, 0, -shift)]
    out = []
    for i, t in enumerate(targets):
        total = valid_total = 0.0
        for flip, dy, dx in copies:
            c = torch.from_numpy(shifted(x[i:i + 1].numpy(), flip, dy, dx))
            m = meth.explain(model, c, torch.tensor([t]), task="multiclass", **params)[0].numpy()
            h, w = m.shape
            mapped, valid = back(m, flip, dy * h / x.shape[-2], dx * w / x.shape[-1])
            total, valid_total = total + mapped, valid_total + valid
        out.append(total / valid_total)
    return np.stack(out)


@pytest.mark.parametrize("method", ["saliency", "gradcam", "guided-backprop", "integrated-gradients"])
def test_explicit_targets_equal_the_hand_average(method):
    model, x = tiny(), images(2, 32)
    params = {"steps": 4} if method == "integrated-gradients" else {}
    got = METHODS[method].explain(model, x, torch.tensor([1, 3]), task="multiclass", augment=True, **params)
    # 0.0625 * 32 = 2 pixels: whole pixels for input-size maps, one cell of gradcam's 16 x 16 map
    want = by_hand(method, model, x, [1, 3], 2, **params)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_half_cell_shifts_are_resampled_bilinearly():
    model, x = tiny(), images(1, 16)          # 1 pixel = half a cell of the 8 x 8 map
    got = METHODS["gradcam"].explain(model, x, torch.tensor([2]), task="multiclass", augment=True)
    np.testing.assert_allclose(got.numpy(), by_hand("gradcam", model, x, [2], 1), rtol=1e-6, atol=1e-9)


def test_top_k_targets_are_fixed_by_the_clean_image_and_match_explicit_ones():
    model, x = tiny(), images(3, 32)
    meth = METHODS["gradcam"]
    top = complete(meth.steps(model, x, [TargetRequest(top_k=2)] * 3, task="multiclass", augment=True))
    clean = complete(meth.steps(model, x, [TargetRequest(top_k=2)] * 3, task="multiclass"))
    assert top.rows.targets == clean.rows.targets
    torch.testing.assert_close(top.scores, clean.scores)          # the clean image's probabilities
    explicit = [TargetRequest(tuple(clean.rows.targets[r] for r in clean.rows.per_image[i])) for i in range(3)]
    fixed = complete(meth.steps(model, x, explicit, task="multiclass", augment=True))
    torch.testing.assert_close(top.maps, fixed.maps)


def test_rows_are_independent_of_the_batch():
    model, x = tiny(), images(3, 32)
    targets = torch.tensor([0, 4, 2])
    for method in ("gradcam", "smoothgrad"):
        extra = {"samples": 3} if method == "smoothgrad" else {}
        together = METHODS[method].explain(model, x, targets, task="multiclass", augment=True, **extra)
        for i in range(3):
            alone = METHODS[method].explain(model, x[i:i + 1], targets[i:i + 1], task="multiclass", augment=True,
                                            **extra)
            torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-9, atol=1e-12)


def test_augment_off_is_the_plain_method_and_flip_only_at_zero_shift():
    model, x = tiny(), images(2, 16)
    t = torch.tensor([1, 2])
    plain = METHODS["gradcam"].explain(model, x, t, task="multiclass")
    torch.testing.assert_close(METHODS["gradcam"].explain(model, x, t, task="multiclass", augment=False), plain)
    flip = METHODS["gradcam"].explain(model, x, t, task="multiclass", augment=True, augment_shift=0.0)
    flipped = METHODS["gradcam"].explain(model, torch.flip(x, dims=(-1,)), t, task="multiclass")
    torch.testing.assert_close(flip, (plain + torch.flip(flipped, dims=(-1,))) / 2)


def test_the_shared_model_is_not_mutated():
    model, x = tiny(), images(2, 16)
    before = copy.deepcopy(model.state_dict())
    METHODS["guided-gradcam"].explain(model, x, torch.tensor([1, 2]), task="multiclass", augment=True)
    METHODS["gradcam"].explain(model, x, torch.tensor([1, 2]), task="multiclass", augment=True)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_validation():
    gradcam = METHODS["gradcam"]
    assert validate_params(gradcam, {"augment": "true"}) == {"augment": True, "augment_shift": 0.0625}
    with pytest.raises(BadOption):
        validate_params(gradcam, {"augment": "maybe"})
    with pytest.raises(InvalidOption):
        validate_params(gradcam, {"augment_shift": "0.5"})
    with pytest.raises(BadOption):                       # occlusion is a perturbation method: no augment
        validate_params(METHODS["occlusion"], {"augment": "true"})
    model = tiny()
    with pytest.raises(InvalidOption, match="classifiers"):
        complete(gradcam.steps(model, images(1, 16), [TargetRequest((ClassLogit(0),))], task="detection",
                               augment=True))
