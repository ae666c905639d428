// Canvas viewports over one shared view (pan/zoom), so two side-by-side viewers always show the same region.
// Each viewport draws, in image pixels: the base image, the colour-mapped heatmap at the chosen opacity, the boxes.
import { lut } from "./colormaps.js";

export const BOX_COLOUR = "#ff00ff"; // magenta: in none of the colour maps, so a box stays visible on any heatmap

/** Pan/zoom shared by every viewport: screen (CSS px) = image px × scale + (tx, ty). */
export class SharedView {
  constructor() {
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.fitted = true; // follow resizes until the user pans or zooms
    this.viewports = [];
  }

  redraw() {
    for (const v of this.viewports) v.draw();
  }

  fit() {
    const first = this.viewports.find((v) => v.visible() && v.imageSize());
    if (!first) return;
    const [w, h] = first.imageSize();
    const cw = first.canvas.clientWidth;
    const ch = first.canvas.clientHeight;
    if (!cw || !ch) return;
    this.scale = Math.min(cw / w, ch / h) * 0.96;
    this.tx = (cw - w * this.scale) / 2;
    this.ty = (ch - h * this.scale) / 2;
    this.fitted = true;
    this.redraw();
  }

  zoomAt(factor, x, y) {
    const scale = Math.min(64, Math.max(0.05, this.scale * factor));
    const k = scale / this.scale;
    this.tx = x - (x - this.tx) * k;
    this.ty = y - (y - this.ty) * k;
    this.scale = scale;
    this.fitted = false;
    this.redraw();
  }

  panBy(dx, dy) {
    this.tx += dx;
    this.ty += dy;
    this.fitted = false;
    this.redraw();
  }
}

/** Colour a heatmap (8-bit levels) with a colour map into a canvas of the image's size. */
function colourise(heat, colormap) {
  const table = lut(colormap);
  const canvas = document.createElement("canvas");
  canvas.width = heat.width;
  canvas.height = heat.height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(heat.width, heat.height);
  const px = img.data;
  const levels = heat.levels;
  for (let i = 0, j = 0; i < levels.length; i++, j += 4) {
    const l = levels[i] * 3;
    px[j] = table[l];
    px[j + 1] = table[l + 1];
    px[j + 2] = table[l + 2];
    px[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas;
}

export class Viewport {
  /**
   * @param canvas the element drawn into
   * @param view the SharedView
   * @param style shared look: { opacity 0..1, colormap, layers: {image, heatmap, boxes} }
   */
  constructor(canvas, caption, view, style) {
    this.canvas = canvas;
    this.caption = caption;
    this.view = view;
    this.style = style;
    this.base = null; // canvas of the image as displayed (windowed for DICOM)
    this.heat = null; // { levels: Uint8Array, width, height }
    this.boxes = [];
    this.heatCanvas = null;
    this.heatKey = "";
    view.viewports.push(this);
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  visible() {
    return !this.canvas.closest("[hidden]");
  }

  imageSize() {
    return this.base ? [this.base.width, this.base.height] : null;
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    if (this.view.fitted) this.view.fit();
    else this.draw();
  }

  setContent({ base = this.base, heat = null, boxes = [], caption = "" } = {}) {
    this.base = base;
    if (heat !== this.heat) {
      this.heat = heat;
      this.heatKey = "";
    }
    this.boxes = boxes;
    this.caption.textContent = caption;
    const boxText = boxes.map((b) => `box ${b.label} ${b.score.toFixed(2)} at ${b.box.join(",")}`).join("; ");
    // "Viewer: …", never the bare caption: a caption "Image" would share its name with the Image file control
    this.canvas.setAttribute("aria-label", [caption ? `Viewer: ${caption}` : "Image viewer", boxText].filter(Boolean)
      .join(". "));
    this.draw();
  }

  coloured() {
    if (!this.heat) return null;
    const key = this.style.colormap;
    if (this.heatKey !== key) {
      this.heatCanvas = colourise(this.heat, key);
      this.heatKey = key;
    }
    return this.heatCanvas;
  }

  /** Canvas CSS pixel of an image pixel (for tests and integrations). */
  imageToScreen(x, y) {
    return [x * this.view.scale + this.view.tx, y * this.view.scale + this.view.ty];
  }

  screenToImage(x, y) {
    return [(x - this.view.tx) / this.view.scale, (y - this.view.ty) / this.view.scale];
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    if (!this.base) return;
    const { scale, tx, ty } = this.view;
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * tx, dpr * ty);
    ctx.imageSmoothingEnabled = scale < 2; // zoomed in, show pixels as pixels (radiology convention)
    this.paint(ctx, 1 / scale);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    if (this.style.layers.boxes) this.labels(ctx);
  }

  /** Image, heatmap and box outlines in image coordinates; `unit` = one screen pixel in image pixels. */
  paint(ctx, unit) {
    const { layers, opacity } = this.style;
    if (layers.image) ctx.drawImage(this.base, 0, 0);
    const heat = layers.heatmap ? this.coloured() : null;
    if (heat && opacity > 0) {
      ctx.globalAlpha = opacity;
      ctx.drawImage(heat, 0, 0, this.base.width, this.base.height);
      ctx.globalAlpha = 1;
    }
    if (layers.boxes && this.boxes.length) {
      ctx.strokeStyle = BOX_COLOUR;
      ctx.lineWidth = 2 * unit;
      for (const b of this.boxes) {
        const [x0, y0, x1, y1] = b.box;
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      }
    }
  }

  labels(ctx) {
    ctx.font = "12px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    for (const b of this.boxes) {
      const [sx, sy] = this.imageToScreen(b.box[0], b.box[1]);
      const text = `${b.label} ${b.score.toFixed(2)}`;
      const w = ctx.measureText(text).width + 6;
      const top = sy > 16 ? sy - 16 : sy; // above the box, or inside it at the top edge
      ctx.fillStyle = "rgba(0,0,0,.75)";
      ctx.fillRect(sx, top, w, 16);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, sx + 3, top + 14);
    }
  }

  /** The overlay at the image's own resolution, as a PNG blob (what "Download overlay PNG" saves). */
  async exportPng() {
    if (!this.base) return null;
    const canvas = document.createElement("canvas");
    canvas.width = this.base.width;
    canvas.height = this.base.height;
    const ctx = canvas.getContext("2d");
    this.paint(ctx, Math.max(1, Math.round(Math.max(canvas.width, canvas.height) / 512)));
    return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  }
}

/** Mouse, wheel and keyboard on a viewport: pan (or window with the Window tool / Shift), zoom, fit. */
export function attachInteraction(viewport, { tool, onWindow }) {
  const { canvas, view } = viewport;
  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    canvas.setPointerCapture(e.pointerId);
    last = { x: e.clientX, y: e.clientY, windowing: tool() === "window" || e.shiftKey };
    canvas.style.cursor = "grabbing";
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const dx = e.clientX - last.x;
    const dy = e.clientY - last.y;
    last.x = e.clientX;
    last.y = e.clientY;
    if (last.windowing && onWindow(dx, dy)) return;
    view.panBy(dx, dy);
  });
  const end = (e) => {
    if (last && canvas.hasPointerCapture(e.pointerId)) canvas.releasePointerCapture(e.pointerId);
    last = null;
    canvas.style.cursor = "";
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    view.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
  }, { passive: false });
  canvas.addEventListener("keydown", (e) => {
    const step = e.shiftKey ? 50 : 10;
    const centre = [canvas.clientWidth / 2, canvas.clientHeight / 2];
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[e.key]) {
      const [dx, dy] = moves[e.key];
      if (!(tool() === "window" && onWindow(-dx / 2, -dy / 2))) view.panBy(dx, dy);
    } else if (e.key === "+" || e.key === "=") {
      view.zoomAt(1.25, ...centre);
    } else if (e.key === "-" || e.key === "_") {
      view.zoomAt(0.8, ...centre);
    } else if (e.key === "0") {
      view.fit();
    } else {
      return;
    }
    e.preventDefault();
  });
}
