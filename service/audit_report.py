"""The audit's report as a Markdown table (the CLI) and as a self-contained HTML page (inline PNGs, nothing fetched):
the table, each class's mean map and, for a flagged class, its examples overlaid (boxes, or the outline of the
objects' masks where the labels have them, in white)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .audit import SIDES
from .rendering import render_overlay

__all__ = ["format_audit", "render_html"]


def _f(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}"


def _columns(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """(header, value of a class summary) for the report's mode."""
    cols: list[tuple[str, Any]] = [("pairs", lambda c: str(c["pairs"]))]
    if report.get("mode") == "boxless":
        cols += [("centre", lambda c: _f(c["centre"]))]
        cols += [(s, lambda c, s=s: _f(c["border"][s])) for s in SIDES]
        cols += [("top 5 %", lambda c: _f(c["top5"])), ("entropy", lambda c: _f(c["entropy"])),
                 ("agreement", lambda c: _f(c["agreement"])), ("baseline", lambda c: _f(c["baseline"])),
                 ("peak cluster", lambda c: _f(c["peak_cluster"]))]
    else:
        cols += [("located by", lambda c: str(c.get("located_by") or "box")),
                 ("in object", lambda c: _f(c["in_object"])), ("object area", lambda c: _f(c["object_area"])),
                 ("background", lambda c: _f(c["background"]))]
        cols += [(s, lambda c, s=s: _f(c["border"][s])) for s in SIDES]
        cols += [("pointing", lambda c: _f(c["pointing"])), ("agreement − baseline", lambda c: _f(c.get("excess")))]
    return cols


def format_audit(report: dict[str, Any]) -> str:
    """Markdown: one row per class."""
    cols = _columns(report)
    lines = [f"model `{report['model']}` · {report['method']} · {report['data']} · {report['images']} images · "
             f"{report['pairs']} pairs · {report.get('mode', 'boxes')} · border bands {report['border']:g}", "",
             "| class | " + " | ".join(h for h, _ in cols) + " | flags |", "|---|" + "---:|" * len(cols) + "---|"]
    for label, c in report["classes"].items():
        lines.append(f"| {label} | " + " | ".join(fn(c) for _, fn in cols) + f" | {', '.join(c['flags']) or '–'} |")
    lines += ["", "flagged: " + (", ".join(report["flagged"]) or "none")]
    return "\n".join(lines)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _example_overlay(image: bytes, raw: np.ndarray, boxes: Sequence[Sequence[int]], region: Any = None) -> bytes:
    rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
    overlay = Image.open(io.BytesIO(render_overlay(raw, rgb, alpha=0.5))).convert("RGB")
    if region is not None:          # the mask's outline: its pixels with a 4-neighbour outside it
        from scipy import ndimage

        mask = region.full(overlay.height, overlay.width)
        pixels = np.array(overlay)
        pixels[mask & ~ndimage.binary_erosion(mask, border_value=0)] = 255
        overlay = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(overlay)
    for x0, y0, x1, y1 in ([] if region is not None else boxes):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 255, 255))
    buf = io.BytesIO()
    overlay.save(buf, format="PNG")
    return buf.getvalue()


def _caption(ex: dict[str, Any]) -> str:
    if "in_object" in ex:
        return f"{ex['in_object']:.2f} on the object"
    return f"agrees {ex['agreement']:.2f} with the class's other maps"


def render_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page: the table, each class's mean map and its flagged examples (overlays with the
    class's boxes or mask outlines in white), every image inline as a PNG data URI (``report["_read"]`` reads an
    image's bytes)."""
    e = html.escape
    read = report["_read"]
    cols = _columns(report)
    rows, sections = [], []
    for label, c in report["classes"].items():
        flags = ", ".join(c["flags"]) or "–"
        rows.append(f"<tr class=\"{'flag' if c['flags'] else ''}\"><td>{e(label)}</td>"
                    + "".join(f"<td>{fn(c)}</td>" for _, fn in cols) + f"<td>{e(flags)}</td></tr>")
        mean = np.asarray(c["mean_map"], dtype=np.float32)
        mean_png = render_overlay(mean, np.zeros((*mean.shape, 3), np.uint8), alpha=1.0)
        figs = [f"<figure><img src=\"{_png_uri(mean_png)}\" width=\"128\" height=\"128\" alt=\"mean map\">"
                f"<figcaption>mean map of {e(label)}</figcaption></figure>"]
        if c["flags"]:
            for ex in c["examples"]:
                png = _example_overlay(read(ex["file"]), report["_maps"][ex["pair"]], report["_boxes"][ex["pair"]],
                                       report.get("_masks", {}).get(ex["pair"]))
                figs.append(f"<figure><img src=\"{_png_uri(png)}\" width=\"192\" alt=\"{e(ex['file'])}\">"
                            f"<figcaption>{e(ex['file'])}: {e(_caption(ex))}</figcaption></figure>")
        sections.append(f"<section><h2>{e(label)}{' — flagged: ' + e(flags) if c['flags'] else ''}</h2>"
                        + "".join(figs) + "</section>")
    flagged = ", ".join(report["flagged"]) or "none"
    rules = "; ".join(f"{e(k)} = {e(v)}" for k, v in report["rules"].items())
    if report.get("mode") == "boxless":
        what = ("Boxless: where each class's maps put their mass (centre, border bands of "
                f"{report['border']:g} of the side), how concentrated the mean map is, and how much the maps agree "
                "with the class's other maps (agreement) against the other classes' maps (baseline).")
    else:
        what = (f"Shares of each map's mass inside the class's boxes (or masks: see located by), in the background "
                f"and in border bands of {report['border']:g} of the side.")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>xaas audit</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child{text-align:left}tr.flag{background:#fdd}"
            "figure{display:inline-block;margin:8px}img{image-rendering:pixelated}</style></head><body>"
            f"<h1>Audit of {e(report['model'])} with {e(report['method'])}</h1>"
            f"<p>{e(str(report['data']))}: {report['images']} images, {report['pairs']} (image, class) pairs. "
            f"{what} Flags: {rules}.</p><p><b>Flagged classes: {e(flagged)}</b></p>"
            "<table><tr><th>class</th>" + "".join(f"<th>{e(h)}</th>" for h, _ in cols) + "<th>flags</th></tr>"
            + "".join(rows) + "</table>" + "".join(sections) + "</body></html>\n")
