"""Memory and time of a large CT through the volume path: a synthetic 512 x 512 x 300 series (300 Part-10 files,
int16) → zip → decode (sorted, rescaled) → resampled to the demo 3-D model's grid → Grad-CAM → NIfTI of the map on
the CT's 78.6 M-voxel grid. Each stage runs in this process; the table prints its wall time and the process's peak
resident memory after it (``ru_maxrss``, which only grows), so the last row is the whole path's peak.

Usage::

    python bench/volume_memory.py                 # 512 x 512 x 300
    python bench/volume_memory.py --slices 120    # smaller, faster
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.demo.volume_model import VOLUME_SIZE, VOLUME_WINDOW, load_demo_volume_model
from service.demo.volumes import dicom_series
from service.engine import get_method
from service.imaging.volume import decode_volume, nifti_bytes, volume_to_model_input
from service.rendering_volume import map_on_grid


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--side", type=int, default=512)
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []

    def stage(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0, peak_mb()))
        return out

    rows.append(("start (torch, model loaded)", 0.0, peak_mb()))
    model = load_demo_volume_model().requires_grad_(False)
    rng = np.random.default_rng(0)

    def series() -> bytes:
        voxels = rng.normal(40, 25, (args.slices, args.side, args.side)).astype(np.float32)
        voxels[args.slices // 3: args.slices // 2, 200:300, 200:300] += 400
        files = dicom_series(np.rint(voxels), spacing=(1.0, 0.7, 0.7))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as bundle:
            for k, blob in enumerate(files):
                bundle.writestr(f"{k}.dcm", blob)
        return buf.getvalue()

    data = stage(f"write the series ({args.side}x{args.side}x{args.slices}) as a zip", series)
    volume = stage("decode: sort, rescale (float32 voxels)", lambda: decode_volume(data))
    x = stage(f"window + resample to {VOLUME_SIZE}", lambda: volume_to_model_input(
        volume, input_size=VOLUME_SIZE, channels=1, mean=[0.3], std=[0.3], window=VOLUME_WINDOW))
    maps = stage("Grad-CAM (features)", lambda: get_method("gradcam").explain(model, x[None], torch.tensor([0]),
                                                                              layer="features"))
    grid = stage("map on the CT's voxel grid", lambda: map_on_grid(maps[0].numpy(), volume.voxels.shape))
    nii = stage("NIfTI of it (gzipped)", lambda: nifti_bytes(grid, volume.affine))
    print("| stage | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.2f} | {peak:.0f} |")
    print(f"\nzip {len(data) / 2**20:.0f} MiB, voxels {volume.voxels.nbytes / 2**20:.0f} MiB float32, "
          f"NIfTI {len(nii) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
