"""Would an equivariance test catch the corner tag? Shift each image by ``d`` px (circularly, so nothing is cropped)
and measure how far its Grad-CAM map moves, as a fraction of ``d`` (the peak of the FFT cross-correlation of the two
unit maps): 1 = the map moves with the image (it looks at something drawn in it), 0 = it stays put (it is fixed to
the frame). Per class, shipped demo model vs the biased one (``xaas train-demo --bias``) on the biased set::

    python bench/audit_shift.py --n 60 --shift 16

The tag moves with the image and so does the biased model's star map on it: the shift test does not tell the two
models apart, which is why ``xaas audit`` flags fixed places by the maps' agreement across images instead.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from service.calibrate import load_model, load_pairs, parse_method
from service.demo.data import generate_dataset
from service.evaluate import maps_of
from service.quality import unit_map

ROOT = Path(__file__).resolve().parents[1]


def _shift_of(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(dy, dx) by which ``b`` is ``a`` moved: the peak of their circular cross-correlation."""
    c = np.real(np.fft.ifft2(np.conj(np.fft.fft2(a - a.mean())) * np.fft.fft2(b - b.mean())))
    dy, dx = np.unravel_index(int(np.argmax(c)), c.shape)
    h, w = a.shape
    return (dy + h // 2) % h - h // 2, (dx + w // 2) % w - w // 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=5150)
    parser.add_argument("--shift", type=int, default=16)
    args = parser.parse_args()
    folder = generate_dataset(Path(tempfile.mkdtemp()) / "biased", args.n, seed=args.seed, bias=True)
    print(f"| model | {' | '.join(['class', 'map moves (fraction of the shift)'])} |\n|---|---|---:|")
    for name, weights in (("shipped", None), ("train-demo --bias", ROOT / "service/demo/demo_cnn_bias.safetensors")):
        lm = load_model(None, None)
        if weights is not None:
            lm.module.load_state_dict(load_file(str(weights)))
        spec = parse_method("gradcam")
        inputs, sizes, pairs, _ = load_pairs(folder, lm)
        d = args.shift
        before = maps_of(lm.module, lm, spec, inputs, pairs)
        after = maps_of(lm.module, lm, spec, torch.roll(inputs, shifts=(d, d), dims=(2, 3)), pairs)
        moves: dict[str, list[float]] = {}
        for p, a, b in zip(pairs, before, after):
            dy, dx = _shift_of(unit_map(a, sizes[p.image]), unit_map(b, sizes[p.image]))
            moves.setdefault(p.label, []).append((dy + dx) / (2 * d))
        for label, values in sorted(moves.items()):
            print(f"| {name} | {label} | {np.mean(values):.2f} |")


if __name__ == "__main__":
    main()
