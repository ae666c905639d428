"""Memory and time of a large CT through the volume path: a synthetic 512 x 512 x 300 series (300 Part-10 files,
int16) → zip → decode (sorted, rescaled) → resampled to the demo 3-D model's grid → Grad-CAM → NIfTI of the map on
the CT's 78.6 M-voxel grid. The series is written by this process to a temporary zip; the service's path (decode
onwards) runs in a fresh child process, whose table prints each stage's wall time and the child's peak resident
memory after it (``VmHWM``, which only grows), so the last row is the service path's peak.

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
    """The process's peak resident memory (VmHWM: per address space, so a fresh child starts from its own; getrusage's
    ru_maxrss survives exec and would report the parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _series_zip(slices: int, side: int) -> bytes:
    rng = np.random.default_rng(0)
    voxels = rng.normal(40, 25, (slices, side, side)).astype(np.float32)
    voxels[slices // 3: slices // 2, side * 2 // 5: side * 3 // 5, side * 2 // 5: side * 3 // 5] += 400
    files = dicom_series(np.rint(voxels), spacing=(1.0, 0.7, 0.7))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as bundle:
        for k, blob in enumerate(files):
            bundle.writestr(f"{k}.dcm", blob)
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--zip", type=Path, help=argparse.SUPPRESS)   # the child: measure the service path only
    args = parser.parse_args()
    if args.zip is None:
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "series.zip"
            t0 = time.perf_counter()
            path.write_bytes(_series_zip(args.slices, args.side))
            print(f"wrote the {args.side}x{args.side}x{args.slices} series as a {path.stat().st_size / 2**20:.0f} "
                  f"MiB zip in {time.perf_counter() - t0:.1f} s")
            subprocess.run([sys.executable, __file__, "--zip", str(path)], check=True)
        return
    rows: list[tuple[str, float, float]] = []

    def stage(name: str, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0, peak_mb()))
        return out

    model = load_demo_volume_model().requires_grad_(False)
    rows.append(("start (torch, model loaded)", 0.0, peak_mb()))
    data = stage("read the zip", args.zip.read_bytes)
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
