"""``xaas calibrate``: measure ``/localize`` on a labelled folder and pick its threshold (and method).

The Grad-CAM paper's 15 % threshold was tuned on ImageNet, whose objects fill much of the frame. On smaller objects it
boxes far too much, so the threshold must be calibrated per model and data. Given a folder in the demo-data format
(``labels.json`` = ``{"classes": [...], "images": [{"file", "objects": [{"class", "box": [x0, y0, x1, y1]}]}]}``,
``x1``/``y1`` exclusive, boxes in the image's own pixels), :func:`calibrate`

1. loads the model through the registry (the same preprocessing as the service: ``decode_image`` +
   ``to_model_input`` with the model's spec) and each image's (image, class) pairs, one per class present;
2. explains every pair with each method — exactly as ``/localize`` does: the model's target layer unless a method
   is given as ``name@layer``, raw map rendered to the *original* image size by ``normalised_map``;
3. sweeps the thresholds: box accuracy (IoU ≥ 0.5 with a ground-truth box of the class, the box being that of the
   largest connected component — what ``/localize`` returns), MaxBoxAcc (Choe et al., CVPR 2020) and its
   threshold, plus MaxBoxAccV2 and the mean IoU at the best threshold (see :mod:`service.quality`);
4. optionally writes the winning ``localize_threshold`` and ``localize_method`` into the model's entry of
   ``models.yaml`` with a textual edit that keeps every comment and the rest of the file byte for byte
   (:func:`update_registry_entry`).

Example::

    report = calibrate("data/shapes", models_file="service/models.yaml", model="demo", methods=["gradcam"])
    print(format_report(report))
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import get_method, validate_params
from .engine.base import Explainer
from .engine.localize import DEFAULT_THRESHOLD
from .errors import ConfigError, NotFound
from .label_masks import Region, class_location, read_mask
from .quality import IOU_THRESHOLD, box_sweep, localization_summary, parse_thresholds, unit_map

__all__ = [
    "DEFAULT_METHODS",
    "MethodSpec",
    "Pair",
    "calibrate",
    "format_report",
    "load_pairs",
    "parse_method",
    "prepare_pairs",
    "update_registry_entry",
]

DEFAULT_METHODS: tuple[str, ...] = ("gradcam",)


# --------------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodSpec:
    """A method as written on the command line: ``name`` or ``name@layer`` (``layer`` overrides the model's)."""

    text: str
    explainer: Explainer
    layer: str | None
    params: dict[str, Any]

    @property
    def writable(self) -> bool:
        """Whether ``/localize`` can run it from the registry alone: a registered method at the model's layer with
        its default parameters."""
        if self.layer is not None or ":" in self.text:
            return False
        try:
            return get_method(self.explainer.name) is self.explainer
        except NotFound:
            return False


def parse_method(text: str) -> MethodSpec:
    """``"gradcam"``, ``"layercam@features.block3"`` (layer override), ``"occlusion:window=16:stride=8"`` (method
    parameters, validated as the API validates them) → :class:`MethodSpec`. Unknown names raise ``NotFound``."""
    head, *options = text.strip().split(":")
    name, _, layer = head.partition("@")
    explainer = get_method(name)
    raw: dict[str, Any] = {}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"method option must be key=value, got {opt!r} in {text!r}")
        raw[key.strip()] = value.strip()
    return MethodSpec(text.strip(), explainer, layer.strip() or None, validate_params(explainer, raw))


# --------------------------------------------------------------------------------------------------- data


@dataclass
class Pair:
    """One evaluation unit: an image, one class present in it, and that class's ground-truth boxes (an object with
    a mask and no box counts by its mask's tight box). ``located_by``: ``"box"``, ``"mask"`` or ``"mixed"`` when
    every object of the class has a box or a mask, ``None`` otherwise; ``region``: the union of the objects' masks
    (and the boxes of those without one) when some have masks and the caller kept them (``keep_masks``), see
    :mod:`service.label_masks`."""

    image: int
    target: int          # model class index
    label: str
    boxes: list[list[int]]
    located_by: str | None = "box"
    region: Region | None = None


def load_pairs(data_dir: str | Path, loaded: Any, *, limit: int | None = None, need_boxes: bool = True,
               keep_masks: bool = False) -> tuple[torch.Tensor, list[tuple[int, int]], list[Pair], list[str]]:
    """``(inputs [N, C, H, W], sizes [(width, height)], pairs, files)`` for a demo-format folder.

    Preprocessing is the service's: :func:`service.imaging.decode_image` then ``to_model_input`` with the model's
    input size, channels, mean and std. Dataset classes are matched to the model's labels by name (a class the
    model does not know is an error). Images without objects contribute no pair. ``need_boxes``: an object without
    a box (or a mask, whose tight box stands in) is an error (calibrate and evaluate measure against boxes; the
    audit can run boxless). Every object mask is read and checked; ``keep_masks``: the pairs keep their regions.
    """
    from .demo.data import load_dataset

    classes, entries = load_dataset(data_dir)
    if limit is not None:
        entries = entries[: int(limit)]
    root = Path(data_dir)
    return prepare_pairs(classes, [(p.name, p.read_bytes, objects) for p, objects in entries], loaded,
                         where=str(data_dir), need_boxes=need_boxes, keep_masks=keep_masks,
                         read_file=lambda rel: (root / rel).read_bytes())


def prepare_pairs(classes: Sequence[str], entries: Sequence[tuple[str, Callable[[], bytes], list[dict[str, Any]]]],
                  loaded: Any, *, where: str, need_boxes: bool = True, limits: Any = None, keep_masks: bool = False,
                  read_file: Callable[[str], bytes] | None = None
                  ) -> tuple[torch.Tensor, list[tuple[int, int]], list[Pair], list[str]]:
    """:func:`load_pairs` on parsed labels: ``entries`` = ``(file name, read the file's bytes, objects)``; ``limits``
    (:class:`~service.imaging.ImageLimits`) bounds each decoded image and mask (the HTTP audit passes the service's);
    ``read_file(path)`` reads a mask by its path relative to the set (``OSError``/``KeyError`` when absent)."""
    from .demo.data import mask_box
    from .imaging import decode_image, to_model_input

    def no_file(path: str) -> bytes:
        raise KeyError(path)

    unknown = [c for c in classes if c not in loaded.labels]
    if unknown:
        raise ConfigError(f"{where}: classes {unknown[:10]} are not labels of model '{loaded.name}' "
                          f"(labels: {', '.join(loaded.labels[:10])}{' ...' if len(loaded.labels) > 10 else ''})")
    spec = loaded.spec
    tensors, sizes, pairs, files = [], [], [], []
    for i, (name, read, objects) in enumerate(entries):
        decoded = decode_image(read()) if limits is None else decode_image(read(), limits)
        tensors.append(to_model_input(decoded, input_size=spec.input_size, channels=spec.channels,
                                      mean=spec.mean, std=spec.std))
        sizes.append((decoded.width, decoded.height))
        files.append(name)
        size = (decoded.width, decoded.height)
        by_class: dict[str, list[tuple[list[int] | None, np.ndarray | None]]] = {}
        for obj in objects:
            mask = None
            if "mask" in obj:
                mask = read_mask(read_file or no_file, obj["mask"], size, where=f"{where}: {name}", limits=limits)
            box = list(obj["box"]) if "box" in obj else None if mask is None else mask_box(mask)
            if box is None and need_boxes:
                raise ConfigError(f"{where}: {name}: a {obj['class']!r} object has no box or mask (boxes are needed "
                                  "here)")
            by_class.setdefault(obj["class"], []).append((box, mask))
        for label, objs in by_class.items():
            located_by, region = class_location(objs, size, region=keep_masks)
            pairs.append(Pair(i, loaded.labels.index(label), label, [b for b, _ in objs if b is not None],
                              located_by, region))
    if not tensors:
        raise ConfigError(f"{where}: no images")
    return torch.stack(tensors), sizes, pairs, files


def explain_pairs(loaded: Any, method: MethodSpec, inputs: torch.Tensor, pairs: Sequence[Pair], *,
                  batch_size: int = 32) -> list[np.ndarray]:
    """Raw maps (NumPy, native resolution) for every pair, as ``/localize`` computes them."""
    explainer = method.explainer
    layer = (method.layer or loaded.target_layer) if explainer.uses_layer else None
    out: list[np.ndarray] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        rows = torch.tensor([p.image for p in chunk])
        x = inputs[rows].to(loaded.device)
        t = torch.tensor([p.target for p in chunk], device=loaded.device)
        maps = explainer.explain(loaded.module, x, t, layer=layer, task=loaded.task,
                                 input_range=loaded.input_range, **method.params)
        out.extend(maps.detach().float().cpu().numpy())
    return out


# --------------------------------------------------------------------------------------------------- calibrate


def load_model(models_file: str | Path | None, name: str | None) -> Any:
    """One model of a registry file, loaded on the CPU (only that entry is built)."""
    from .config import DEFAULT_MODELS_FILE
    from .registry import ModelRegistry

    path = Path(models_file) if models_file is not None else Path(DEFAULT_MODELS_FILE)
    registry = ModelRegistry.from_file(path, device_policy="cpu")
    wanted = name or registry.default_name
    if wanted not in registry.names():
        raise ConfigError(f"{path}: no enabled model named {wanted!r} (models: {', '.join(registry.names())})")
    registry.specs = [s for s in registry.specs if s.name == wanted]   # build only the model being calibrated
    registry.default_name = wanted
    registry.load_all()
    return registry.get(wanted)


def calibrate(data_dir: str | Path, *, models_file: str | Path | None = None, model: str | None = None,
              methods: Sequence[str] = DEFAULT_METHODS, thresholds: str | Sequence[float] | None = None,
              batch_size: int = 32, limit: int | None = None, loaded: Any = None,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sweep ``thresholds`` × ``methods`` on a labelled folder; return the report (JSON-able dict).

    Report keys: ``model``, ``data``, ``images``, ``pairs``, ``iou_threshold``, ``thresholds``, ``methods``
    (``{method: localization_summary + seconds}``), ``best`` (``{method, threshold, max_box_acc}``: the best over
    all methods), ``best_writable`` (the best among methods ``/localize`` can run from the registry, i.e. what
    ``--write`` writes; ``None`` when none is), ``current`` (the model's current ``/localize`` default method and
    threshold and their box accuracy, when that method was evaluated).

    ``loaded`` (a :class:`~service.registry.LoadedModel`) skips loading from ``models_file``.
    """
    say = log or (lambda _m: None)
    lm = loaded if loaded is not None else load_model(models_file, model)
    sweep = parse_thresholds(thresholds)
    specs = [parse_method(m) for m in methods]
    if not specs:
        raise ValueError("no methods to calibrate")
    current_method = lm.spec.localize_method or "gradcam"
    current_threshold = float(lm.spec.localize_threshold or DEFAULT_THRESHOLD)
    grid = sorted(set(sweep) | {round(current_threshold, 6), DEFAULT_THRESHOLD})
    t0 = time.perf_counter()
    inputs, sizes, pairs, files = load_pairs(data_dir, lm, limit=limit)
    say(f"calibrate: {len(files)} images, {len(pairs)} (image, class) pairs, model {lm.name} "
        f"({time.perf_counter() - t0:.1f}s to load)")
    if not pairs:
        raise ConfigError(f"{data_dir}: no objects to localise")
    results: dict[str, Any] = {}
    for spec in specs:
        start = time.perf_counter()
        maps = explain_pairs(lm, spec, inputs, pairs, batch_size=batch_size)
        lg, an = [], []
        for pair, raw in zip(pairs, maps):
            a, b = box_sweep(unit_map(raw, sizes[pair.image]), pair.boxes, grid)
            lg.append(a)
            an.append(b)
        iou_l, iou_a = np.array(lg), np.array(an)
        keep = [grid.index(t) for t in sweep]
        summary = localization_summary(iou_l[:, keep], iou_a[:, keep], sweep, at=(DEFAULT_THRESHOLD,))
        acc_grid = (iou_l >= IOU_THRESHOLD).mean(axis=0)
        summary["box_accuracy_at"] = {f"{t:g}": float(acc_grid[grid.index(t)])
                                      for t in sorted({DEFAULT_THRESHOLD, round(current_threshold, 6)})}
        summary["layer"] = (spec.layer or lm.target_layer) if spec.explainer.uses_layer else None
        summary["writable"] = spec.writable
        summary["seconds"] = round(time.perf_counter() - start, 2)
        results[spec.text] = summary
        say(f"  {spec.text}: MaxBoxAcc {summary['max_box_acc']:.3f} at {summary['best_threshold']:g} "
            f"({summary['seconds']:.1f}s)")
    best_name = max(results, key=lambda k: (results[k]["max_box_acc"], -list(results).index(k)))
    writable = [k for k in results if results[k]["writable"]]
    best_w = max(writable, key=lambda k: (results[k]["max_box_acc"], -list(results).index(k))) if writable else None

    def pick(name: str | None) -> dict[str, Any] | None:
        if name is None:
            return None
        r = results[name]
        sanity = specs[list(results).index(name)].explainer.sanity
        return {"method": name, "threshold": r["best_threshold"], "max_box_acc": r["max_box_acc"], "sanity": sanity}

    current = None
    try:
        current_name = get_method(current_method).name
    except NotFound:          # a registry naming a method this engine does not have: nothing to compare with
        current_name = None
    for name, spec in zip(results, specs):
        if spec.writable and spec.explainer.name == current_name:
            current = {"method": current_method, "threshold": current_threshold,
                       "box_accuracy": results[name]["box_accuracy_at"][f"{round(current_threshold, 6):g}"]}
            break
    return {
        "model": lm.name,
        "data": str(data_dir),
        "images": len(files),
        "pairs": len(pairs),
        "iou_threshold": IOU_THRESHOLD,
        "box": "largest connected component (as /localize)",
        "thresholds": sweep,
        "methods": results,
        "best": pick(best_name),
        "best_writable": pick(best_w),
        "current": current,
    }


def format_report(report: dict[str, Any]) -> str:
    """Markdown: per-threshold box accuracy per method, then MaxBoxAcc / best threshold / V2 / mean IoU rows."""
    names = list(report["methods"])
    lines = [
        f"model `{report['model']}` · {report['images']} images · {report['pairs']} (image, class) pairs · "
        f"box = largest component · correct = IoU ≥ {report['iou_threshold']:g}",
        "",
        "| threshold | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for i, t in enumerate(report["thresholds"]):
        row = []
        for n in names:
            r = report["methods"][n]
            v = r["box_accuracy"][i]
            row.append(f"**{v:.3f}**" if abs(t - r["best_threshold"]) < 1e-9 else f"{v:.3f}")
        lines.append(f"| {t:g} | " + " | ".join(row) + " |")
    rows = [
        ("**MaxBoxAcc**", lambda r: f"**{r['max_box_acc']:.3f}**"),
        ("best threshold", lambda r: f"{r['best_threshold']:g}"),
        ("mean IoU @ best", lambda r: f"{r['mean_iou']:.3f}"),
        ("MaxBoxAccV2", lambda r: f"{r['max_box_acc_v2']:.3f}"),
        ("BoxAcc @ 0.15", lambda r: f"{r['box_accuracy_at'].get('0.15', float('nan')):.3f}"),
        ("seconds", lambda r: f"{r['seconds']:.1f}"),
    ]
    for label, fmt in rows:
        lines.append(f"| {label} | " + " | ".join(fmt(report["methods"][n]) for n in names) + " |")
    lines.append("")
    b = report["best"]
    lines.append(f"best: {b['method']} at threshold {b['threshold']:g} (MaxBoxAcc {b['max_box_acc']:.3f})")
    bw = report.get("best_writable")
    if bw and bw["method"] != b["method"]:
        lines.append(f"best that /localize can run from models.yaml: {bw['method']} at {bw['threshold']:g} "
                     f"(MaxBoxAcc {bw['max_box_acc']:.3f})")
    cur = report.get("current")
    if cur:
        lines.append(f"current /localize default: {cur['method']} at {cur['threshold']:g} "
                     f"(box accuracy {cur['box_accuracy']:.3f})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- models.yaml


def _format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return json.dumps(text) if not text.replace("-", "").replace("_", "").replace(".", "").isalnum() else text


def _format_value(value: Any, indent: str) -> str:
    """A scalar as :func:`_format_scalar`; a mapping (``method_trust``) as a JSON flow mapping — JSON is YAML — one
    member per line, continuation lines indented past the key as YAML's flow context requires."""
    if not isinstance(value, dict):
        return _format_scalar(value)
    members = [f"{json.dumps(str(k))}: {json.dumps(v, separators=(', ', ': '))}" for k, v in value.items()]
    return "{" + f",\n{indent}    ".join(members) + "}"


def update_registry_entry(path: str | Path, name: str, updates: dict[str, Any]) -> str:
    """Set ``updates`` (e.g. ``{"localize_threshold": 0.6, "localize_method": "gradcam"}``) in the ``models:`` entry
    called ``name`` of a registry file and return the new text (the file is replaced atomically). A mapping value
    (``method_trust``) is written as a JSON flow mapping and may replace an earlier flow mapping of that key.

    The edit is textual, guided by the YAML parser's node positions, so comments, ordering, quoting and every other
    entry stay byte for byte: an existing key's value is replaced in place; a missing key is inserted on its own line,
    at the entry's indentation, after the entry's last single-line ``key: value`` (or after ``name:``). The result is
    re-parsed and must equal the original with exactly these keys changed and validate as a ``ModelSpec``; otherwise
    nothing is written (``ConfigError``). Flow-style entries (``- {name: x, ...}``) are refused.
    """
    import yaml
    from yaml.nodes import MappingNode, ScalarNode, SequenceNode

    from .registry import ModelSpec

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text)
        before = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(root, MappingNode):
        raise ConfigError(f"{p}: expected a top-level 'models:' list")
    models = next((v for k, v in root.value if isinstance(k, ScalarNode) and k.value == "models"), None)
    if not isinstance(models, SequenceNode):
        raise ConfigError(f"{p}: expected a top-level 'models:' list")
    entry, index = None, -1
    for i, node in enumerate(models.value):
        if isinstance(node, MappingNode) and any(isinstance(k, ScalarNode) and k.value == "name"
                                                 and isinstance(v, ScalarNode) and v.value == name
                                                 for k, v in node.value):
            entry, index = node, i
            break
    if entry is None:
        names = [d.get("name") for d in before.get("models", []) if isinstance(d, dict)]
        raise ConfigError(f"{p}: no model named {name!r} (models: {', '.join(map(str, names))})")
    if entry.flow_style:
        raise ConfigError(f"{p}: model {name!r} is written in flow style ({{...}}); edit it by hand")

    edits: list[tuple[int, int, str, int]] = []  # (start, end, replacement, order at equal start) on the original
    missing: list[tuple[str, str]] = []
    keys = {k.value: (k, v) for k, v in entry.value if isinstance(k, ScalarNode)}
    indent = " " * entry.value[0][0].start_mark.column
    for key, value in updates.items():
        rendered = _format_value(value, indent)
        if key in keys:
            _, vnode = keys[key]
            flow_map = isinstance(vnode, MappingNode) and vnode.flow_style and isinstance(value, dict)
            if not isinstance(vnode, ScalarNode) and not flow_map:
                raise ConfigError(f"{p}: model {name!r}: '{key}' is not a scalar; edit it by hand")
            start, end = vnode.start_mark.index, vnode.end_mark.index
            if start == end and start > 0 and text[start - 1] == ":":     # "key:" with no value
                rendered = " " + rendered
            edits.append((start, end, rendered, 0))
        else:
            missing.append((key, rendered))
    if missing:
        first_key = entry.value[0][0]
        indent = " " * first_key.start_mark.column
        anchor = None
        for _key, v in reversed(entry.value):
            if isinstance(v, ScalarNode) and v.start_mark.line == v.end_mark.line and v.style in (None, "'", '"'):
                anchor = v
                break
        if anchor is None:
            anchor = keys["name"][1]
        line_end = text.find("\n", anchor.end_mark.index)
        block = "".join(f"\n{indent}{k}: {v}" for k, v in missing)
        at = len(text) if line_end < 0 else line_end
        edits.append((at, at, block, 1))          # after a value replaced at the same position
    new_text = text
    for start, end, rep, _ in sorted(edits, key=lambda e: (e[0], e[3]), reverse=True):
        new_text = new_text[:start] + rep + new_text[end:]

    # Verify: the same document with exactly these keys changed, and a valid entry.
    try:
        after = yaml.safe_load(new_text)
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{p}: the edit would break the YAML ({reason}); nothing written") from None
    expected = json.loads(json.dumps(before))
    expected["models"][index].update(updates)
    if json.loads(json.dumps(after)) != expected:
        raise ConfigError(f"{p}: the textual edit did not produce the expected document; nothing written")
    try:
        ModelSpec.model_validate(after["models"][index])
    except Exception as exc:  # noqa: BLE001 - pydantic's error, reported in one line
        raise ConfigError(f"{p}: model {name!r} would be invalid: {' '.join(str(exc).split())}") from None
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_text)
        if p.exists():
            os.chmod(tmp, p.stat().st_mode & 0o777)
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return new_text
