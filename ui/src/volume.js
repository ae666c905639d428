// The volume view's arithmetic, in the browser: the raw 3-D map of ONE /explain call (at the model's grid) resampled
// trilinearly onto the display grid of /display, then cut into axial slices; the 3-D boxes of /localize on the
// slices they cross. Scrolling slices therefore costs no request.

/**
 * Linear resampling of `data` (row-major, `dims` = [D, H, W]) along one axis to `n` samples: half-voxel centres
 * and clamped edges, as PyTorch's `interpolate(..., align_corners=False)` and the service's own resampling.
 * Done once per axis, it is trilinear interpolation.
 */
function resampleAxis(data, dims, axis, n) {
  const m = dims[axis];
  if (m === n) return data;
  const outDims = dims.slice();
  outDims[axis] = n;
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
  const out = new Float32Array(outer * n * inner);
  const lo = new Int32Array(n);
  const hi = new Int32Array(n);
  const t = new Float32Array(n);
  const ratio = m / n;
  for (let i = 0; i < n; i++) {
    const src = Math.max(0, (i + 0.5) * ratio - 0.5);
    const k = Math.min(Math.floor(src), m - 1);
    lo[i] = k;
    hi[i] = Math.min(k + 1, m - 1);
    t[i] = src - k;
  }
  for (let o = 0; o < outer; o++) {
    const inBase = o * m * inner;
    const outBase = o * n * inner;
    for (let i = 0; i < n; i++) {
      const a = inBase + lo[i] * inner;
      const b = inBase + hi[i] * inner;
      const w = t[i];
      const dst = outBase + i * inner;
      for (let j = 0; j < inner; j++) out[dst + j] = data[a + j] * (1 - w) + data[b + j] * w;
    }
  }
  return out;
}

/** Trilinear resampling of a [D, H, W] volume (Float32Array) to `size` = [D', H', W']. */
export function resampleVolume(data, dims, size) {
  let values = data;
  let current = dims.slice();
  for (const axis of [2, 1, 0]) {
    values = resampleAxis(values, current, axis, size[axis]);
    current[axis] = size[axis];
  }
  return values;
}

/**
 * A raw volume map ({dtype, shape: [d, h, w], data: Float32Array}) on the display grid `size` as 8-bit levels,
 * 255 = the maximum of the map (negative values are 0, as in the service's heatmaps).
 */
export function heatVolume(raw, values, size) {
  const grid = resampleVolume(values, raw.shape, size);
  let max = 0;
  for (let i = 0; i < grid.length; i++) if (grid[i] > max) max = grid[i];
  const levels = new Uint8Array(grid.length);
  if (max > 0) {
    for (let i = 0; i < grid.length; i++) {
      const v = grid[i] / max;
      levels[i] = v <= 0 ? 0 : Math.round(Math.min(1, v) * 255);
    }
  }
  return { levels, depth: size[0], height: size[1], width: size[2], slices: new Map() };
}

/** Slice `k` of a heat volume as the 2-D heat a viewport draws (the same object for the same slice). */
export function heatSlice(heat, k) {
  if (!heat.slices.has(k)) {
    const n = heat.width * heat.height;
    heat.slices.set(k, { levels: heat.levels.subarray(k * n, (k + 1) * n), width: heat.width, height: heat.height });
  }
  return heat.slices.get(k);
}

/**
 * The boxes of /localize (`box3d` = [x0, y0, z0, x1, y1, z1] in source voxels, exclusive ends) that cross display
 * slice `k`, in display pixels. Display slice k's centre lies at source z = (k + 0.5) * depth / displayDepth.
 */
export function boxesOnSlice(boxes, k, volume) {
  const { source, depth, height, width } = volume;
  const z = ((k + 0.5) * source.depth) / depth;
  const sx = width / source.width;
  const sy = height / source.height;
  return boxes.filter((b) => b.box3d && b.box3d[2] <= z && z < b.box3d[5]).map((b) => ({
    ...b, box: [b.box3d[0] * sx, b.box3d[1] * sy, b.box3d[3] * sx, b.box3d[4] * sy],
  }));
}
