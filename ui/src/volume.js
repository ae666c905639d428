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

/** Python's round(): halves to even (so the page places the volume in the model input exactly as the service). */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x - Math.trunc(x)) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Where a `keep_aspect` model's input holds the volume: [start, stop] per axis (D, H, W) of `inputSize`, the
 * largest box with the volume's physical proportions (voxel counts x spacing), centred — the service's rule
 * (service/imaging/volume.py, volume_to_model_input).
 */
export function contentBox(shape, spacing, inputSize) {
  const extent = shape.map((n, a) => n * spacing[a]);
  const scale = Math.min(...inputSize.map((t, a) => t / extent[a]));
  return inputSize.map((t, a) => {
    const inner = Math.max(1, Math.min(t, roundHalfEven(extent[a] * scale)));
    const start = Math.floor((t - inner) / 2);
    return [start, start + inner];
  });
}

function crop(values, dims, box) {
  const [[z0, z1], [y0, y1], [x0, x1]] = box;
  const out = new Float32Array((z1 - z0) * (y1 - y0) * (x1 - x0));
  let i = 0;
  for (let z = z0; z < z1; z++) {
    for (let y = y0; y < y1; y++) {
      const row = (z * dims[1] + y) * dims[2];
      out.set(values.subarray(row + x0, row + x1), i);
      i += x1 - x0;
    }
  }
  return out;
}

/**
 * A raw volume map ({dtype, shape: [d, h, w], data: Float32Array}) on the display grid `size` as 8-bit levels,
 * 255 = the maximum of the map (negative values are 0, as in the service's heatmaps). `padded`: for a keep_aspect
 * model, { inputSize, box } — the map is first brought to the input's grid and the padding cut off, as the service
 * does before it resamples a map onto the source.
 */
export function heatVolume(raw, values, size, padded = null) {
  let dims = raw.shape;
  if (padded) {
    values = crop(resampleVolume(values, dims, padded.inputSize), padded.inputSize, padded.box);
    dims = padded.box.map(([a, b]) => b - a);
  }
  const grid = resampleVolume(values, dims, size);
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
