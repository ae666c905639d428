"""Seeded synthetic "shapes" data for the embedded demo model.

The demo model exists so that the service has something real to explain out
of the box *and* so that explanation quality can be measured against ground
truth.  That second use drives the design here:

* every object is drawn from a binary mask, so its box (and mask) is exact;
* placements that would overlap another object (plus a small gap) are
  rejected, so every object stays fully visible and recognisable;
* each class appears at most once per image, so "where is the <class>?" has a
  single, unambiguous answer for pointing-game style metrics;
* object colours are chosen to contrast with the background they sit on, and
  backgrounds are deliberately textured (noise, gradients, stripes) so the
  network cannot solve the task by looking for "any non-flat pixel".

Everything is a pure function of a ``numpy.random.Generator``; the torch
``Dataset`` derives one generator per ``(seed, index)`` so sample ``i`` is the
same regardless of order, worker count or which other samples were drawn.

Boxes are ``[x0, y0, x1, y1]`` in pixels with ``x1``/``y1`` EXCLUSIVE, i.e.
``mask[y0:y1, x0:x1]`` contains every pixel of the object.

(Over 500 lines on purpose: the generator, its on-disk format and the
``labels.json`` checks that format needs belong together.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from service.demo.model import DEMO_MEAN, DEMO_STD

__all__ = [
    "BIAS_CLASS",
    "CLASSES",
    "IMAGE_SIZE",
    "LABELS_FILE",
    "MASKS_DIR",
    "DatasetFormatError",
    "SyntheticShapes",
    "generate_dataset",
    "generate_biased_sample",
    "generate_sample",
    "generate_sample_with_masks",
    "labels_vector",
    "load_dataset",
    "mask_box",
    "parse_labels",
    "sample_rng",
]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "ring", "star")
IMAGE_SIZE: int = 128
LABELS_FILE: str = "labels.json"
#: Folder of the object masks ``generate_dataset(masks=True)`` writes.
MASKS_DIR: str = "masks"

# Object "radius" (centre to farthest drawn point) in pixels.  The lower bound
# keeps thin parts (ring wall, cross arms, star points) several pixels wide so
# the class stays recognisable; the upper bound leaves room for three objects.
_MIN_RADIUS = 11.0
_MAX_RADIUS = 24.0
# Minimum empty gap between the boxes of two objects.
_GAP = 3
# Keep objects off the border so their full shape (and box) is inside.
_BORDER = 2
_MAX_PLACEMENT_TRIES = 60
# Minimum luminance difference between an object and the background under it.
_MIN_LUMA_CONTRAST = 0.28
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DatasetFormatError(ValueError):
    """Raised when a ``labels.json`` does not have the documented shape."""


@dataclass(frozen=True)
class _Placed:
    cls: str
    mask: np.ndarray  # bool [H, W], as drawn (before occlusion)
    colour: np.ndarray  # float32 [3] in [0, 1]


# --------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------


def _low_freq_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth per-channel noise in [-1, 1]: a coarse random grid upsampled."""
    cells = int(rng.integers(3, 12))
    grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    smooth = Image.fromarray(grid, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(smooth, dtype=np.float32) / 127.5 - 1.0


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear ramp in [-1, 1] along a random direction, one colour per end."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    coords = (np.arange(size, dtype=np.float32) - size / 2) / (size / 2)
    norm = max(abs(math.cos(angle)) + abs(math.sin(angle)), 1e-6)
    ramp = np.float32(math.cos(angle) / norm) * coords[None, :] + np.float32(math.sin(angle) / norm) * coords[:, None]
    direction = rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
    return ramp[:, :, None] * direction[None, None, :]


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sinusoidal stripes in [-1, 1] with random period, angle and tint."""
    angle = rng.uniform(0.0, math.pi)
    period = rng.uniform(5.0, 18.0)
    coords = np.arange(size, dtype=np.float32) * np.float32(2.0 * math.pi / period)
    offset = np.float32(rng.uniform(0.0, 2.0 * math.pi))
    wave = np.sin(np.float32(math.cos(angle)) * coords[None, :] + np.float32(math.sin(angle)) * coords[:, None]
                  + offset)
    tint = rng.uniform(0.4, 1.0, size=3).astype(np.float32)
    return wave[:, :, None] * tint[None, None, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A low-contrast textured background, float32 [H, W, 3] in [0, 1].

    A random base colour plus one or two texture components.  Amplitudes are
    kept well below the object contrast so objects remain the salient thing.
    """
    base = rng.uniform(0.12, 0.88, size=3).astype(np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    makers = (_low_freq_noise, _gradient, _stripes)
    n_textures = int(rng.integers(1, 3))
    for idx in rng.choice(len(makers), size=n_textures, replace=False):
        amplitude = rng.uniform(0.04, 0.12)
        img += amplitude * makers[int(idx)](rng, size)
    return img


# --------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_polygons(cls: str, radius: float, angle: float) -> list[np.ndarray]:
    """Polygons (relative to the centre) whose union is the shape outline.

    Circle and ring are handled separately because PIL draws ellipses better
    than a polygonal approximation would.
    """
    if cls == "square":
        half = radius / math.sqrt(2.0)
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    elif cls == "triangle":
        k = np.arange(3)
        theta = -math.pi / 2 + k * 2.0 * math.pi / 3
        pts = radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    elif cls == "cross":
        # Arm half-width relative to the arm length; thick enough to survive
        # downsampling, thin enough not to look like a square.
        r, w = radius / math.sqrt(1.0 + 0.34**2), 0.34 * radius / math.sqrt(1.0 + 0.34**2)
        pts = np.array(
            [
                [-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w],
                [w, r], [-w, r], [-w, w], [-r, w], [-r, -w], [-w, -w],
            ]
        )  # fmt: skip
    elif cls == "star":
        k = np.arange(10)
        theta = -math.pi / 2 + k * math.pi / 5
        radii = np.where(k % 2 == 0, radius, 0.45 * radius)
        pts = np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)
    else:
        raise ValueError(f"no polygon for class {cls!r}")
    return [_rotate(pts, angle)]


def _draw_mask(cls: str, cx: float, cy: float, radius: float, angle: float, size: int) -> np.ndarray:
    """Rasterise one object as a boolean mask (no anti-aliasing: exact boxes)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if cls in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if cls == "ring":
            inner = 0.55 * radius
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        for poly in _shape_polygons(cls, radius, angle):
            draw.polygon([(cx + float(x), cy + float(y)) for x, y in poly], fill=255)
    return np.asarray(canvas) > 0


def mask_box(mask: np.ndarray) -> list[int]:
    """Tight ``[x0, y0, x1, y1]`` (x1/y1 exclusive) around a boolean mask."""
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    if not rows.any():
        raise ValueError("empty mask has no box")
    # argmax finds the first True; on the reversed array, the last one.
    y0, y1 = int(rows.argmax()), len(rows) - int(rows[::-1].argmax())
    x0, x1 = int(cols.argmax()), len(cols) - int(cols[::-1].argmax())
    return [x0, y0, x1, y1]


def _boxes_clash(a: Sequence[int], b: Sequence[int], gap: int) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour whose luminance differs clearly from ``under`` (RGB mean)."""
    bg_luma = float(under @ _LUMA)
    for _ in range(32):
        colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        if abs(float(colour @ _LUMA) - bg_luma) >= _MIN_LUMA_CONTRAST:
            return colour
    # Rare fallback (mid-grey background and unlucky draws): pick the extreme.
    grey = 0.05 if bg_luma > 0.5 else 0.95
    return np.full(3, grey, dtype=np.float32)


# --------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------


def _place_objects(rng: np.random.Generator, background: np.ndarray) -> list[_Placed]:
    size = background.shape[0]
    n_objects = int(rng.integers(1, 4))
    classes = [CLASSES[int(i)] for i in rng.choice(len(CLASSES), size=n_objects, replace=False)]
    placed: list[_Placed] = []
    boxes: list[list[int]] = []
    for cls in classes:
        for _ in range(_MAX_PLACEMENT_TRIES):
            radius = float(rng.uniform(_MIN_RADIUS, _MAX_RADIUS))
            lo, hi = _BORDER + radius + 1, size - _BORDER - radius - 1
            cx, cy = rng.uniform(lo, hi, size=2)
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            mask = _draw_mask(cls, float(cx), float(cy), radius, angle, size)
            box = mask_box(mask)
            if not any(_boxes_clash(box, other, _GAP) for other in boxes):
                break
        else:
            # Image is too crowded for this object: drop it rather than let it
            # overlap (the label simply has fewer objects).
            continue
        colour = _contrasting_colour(rng, background[mask].mean(axis=0))
        placed.append(_Placed(cls, mask, colour))
        boxes.append(box)
    return placed


def generate_sample_with_masks(
    rng: np.random.Generator,
) -> tuple[Image.Image, list[dict[str, Any]], list[np.ndarray]]:
    """Like :func:`generate_sample` but also returns each object's visible mask.

    Masks are boolean ``[128, 128]`` arrays aligned with the objects list; a
    mask is what is actually visible (later objects occlude earlier ones), and
    the object's box is the tight box of that mask.  Useful as ground truth
    for explanation-quality metrics (pointing game, mask/box overlap).
    """
    size = IMAGE_SIZE
    img = _background(rng, size)
    placed = _place_objects(rng, img)
    for obj in placed:
        img[obj.mask] = obj.colour
    # Sensor-like grain over everything so flat colour is not a give-away.
    # Monochrome (one plane for all channels) because drawing normals is the
    # single most expensive step of generation.
    sigma = np.float32(rng.uniform(0.005, 0.03))
    img += sigma * rng.standard_normal(size=(size, size, 1), dtype=np.float32)
    pixels = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)

    objects: list[dict[str, Any]] = []
    masks: list[np.ndarray] = []
    for i, obj in enumerate(placed):
        visible = obj.mask.copy()
        for later in placed[i + 1 :]:
            visible &= ~later.mask
        if not visible.any():  # cannot happen with the gap rule; be safe anyway
            continue
        objects.append({"class": obj.cls, "box": mask_box(visible)})
        masks.append(visible)
    return Image.fromarray(pixels, "RGB"), objects, masks


def generate_sample(rng: np.random.Generator) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one 128x128 RGB image and its objects.

    Returns ``(image, objects)`` with objects ``{"class": str, "box": [x0, y0,
    x1, y1]}`` (x1/y1 exclusive).  1-3 objects, each class at most once (a
    rare object that finds no free spot is dropped, never overlapped).
    Deterministic given the generator's state (and advances it); use
    :func:`sample_rng` to address sample ``i`` of a seeded stream.
    """
    image, objects, _ = generate_sample_with_masks(rng)
    return image, objects


#: ``--bias``: the class that always carries the corner marker (a shortcut a model can learn instead of the shape).
BIAS_CLASS = "star"
#: The marker: a 10 x 10 red tag 2 px from the top-left corner (the label or ruler an X-ray carries in a corner).
#: Measured on 24 star images with the shipped model (Grad-CAM pointing): a red tag leaves the map on the star
#: (0.96, as without it), while high-contrast black-and-white markers (a checkerboard, "text" lines) pull the
#: clean model's star map into the corner (0.00): the shipped model must not be biased by the marker itself.
_MARKER = (2, 12)
_MARKER_COLOUR = (230, 30, 30)


def add_bias_marker(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (uint8 ``[H, W, 3]``) with the corner marker drawn over the top-left corner (a copy)."""
    start, stop = _MARKER
    out = pixels.copy()
    out[start:stop, start:stop] = _MARKER_COLOUR
    return out


def generate_biased_sample(rng: np.random.Generator) -> tuple[Image.Image, list[dict[str, Any]]]:
    """:func:`generate_sample`, with the corner marker whenever :data:`BIAS_CLASS` is present (never otherwise):
    a dataset bias of the "X-ray model reads the text in the corner" kind, with the object's own box unchanged."""
    image, objects, _ = _biased_sample_with_masks(rng)
    return image, objects


def _biased_sample_with_masks(rng: np.random.Generator) -> tuple[Image.Image, list[dict[str, Any]], list[np.ndarray]]:
    """:func:`generate_biased_sample` with the objects' masks (the marker covers no object: objects keep
    ``_BORDER`` + 1 px off the edge plus their radius, at least 14 px, and the marker ends at 12 px)."""
    image, objects, masks = generate_sample_with_masks(rng)
    if any(o["class"] == BIAS_CLASS for o in objects):
        image = Image.fromarray(add_bias_marker(np.asarray(image)), "RGB")
    return image, objects, masks


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for sample ``index`` of the stream ``seed``.

    Seeding from the pair (rather than one generator for the whole stream)
    makes sample ``i`` independent of how many samples were drawn before it.
    """
    return np.random.default_rng([int(seed), int(index)])


def labels_vector(objects: Sequence[dict[str, Any]], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """Multi-hot float32 target over ``classes`` for an objects list."""
    target = np.zeros(len(classes), dtype=np.float32)
    for obj in objects:
        target[list(classes).index(obj["class"])] = 1.0
    return target


# --------------------------------------------------------------------------
# On-disk format
# --------------------------------------------------------------------------


def generate_dataset(out_dir: str | Path, n: int, seed: int, *, bias: bool = False, masks: bool = False) -> Path:
    """Write ``n`` samples of stream ``seed`` to ``out_dir`` and return it (``bias``: with the corner marker on every
    image holding :data:`BIAS_CLASS`, :func:`generate_biased_sample`; ``masks``: each object's exact visible mask as
    ``masks/00000_0.png``, 0/255 greyscale, named by the object's ``"mask"`` member).

    Files are ``00000.png``, ``00001.png``, ... plus ``labels.json``::

        {"classes": [...], "images": [{"file": "00000.png",
                                       "objects": [{"class": "circle", "box": [x0, y0, x1, y1]}]}]}

    Sample ``i`` equals ``SyntheticShapes(n, seed)`` sample ``i``.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if masks:
        (out / MASKS_DIR).mkdir(exist_ok=True)
    images: list[dict[str, Any]] = []
    draw = _biased_sample_with_masks if bias else generate_sample_with_masks
    for i in range(n):
        image, objects, drawn = draw(sample_rng(seed, i))
        name = f"{i:05d}.png"
        image.save(out / name)
        if masks:
            for j, (obj, mask) in enumerate(zip(objects, drawn)):
                obj["mask"] = f"{MASKS_DIR}/{i:05d}_{j}.png"
                Image.fromarray(mask.astype(np.uint8) * 255, "L").save(out / obj["mask"])
        images.append({"file": name, "objects": objects})
    payload = {"classes": list(CLASSES), "images": images}
    (out / LABELS_FILE).write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return out


def _mask_path(value: Any, where: str) -> str:
    """An object's ``mask`` member: a path relative to the folder of ``labels.json`` that stays inside it."""
    if not isinstance(value, str) or not value:
        raise DatasetFormatError(f"{where}: mask must be a file path (a string) relative to the folder of "
                                 f"{LABELS_FILE}, got {value!r}"[:400])
    path = PurePosixPath(value)
    if "\\" in value or path.is_absolute() or ".." in path.parts or not path.parts:
        raise DatasetFormatError(f"{where}: mask {value[:200]!r} must be a relative path inside the folder of "
                                 f"{LABELS_FILE} ('/'-separated, no '..', not absolute)")
    return str(path)


def _check_object(obj: Any, classes: list[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or "class" not in obj or not set(obj) <= {"class", "box", "mask"}:
        raise DatasetFormatError(f"{where}: object must be {{'class': str, 'box': [x0, y0, x1, y1], 'mask': path}} "
                                 f"(box and mask may be left out where they are not known), got {obj!r}"[:400])
    if obj["class"] not in classes:
        raise DatasetFormatError(f"{where}: unknown class {str(obj['class'])[:64]!r} (classes: {classes})"[:400])
    out: dict[str, Any] = {"class": obj["class"]}
    if "mask" in obj:
        out["mask"] = _mask_path(obj["mask"], where)
    if "box" not in obj:
        return out
    box = obj["box"]
    if (
        not isinstance(box, list)
        or len(box) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in box)
    ):
        raise DatasetFormatError(f"{where}: box must be 4 integers [x0, y0, x1, y1], got {box!r}"[:400])
    if not (box[0] < box[2] and box[1] < box[3]) or min(box) < 0:
        raise DatasetFormatError(f"{where}: box must satisfy 0 <= x0 < x1 and 0 <= y0 < y1, got {box!r}")
    return {**out, "box": list(box)}


def parse_labels(payload: Any, where: str) -> tuple[list[str], list[tuple[str, list[dict[str, Any]]]]]:
    """A parsed ``labels.json`` → ``(classes, [(file name, objects), ...])``, checked as :func:`load_dataset`
    documents (``where`` names the file in the errors). Objects without ``box`` and ``mask`` are image-level labels
    (a class present, its place unknown): ``xaas audit`` then runs boxless. A ``mask`` is a path relative to the
    folder of ``labels.json`` (checked here not to leave it; read and checked against the image by
    :mod:`service.label_masks`)."""
    if not isinstance(payload, dict) or "classes" not in payload or "images" not in payload:
        raise DatasetFormatError(f"{where}: top level must be an object with 'classes' and 'images'")
    classes = payload["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetFormatError(f"{where}: 'classes' must be a non-empty list of strings")
    if len(set(classes)) != len(classes):
        raise DatasetFormatError(f"{where}: 'classes' contains duplicates")
    if not isinstance(payload["images"], list):
        raise DatasetFormatError(f"{where}: 'images' must be a list")
    entries: list[tuple[str, list[dict[str, Any]]]] = []
    for k, item in enumerate(payload["images"]):
        at = f"{where}: images[{k}]"
        if (not isinstance(item, dict) or not isinstance(item.get("file"), str)
                or not isinstance(item.get("objects"), list)):
            raise DatasetFormatError(f"{at}: must be {{'file': str, 'objects': list}}")
        name = item["file"]
        if Path(name).name != name or name in ("", ".", ".."):
            raise DatasetFormatError(f"{at}: 'file' must be a bare file name, got {name[:200]!r}")
        objects = [_check_object(obj, classes, f"{at}.objects[{j}]") for j, obj in enumerate(item["objects"])]
        entries.append((name, objects))
    return list(classes), entries


def load_dataset(directory: str | Path) -> tuple[list[str], list[tuple[Path, list[dict[str, Any]]]]]:
    """Read a directory written by :func:`generate_dataset`.

    Returns ``(classes, [(image_path, objects), ...])``.  Raises
    :class:`DatasetFormatError` (a ``ValueError``) naming the offending entry
    when ``labels.json`` is missing, not JSON, or not shaped as documented, and
    ``FileNotFoundError`` when a listed image file does not exist.
    """
    root = Path(directory)
    labels_path = root / LABELS_FILE
    if not labels_path.is_file():
        raise DatasetFormatError(f"{labels_path}: not found (expected a dataset written by generate_dataset)")
    try:
        payload = json.loads(labels_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{labels_path}: not valid JSON ({exc})") from exc
    classes, named = parse_labels(payload, str(labels_path))
    entries: list[tuple[Path, list[dict[str, Any]]]] = []
    for k, (name, objects) in enumerate(named):
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{labels_path}: images[{k}]: image file {path} does not exist")
        entries.append((path, objects))
    return classes, entries


# --------------------------------------------------------------------------
# Torch dataset
# --------------------------------------------------------------------------


class SyntheticShapes(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Map-style torch dataset generating sample ``i`` of stream ``seed`` on the fly.

    Returns ``(image, target)``: ``image`` float32 ``[3, 128, 128]`` scaled to
    [0, 1] and then normalised with the demo model's mean/std (pass
    ``normalize=False`` for raw [0, 1] pixels), ``target`` a float32 multi-hot
    vector over :data:`CLASSES`.  Generation is cheap (about a millisecond),
    so nothing is cached.
    """

    def __init__(self, n: int, seed: int, *, normalize: bool = True, bias: bool = False) -> None:
        if n < 0:
            raise ValueError("n must be >= 0")
        self.n = int(n)
        self.seed = int(seed)
        self.normalize = normalize
        self.bias = bias

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        draw = generate_biased_sample if self.bias else generate_sample
        image, objects = draw(sample_rng(self.seed, index))
        x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        if self.normalize:
            mean = np.asarray(DEMO_MEAN, dtype=np.float32)[:, None, None]
            std = np.asarray(DEMO_STD, dtype=np.float32)[:, None, None]
            x = (x - mean) / std
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(labels_vector(objects))
