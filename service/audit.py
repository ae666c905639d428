"""``xaas audit FOLDER`` and ``POST /audit``: where does the model look, class by class, over a labelled set?

Dataset bias shows in saliency maps (a "dumbbell" model looking at arms, an X-ray model at the text in a corner),
but one image at a time hides it. For every (image, class) pair of a set in the ``labels.json`` format of
``xaas demo-data``, the class's map (default Grad-CAM, rendered at the original size as ``/explain`` renders it:
:func:`service.rendering.normalised_map`, the unit map ``u``) is measured.

**With boxes** (boxes in the image's own pixels) its mass is split into shares:

    in\\_object = \\sum_{p \\in boxes} u_p / \\sum_p u_p,    background = 1 - in\\_object,
    border_s = \\sum_{p \\in band_s} u_p / \\sum_p u_p     (s in top, bottom, left, right; bands of ``border`` x side)

plus the pointing game (the maximum on a box of the class, 2 px tolerance; Zhang et al., ECCV 2016).

**With masks** (objects with ``"mask"``, :mod:`service.label_masks`) the object is the pair's region instead of the
union of its boxes: the union of the class's object masks and the boxes of its objects without one; pointing asks
for the maximum on that region dilated by the same 2 px (a square structuring element, so that a box's region
scores exactly as the box). ``object_area`` is the region's area share; ``located_by`` says per class what located
its pairs (``box``, ``mask`` or ``mixed``). A pair is located when every object of its class has a box or a mask;
one unlocated pair makes the whole audit boxless.

**Boxless** (objects listed without ``box``, or ``boxless=True``): nothing says where the object is, so the report
says where the model looks and whether that place moves with the images. Per class, over its maps resized to
:data:`MEAN_MAP_SIZE`² and scaled to unit L2 norm (``m_i``):

* the border shares above, ``centre`` = the share in no band, and the mass concentration of the class's mean map
  ``M``: the share of its mass in its top 5 % pixels (``top5``; 0.05 for a uniform map) and its normalised Shannon
  entropy ``H(M / \\sum M) / log |M|`` (1 for a uniform map);
* ``agreement`` = mean_i cos(m_i, \\sum_{j \\ne i} m_j) (leave-one-out: each map against the class's other maps) and
  ``baseline`` = mean_i cos(m_i, \\sum_{j \\notin class} m_j) (against the other classes' maps: what the agreement is
  when the maps follow objects that sit anywhere). A model that looks at the objects agrees with its own class
  about as much as with the others; one that looks at a fixed place for a class agrees with itself far more:
  ``excess = agreement - baseline``;
* ``peak_cluster``: the share of maps whose maximum lies within 0.1 of the side of the class's median maximum.

Flags (both modes): ``outside`` — pointing below :data:`POINTING_FLAG` (boxes only); ``border:<side>`` — the mean share
in that band above :data:`BORDER_FLAG` (three times the band's area); ``fixed-place`` — ``excess`` above
:data:`FIXED_FLAG`: the class's maps sit at one place although its images differ. An equivariance test (shift the
image by d px, check that the map shifts by d) does *not* catch a marker drawn in the image, since the marker moves
with the image and so does the map on it (measured in the README); it catches only maps fixed to the frame.

Examples per class (overlays in the HTML report): with boxes the pairs with the least mass on the object; boxless the
pairs agreeing most with the class's other maps. Bands overlap at the corners (a corner counts for two sides).

The work is an :class:`AuditRun`: :meth:`AuditRun.advance` explains the pairs of the next images (tensor work only:
what a job runs on the model's worker, an image at a time), :meth:`AuditRun.report` measures (NumPy, off the
worker). :func:`audit` runs it all for the CLI; :mod:`service.audit_report` writes the table and the HTML page.

Example::

    report = audit("data/xray", model="cxr", method="gradcam")
    Path("audit.html").write_text(render_html(report))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .calibrate import MethodSpec, Pair, load_model, load_pairs, parse_method
from .errors import ConfigError
from .quality import POINTING_TOLERANCE, pointing_hit, pointing_in_mask, unit_map

__all__ = ["BORDER_FLAG", "FIXED_FLAG", "POINTING_FLAG", "AuditData", "AuditRun", "audit", "check_audit_method",
           "class_flags", "map_shares", "public"]

SIDES = ("top", "bottom", "left", "right")
#: Width of each border band as a fraction of the image side.
BORDER = 0.1
#: A class is flagged ``outside`` when its map's maximum is on the object in fewer pairs than this.
POINTING_FLAG = 0.5
#: A class is flagged ``border:<side>`` when its mean mass share in that band exceeds this (3 x the band's area).
BORDER_FLAG = 0.3
#: A class is flagged ``fixed-place`` when its maps agree with each other more than with the other classes' maps by
#: this much (cosine; measured: at most 0.03 for every class of the shipped and the biased demo models but 0.76 for
#: the biased model's star, whose maps sit on the corner tag).
FIXED_FLAG = 0.3
#: Radius of the peak cluster as a fraction of the image side.
PEAK_RADIUS = 0.1
#: Share of the mean map's pixels whose mass ``top5`` counts.
TOP_SHARE = 0.05
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


def map_shares(unit: np.ndarray, boxes: Sequence[Sequence[int]] | None, border: float = BORDER, *,
               mask: np.ndarray | None = None) -> dict[str, float] | None:
    """Shares of ``unit``'s mass (``[H, W]``, non-negative) inside the object — ``mask`` (boolean ``[H, W]``) when
    given, else the union of ``boxes`` (x1/y1 exclusive; ``None``: boxless, no object shares) —, in the background,
    in each border band and in the centre (no band); ``None`` for an all-zero map (nothing to split)."""
    total = float(unit.sum())
    if not total > 0:
        return None
    h, w = unit.shape
    out: dict[str, float] = {}
    if mask is not None and boxes is not None:
        if mask.shape != unit.shape:
            raise ValueError(f"map {unit.shape} and mask {mask.shape} differ in shape")
        inside = mask.astype(bool)
    elif boxes is not None:
        inside = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in boxes:
            inside[max(0, int(y0)):min(h, int(y1)), max(0, int(x0)):min(w, int(x1))] = True
    if boxes is not None:
        out = {"in_object": float(unit[inside].sum()) / total, "object_area": float(inside.mean())}
        out["background"] = 1.0 - out["in_object"]
    bands = _bands(h, w, border)
    for side, band in bands.items():
        out[side] = float(unit[band].sum()) / total
    out["centre"] = float(unit[~np.logical_or.reduce(list(bands.values()))].sum()) / total
    return out


def class_flags(summary: dict[str, Any]) -> list[str]:
    """The module docstring's flags for one class summary (``pointing`` when boxed, the ``border`` shares, and the
    ``excess`` agreement when known)."""
    flags = []
    if summary.get("pointing") is not None and summary["pointing"] < POINTING_FLAG:
        flags.append("outside")
    flags += [f"border:{s}" for s in SIDES if summary["border"][s] > BORDER_FLAG]
    if summary.get("excess") is not None and summary["excess"] > FIXED_FLAG:
        flags.append("fixed-place")
    return flags


def check_audit_method(lm: Any, method: str) -> MethodSpec:
    """The audit's method on this model (a classifier; the method applicable to it), else ``ConfigError``."""
    if lm.task not in ("multiclass", "multilabel"):
        raise ConfigError(f"xaas audit explains classifiers; model {lm.name!r} is a {lm.task} model")
    spec = parse_method(method)
    if spec.explainer.name not in lm.capabilities.usable_methods:
        raise ConfigError(f"method {method!r} does not apply to model {lm.name!r}")
    return spec


@dataclass
class AuditData:
    """A loaded set: model inputs, original sizes (width, height), pairs, file names, and how to read an image's
    bytes again (for the overlays of the examples)."""

    inputs: torch.Tensor
    sizes: list[tuple[int, int]]
    pairs: list[Pair]
    files: list[str]
    read: Callable[[str], bytes]
    source: str


class AuditRun:
    """An audit in steps: :meth:`advance` explains the pairs of the next ``images`` images (model work, the only
    part that touches the model), :meth:`report` measures them."""

    def __init__(self, lm: Any, spec: MethodSpec, data: AuditData, *, boxless: bool = False, border: float = BORDER,
                 examples: int = 3, batch_size: int = 16) -> None:
        if not 0 < border < 0.5:
            raise ValueError("border must lie in (0, 0.5)")
        if not data.pairs:
            raise ConfigError(f"{data.source}: no labelled objects to audit")
        self.lm, self.spec, self.data = lm, spec, data
        self.boxless = boxless or any(p.located_by is None for p in data.pairs)
        self.border, self.examples, self.batch_size = border, examples, batch_size
        self.raw: list[np.ndarray] = []
        self.images_done = 0
        # pairs are listed image by image: the first pair of each image, and the end
        self._starts: list[int] = []
        for k, p in enumerate(data.pairs):
            if not self._starts or data.pairs[self._starts[-1]].image != p.image:
                self._starts.append(k)
        self._starts.append(len(data.pairs))

    @property
    def total(self) -> int:
        """Images with at least one pair: what ``advance`` counts."""
        return len(self._starts) - 1

    @property
    def done(self) -> bool:
        return self.images_done >= self.total

    def advance(self, images: int = 1) -> bool:
        """Explain the pairs of the next ``images`` images; True once every image is done."""
        from .evaluate import maps_of

        if self.done:
            return True
        end = min(self.total, self.images_done + max(1, images))
        chunk = self.data.pairs[self._starts[self.images_done]:self._starts[end]]
        self.raw.extend(maps_of(self.lm.module, self.lm, self.spec, self.data.inputs, chunk,
                                batch_size=self.batch_size))
        self.images_done = end
        return self.done

    def report(self) -> dict[str, Any]:
        """The JSON-able report (``classes``: per class its means, mean map (a ``MEAN_MAP_SIZE``² list), ``flags``
        and ``examples``; ``flagged``: the flagged classes), plus private ``_`` members the HTML page needs."""
        if not self.done:
            raise RuntimeError("the audit has images left to explain")
        data, boxless = self.data, self.boxless
        rows_of: dict[str, list[dict[str, Any]]] = {}
        smalls: dict[str, list[np.ndarray]] = {}
        empty = 0
        for k, (pair, m) in enumerate(zip(data.pairs, self.raw)):
            unit = unit_map(m, data.sizes[pair.image])
            h, w = unit.shape
            mask = None if boxless or pair.region is None else pair.region.full(h, w)
            shares = map_shares(unit, None if boxless else pair.boxes, self.border, mask=mask)
            if shares is None:
                empty += 1
                continue
            y, x = np.unravel_index(int(np.argmax(unit)), unit.shape)
            row = {"pair": k, "file": data.files[pair.image], "peak": (y / h, x / w), "by": pair.located_by,
                   **shares}
            if not boxless:
                row["pointing"] = float(pointing_hit(unit, pair.boxes, POINTING_TOLERANCE) if mask is None
                                        else pointing_in_mask(unit, mask, POINTING_TOLERANCE))
            rows_of.setdefault(pair.label, []).append(row)
            small = Image.fromarray(unit).resize((MEAN_MAP_SIZE, MEAN_MAP_SIZE), Image.BILINEAR)
            smalls.setdefault(pair.label, []).append(np.asarray(small, dtype=np.float32))
        agreement = _agreement(smalls)
        classes: dict[str, Any] = {}
        for label, rows in rows_of.items():
            mean_map = np.mean(smalls[label], axis=0)
            summary: dict[str, Any] = {"pairs": len(rows)}
            if not boxless:
                by = {r["by"] for r in rows}
                summary.update(in_object=_mean(rows, "in_object"), background=_mean(rows, "background"),
                               object_area=_mean(rows, "object_area"), pointing=_mean(rows, "pointing"),
                               located_by=by.pop() if len(by) == 1 else "mixed")
            summary["border"] = {s: _mean(rows, s) for s in SIDES}
            summary["centre"] = _mean(rows, "centre")
            summary.update(_concentration(mean_map))
            own, base = agreement[label]
            summary.update(agreement=own, baseline=base,
                           excess=None if own is None or base is None else round(own - base, 4),
                           peak_cluster=_peak_cluster([r["peak"] for r in rows]))
            summary["flags"] = class_flags(summary)
            if boxless:
                scores = _own_cosines(smalls[label])
                order = sorted(range(len(rows)), key=lambda i: -scores[i])
                summary["examples"] = [{"file": rows[i]["file"], "pair": rows[i]["pair"],
                                        "agreement": round(scores[i], 4)} for i in order[:self.examples]]
            else:
                worst = sorted(rows, key=lambda r: r["in_object"])[:self.examples]
                summary["examples"] = [{"file": r["file"], "pair": r["pair"], "in_object": round(r["in_object"], 4),
                                        "pointing": bool(r["pointing"])} for r in worst]
            summary["mean_map"] = np.round(mean_map, 4).tolist()
            classes[label] = summary
        rules = {"border": f"mean share in a band > {BORDER_FLAG}",
                 "fixed-place": f"agreement - baseline > {FIXED_FLAG}"}
        if not boxless:
            rules["outside"] = f"pointing < {POINTING_FLAG}"
        shown = {e["pair"] for v in classes.values() for e in v["examples"]}
        flagged = sorted(k for k, v in classes.items() if v["flags"])
        return {"model": self.lm.name, "method": self.spec.text, "data": data.source,
                "mode": "boxless" if boxless else "boxes", "images": len(data.files), "pairs": len(data.pairs),
                "empty_maps": empty, "border": self.border, "rules": rules, "classes": dict(sorted(classes.items())),
                "flagged": flagged,
                "_maps": {k: self.raw[k] for k in shown},
                "_boxes": {k: ([] if boxless else data.pairs[k].boxes) for k in shown},
                "_masks": {k: data.pairs[k].region for k in shown if not boxless and data.pairs[k].region},
                "_read": data.read}


def _unit_vectors(maps: list[np.ndarray]) -> np.ndarray:
    flat = np.stack(maps).reshape(len(maps), -1).astype(np.float64)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def _own_cosines(maps: list[np.ndarray]) -> list[float]:
    """cos(m_i, sum of the other maps of the class), per map (1.0 for a lone map: nothing to disagree with)."""
    if len(maps) < 2:
        return [1.0] * len(maps)
    v = _unit_vectors(maps)
    rest = v.sum(axis=0)[None] - v
    return (np.einsum("ij,ij->i", v, rest) / np.maximum(np.linalg.norm(rest, axis=1), 1e-12)).tolist()


def _agreement(smalls: dict[str, list[np.ndarray]]) -> dict[str, tuple[float | None, float | None]]:
    """Per class (agreement, baseline) as the module docstring defines them (None where undefined: a lone map, or
    no other class)."""
    sums = {k: _unit_vectors(v).sum(axis=0) for k, v in smalls.items()}
    total = sum(sums.values()) if sums else None
    out: dict[str, tuple[float | None, float | None]] = {}
    for label, maps in smalls.items():
        own = round(float(np.mean(_own_cosines(maps))), 4) if len(maps) > 1 else None
        others = total - sums[label]
        norm = float(np.linalg.norm(others))
        base = round(float(np.mean(_unit_vectors(maps) @ others) / norm), 4) if len(sums) > 1 and norm > 0 else None
        out[label] = (own, base)
    return out


def _concentration(mean_map: np.ndarray) -> dict[str, float]:
    flat = np.sort(mean_map.ravel())[::-1].astype(np.float64)
    total = flat.sum()
    if not total > 0:
        return {"top5": 0.0, "entropy": 0.0}
    p = flat / total
    nz = p[p > 0]
    top = max(1, round(TOP_SHARE * flat.size))
    return {"top5": round(float(p[:top].sum()), 4), "entropy": round(float(-(nz * np.log(nz)).sum() / np.log(p.size)),
                                                                      4)}


def _peak_cluster(peaks: list[tuple[float, float]]) -> float:
    """Share of the maxima (relative coordinates) within :data:`PEAK_RADIUS` of their median."""
    pts = np.asarray(peaks, dtype=np.float64)
    return round(float(np.mean(np.linalg.norm(pts - np.median(pts, axis=0), axis=1) <= PEAK_RADIUS)), 4)


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.mean([r[key] for r in rows])), 4)


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the private members the HTML needs (raw maps of the examples, the image reader)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def audit(data_dir: str | Path, *, models_file: str | Path | None = None, model: str | None = None,
          method: str = "gradcam", limit: int | None = None, border: float = BORDER, examples: int = 3,
          boxless: bool = False, batch_size: int = 16, loaded: Any = None,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Audit the folder ``data_dir`` with ``method`` (``boxless``: ignore the boxes); returns
    :meth:`AuditRun.report`."""
    say = log or (lambda _m: None)
    lm = loaded if loaded is not None else load_model(models_file, model)
    spec = check_audit_method(lm, method)
    t0 = time.perf_counter()
    root = Path(data_dir)
    inputs, sizes, pairs, files = load_pairs(root, lm, limit=limit, need_boxes=False, keep_masks=not boxless)
    run = AuditRun(lm, spec, AuditData(inputs, sizes, pairs, files, lambda name: (root / name).read_bytes(),
                                       str(data_dir)), boxless=boxless, border=border, examples=examples,
                   batch_size=batch_size)
    while not run.advance(batch_size):
        pass
    report = run.report()
    say(f"audit: {len(files)} images, {len(pairs)} pairs, {lm.name} / {spec.text}, {report['mode']} "
        f"({time.perf_counter() - t0:.1f}s)")
    return report
