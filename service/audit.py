"""``xaas audit FOLDER``: where does the model look, class by class, over a whole labelled folder?

Dataset bias shows in saliency maps (a "dumbbell" model looking at arms, an X-ray model at the text in a corner),
but one image at a time hides it. For every (image, class) pair of a folder in the ``labels.json`` format of
``xaas demo-data`` (boxes in the image's own pixels), the class's map (default Grad-CAM, rendered at the original
size as ``/explain`` renders it: :func:`service.rendering.normalised_map`) is split into shares of its mass:

    in\\_object = \\sum_{p \\in boxes} u_p / \\sum_p u_p,    background = 1 - in\\_object,
    border_s = \\sum_{p \\in band_s} u_p / \\sum_p u_p     (s in top, bottom, left, right; bands of ``border`` x side)

with ``u`` the unit map, plus the pointing game (the maximum on a box of the class, 2 px tolerance). Per class the
report gives their means, the mean map, the box area share (what a uniform map would put inside) and flags:

* ``outside`` — pointing below :data:`POINTING_FLAG` (0.5): the map's maximum is off the object in most images;
* ``border:<side>`` — the mean share in that band above :data:`BORDER_FLAG` (0.3, three times the band's area);

with the pairs whose maps put the least mass on the object as examples (overlays in the HTML report). Bands overlap
at the corners (a corner marker counts for two sides). Output: a JSON report and a self-contained HTML page (inline
PNGs, no external resource).

Example::

    report = audit("data/xray", model="cxr", method="gradcam")
    Path("audit.html").write_text(render_html(report))
"""

from __future__ import annotations

import base64
import html
import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .calibrate import load_model, load_pairs, parse_method
from .errors import ConfigError
from .quality import POINTING_TOLERANCE, pointing_hit, unit_map
from .rendering import render_overlay

__all__ = ["BORDER_FLAG", "POINTING_FLAG", "audit", "class_flags", "format_audit", "map_shares", "render_html"]

SIDES = ("top", "bottom", "left", "right")
#: Width of each border band as a fraction of the image side.
BORDER = 0.1
#: A class is flagged ``outside`` when its map's maximum is on the object in fewer pairs than this.
POINTING_FLAG = 0.5
#: A class is flagged ``border:<side>`` when its mean mass share in that band exceeds this (3 x the band's area).
BORDER_FLAG = 0.3
#: Side of the mean map per class (maps of different image sizes are resized to it).
MEAN_MAP_SIZE = 64


def _bands(height: int, width: int, border: float) -> dict[str, np.ndarray]:
    by, bx = max(1, round(border * height)), max(1, round(border * width))
    masks = {s: np.zeros((height, width), bool) for s in SIDES}
    masks["top"][:by] = True
    masks["bottom"][height - by:] = True
    masks["left"][:, :bx] = True
    masks["right"][:, width - bx:] = True
    return masks


def map_shares(unit: np.ndarray, boxes: Sequence[Sequence[int]], border: float = BORDER) -> dict[str, float] | None:
    """Shares of ``unit``'s mass (``[H, W]``, non-negative) inside the union of ``boxes`` (x1/y1 exclusive), in the
    background and in each border band; ``None`` for an all-zero map (nothing to split)."""
    total = float(unit.sum())
    if not total > 0:
        return None
    h, w = unit.shape
    inside = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        inside[max(0, int(y0)):min(h, int(y1)), max(0, int(x0)):min(w, int(x1))] = True
    out = {"in_object": float(unit[inside].sum()) / total, "object_area": float(inside.mean())}
    out["background"] = 1.0 - out["in_object"]
    for side, band in _bands(h, w, border).items():
        out[side] = float(unit[band].sum()) / total
    return out


def class_flags(summary: dict[str, Any]) -> list[str]:
    """The module docstring's flags for one class summary (``pointing`` and the ``border`` shares)."""
    flags = []
    if summary["pointing"] < POINTING_FLAG:
        flags.append("outside")
    flags += [f"border:{s}" for s in SIDES if summary["border"][s] > BORDER_FLAG]
    return flags


def audit(data_dir: str | Path, *, models_file: str | Path | None = None, model: str | None = None,
          method: str = "gradcam", limit: int | None = None, border: float = BORDER, examples: int = 3,
          batch_size: int = 16, loaded: Any = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Audit ``data_dir`` with ``method``; returns the JSON-able report (``classes``: per class its means, mean map
    (``mean_map``, a ``MEAN_MAP_SIZE``² list), ``flags`` and ``examples``; ``flagged``: the flagged classes)."""
    from .evaluate import maps_of

    say = log or (lambda _m: None)
    if not 0 < border < 0.5:
        raise ValueError("border must lie in (0, 0.5)")
    lm = loaded if loaded is not None else load_model(models_file, model)
    if lm.task not in ("multiclass", "multilabel"):
        raise ConfigError(f"xaas audit explains classifiers; model {lm.name!r} is a {lm.task} model")
    spec = parse_method(method)
    if spec.explainer.name not in lm.capabilities.usable_methods:
        raise ConfigError(f"method {method!r} does not apply to model {lm.name!r}")
    t0 = time.perf_counter()
    inputs, sizes, pairs, files = load_pairs(data_dir, lm, limit=limit)
    if not pairs:
        raise ConfigError(f"{data_dir}: no labelled objects to audit")
    raw = maps_of(lm.module, lm, spec, inputs, pairs, batch_size=batch_size)
    per_class: dict[str, list[dict[str, Any]]] = {}
    means: dict[str, list[np.ndarray]] = {}
    empty = 0
    for k, (pair, m) in enumerate(zip(pairs, raw)):
        unit = unit_map(m, sizes[pair.image])
        shares = map_shares(unit, pair.boxes, border)
        if shares is None:
            empty += 1
            continue
        shares["pointing"] = float(pointing_hit(unit, pair.boxes, POINTING_TOLERANCE))
        per_class.setdefault(pair.label, []).append({"pair": k, "file": files[pair.image], **shares})
        small = Image.fromarray(unit).resize((MEAN_MAP_SIZE, MEAN_MAP_SIZE), Image.BILINEAR)
        means.setdefault(pair.label, []).append(np.asarray(small, dtype=np.float32))
    classes: dict[str, Any] = {}
    for label, rows in per_class.items():
        summary: dict[str, Any] = {
            "pairs": len(rows),
            "in_object": _mean(rows, "in_object"), "background": _mean(rows, "background"),
            "object_area": _mean(rows, "object_area"), "pointing": _mean(rows, "pointing"),
            "border": {s: _mean(rows, s) for s in SIDES},
        }
        summary["flags"] = class_flags(summary)
        worst = sorted(rows, key=lambda r: r["in_object"])[:examples]
        summary["examples"] = [{"file": r["file"], "pair": r["pair"], "in_object": round(r["in_object"], 4),
                                "pointing": bool(r["pointing"])} for r in worst]
        summary["mean_map"] = np.round(np.mean(means[label], axis=0), 4).tolist()
        classes[label] = summary
    say(f"audit: {len(files)} images, {len(pairs)} pairs, {lm.name} / {spec.text} "
        f"({time.perf_counter() - t0:.1f}s)")
    return {"model": lm.name, "method": spec.text, "data": str(data_dir), "images": len(files), "pairs": len(pairs),
            "empty_maps": empty, "border": border,
            "rules": {"outside": f"pointing < {POINTING_FLAG}", "border": f"mean share in a band > {BORDER_FLAG}"},
            "classes": dict(sorted(classes.items())), "flagged": sorted(k for k, v in classes.items() if v["flags"]),
            "_maps": {k: raw[k] for v in classes.values() for k in (e["pair"] for e in v["examples"])},
            "_boxes": {k: pairs[k].boxes for v in classes.values() for k in (e["pair"] for e in v["examples"])}}


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the private members the HTML needs (raw maps of the examples)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4)


def format_audit(report: dict[str, Any]) -> str:
    """Markdown: one row per class."""
    lines = [f"model `{report['model']}` · {report['method']} · {report['data']} · {report['images']} images · "
             f"{report['pairs']} pairs · border bands {report['border']:g}", "",
             "| class | pairs | in object | object area | background | top | bottom | left | right | pointing | "
             "flags |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, c in report["classes"].items():
        b = c["border"]
        lines.append(f"| {label} | {c['pairs']} | {c['in_object']:.3f} | {c['object_area']:.3f} | "
                     f"{c['background']:.3f} | {b['top']:.3f} | {b['bottom']:.3f} | {b['left']:.3f} | "
                     f"{b['right']:.3f} | {c['pointing']:.3f} | {', '.join(c['flags']) or '–'} |")
    lines += ["", "flagged: " + (", ".join(report["flagged"]) or "none")]
    return "\n".join(lines)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _example_overlay(path: Path, raw: np.ndarray, boxes: Sequence[Sequence[int]]) -> bytes:
    rgb = np.asarray(Image.open(path).convert("RGB"))
    overlay = Image.open(io.BytesIO(render_overlay(raw, rgb, alpha=0.5))).convert("RGB")
    draw = ImageDraw.Draw(overlay)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255))
    buf = io.BytesIO()
    overlay.save(buf, format="PNG")
    return buf.getvalue()


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the table, each class's mean map and its flagged examples (overlays with the
    class's boxes in white), every image inline as a PNG data URI."""
    e = html.escape
    data_dir = Path(report["data"])
    rows, sections = [], []
    for label, c in report["classes"].items():
        b = c["border"]
        flags = ", ".join(c["flags"]) or "–"
        rows.append(f"<tr class=\"{'flag' if c['flags'] else ''}\"><td>{e(label)}</td><td>{c['pairs']}</td>"
                    f"<td>{c['in_object']:.3f}</td><td>{c['object_area']:.3f}</td><td>{c['background']:.3f}</td>"
                    + "".join(f"<td>{b[s]:.3f}</td>" for s in SIDES)
                    + f"<td>{c['pointing']:.3f}</td><td>{e(flags)}</td></tr>")
        mean = np.asarray(c["mean_map"], dtype=np.float32)
        mean_png = render_overlay(mean, np.zeros((*mean.shape, 3), np.uint8), alpha=1.0)
        figs = [f"<figure><img src=\"{_png_uri(mean_png)}\" width=\"128\" height=\"128\" alt=\"mean map\">"
                f"<figcaption>mean map of {e(label)}</figcaption></figure>"]
        if c["flags"]:
            for ex in c["examples"]:
                png = _example_overlay(data_dir / ex["file"], report["_maps"][ex["pair"]], report["_boxes"][ex["pair"]])
                figs.append(f"<figure><img src=\"{_png_uri(png)}\" width=\"192\" alt=\"{e(ex['file'])}\">"
                            f"<figcaption>{e(ex['file'])}: {ex['in_object']:.2f} on the object</figcaption></figure>")
        sections.append(f"<section><h2>{e(label)}{' — flagged: ' + e(flags) if c['flags'] else ''}</h2>"
                        + "".join(figs) + "</section>")
    flagged = ", ".join(report["flagged"]) or "none"
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>xaas audit</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}tr.flag{background:#fdd}"
            "figure{display:inline-block;margin:8px}img{image-rendering:pixelated}</style></head><body>"
            f"<h1>Audit of {e(report['model'])} with {e(report['method'])}</h1>"
            f"<p>{e(str(report['data']))}: {report['images']} images, {report['pairs']} (image, class) pairs. "
            f"Shares of each map's mass inside the class's boxes, in the background and in border bands of "
            f"{report['border']:g} of the side. Flags: outside = {e(report['rules']['outside'])}; border = "
            f"{e(report['rules']['border'])}.</p><p><b>Flagged classes: {e(flagged)}</b></p>"
            "<table><tr><th>class</th><th>pairs</th><th>in object</th><th>object area</th><th>background</th>"
            + "".join(f"<th>{s}</th>" for s in SIDES) + "<th>pointing</th><th>flags</th></tr>"
            + "".join(rows) + "</table>" + "".join(sections) + "</body></html>\n")
