// Colour maps as 256-entry RGB lookup tables, built from anchor colours (linear between anchors). Blending runs in
// the browser, so moving the opacity slider or switching the map costs no request.
const ANCHORS = {
  jet: ["#00007f", "#0000ff", "#007fff", "#00ffff", "#7fff7f", "#ffff00", "#ff7f00", "#ff0000", "#7f0000"],
  inferno: ["#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#f7d13d",
    "#fcffa4"],
  viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b",
    "#fde725"],
  hot: ["#0b0000", "#ff0000", "#ffff00", "#ffffff"],
  grey: ["#000000", "#ffffff"],
};

const cache = new Map();

function rgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

export function colormapNames() {
  return Object.keys(ANCHORS);
}

/** Uint8Array(256 * 3): the RGB of each heatmap level 0..255. */
export function lut(name) {
  if (cache.has(name)) return cache.get(name);
  const anchors = (ANCHORS[name] || ANCHORS.jet).map(rgb);
  const table = new Uint8Array(256 * 3);
  const segments = anchors.length - 1;
  for (let i = 0; i < 256; i++) {
    const pos = (i / 255) * segments;
    const k = Math.min(segments - 1, Math.floor(pos));
    const t = pos - k;
    for (let c = 0; c < 3; c++) table[i * 3 + c] = Math.round(anchors[k][c] * (1 - t) + anchors[k + 1][c] * t);
  }
  cache.set(name, table);
  return table;
}
