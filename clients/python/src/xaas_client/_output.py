"""What ``xaas-client`` prints: aligned tables and one-line summaries of typed results, and a progress bar on
stderr. Standard library only (no tqdm, no tabulate), so the command line runs wherever the client installs."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = [
    "Progress",
    "activations_table",
    "explain_table",
    "filters_summary",
    "format_table",
    "impression_summary",
    "localize_table",
    "model_summary",
    "models_table",
    "predict_table",
    "stored_summary",
]


class Progress:
    """A minimal progress bar on stderr, drawn only on a terminal (no tqdm dependency, no noise in logs/pipes)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = total > 1 and self.stream.isatty()

    def update(self, done: int, label: str = "") -> None:
        if self.enabled:
            filled = round(24 * done / self.total)
            self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total} {label}"[:200])
            self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def format_table(title: str, header: list[str], rows: list[list[str]], *,
                 text_columns: frozenset[str] = frozenset({"label", "map"})) -> str:
    """``title`` over an aligned table; ``text_columns`` are left-aligned, the others (numbers) right-aligned."""
    if not rows:
        return f"{title}\n  (none)"
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(cell.ljust(width) if name in text_columns else cell.rjust(width)
                                for name, cell, width in zip(header, cells, widths, strict=True)).rstrip()

    return "\n".join([title, line(header), *map(line, rows)])


def size(result: Any) -> str:
    return f"{result.image.width}x{result.image.height}"


def predict_table(name: str, result: Any) -> str:
    title = f"{name}: {result.model} ({result.task}), {size(result)}"
    if any(p.pixel_fraction is not None for p in result.predictions):  # a segmentation model's statistics
        return format_table(title, ["index", "label", "score", "pixels", "mean p"],
                            [[str(p.index), p.label, f"{p.score:.4f}", f"{p.pixel_fraction or 0:.4f}",
                              f"{p.mean_probability or 0:.4f}"] for p in result.predictions])
    if any(p.box is not None for p in result.predictions):  # a detector's detections
        return format_table(title, ["id", "index", "label", "score", "x0", "y0", "x1", "y1"],
                            [[str(p.id), str(p.index), p.label, f"{p.score:.4f}", *(f"{v:.1f}" for v in p.box)]
                             for p in result.predictions])
    return format_table(title, ["index", "label", "score"],
                        [[str(p.index), p.label, f"{p.score:.4f}"] for p in result.predictions])


def explain_table(name: str, result: Any) -> str:
    layer = f", layer {result.layer}" if result.layer else ""
    rows = [[str(e.index), e.label, f"{e.score:.4f}", "empty" if e.empty else ("non-finite" if e.nonfinite else "")]
            for e in result.explanations]
    if any(e.detection is not None for e in result.explanations):
        rows = [[str(e.detection.id) if e.detection else "", *row] for e, row in zip(result.explanations, rows)]
        return format_table(f"{name}: {result.method} on {result.model}{layer}, {size(result)}",
                            ["detection", "index", "label", "score", "map"], rows)
    return format_table(f"{name}: {result.method} on {result.model}{layer}, {size(result)}",
                        ["index", "label", "score", "map"], rows)


def localize_table(name: str, result: Any) -> str:
    title = f"{name}: {result.method} boxes on {result.model} (threshold {result.threshold:g}), {size(result)}"
    if result.mask_boxes is None:
        return format_table(title, ["index", "label", "score", "x0", "y0", "x1", "y1"],
                            [[str(b.index), b.label, f"{b.score:.4f}", *map(str, b.box)] for b in result.boxes])
    # Segmentation: the explanation's boxes and the predicted mask's, one table, told apart by "from".
    rows = [[str(b.index), b.label, "heatmap", f"{b.score:.4f}", *map(str, b.box)] for b in result.boxes]
    rows += [[str(m.index), m.label, "mask", f"{m.mean_probability:.4f}", *map(str, m.box)] for m in result.mask_boxes]
    return format_table(title, ["index", "label", "from", "score", "x0", "y0", "x1", "y1"], rows)


def activations_table(result: Any) -> str:
    c, h, w = result.shape
    return format_table(f"{result.layer} of {result.model}: {c} channels of {h}x{w}",
                        ["channel", "mean", "max", "positive"],
                        [[str(s.index), f"{s.mean:.4f}", f"{s.max:.4f}", f"{s.fraction_positive:.2f}"]
                         for s in result.channels])


def filters_summary(result: Any) -> str:
    kh, kw = result.kernel_size
    return (f"{result.layer} of {result.model}: {result.count} filters {kh}x{kw} over {result.in_channels} "
            f"input channel(s), shown {result.mode}; conv layers: {', '.join(result.conv_layers)}")


def stored_summary(stored: list[str], asked: bool) -> str:
    if not stored:
        return "stored nothing in the PACS" + ("" if asked else " (add --store)")
    lines = [f"stored {len(stored)} object(s) in the PACS (SOP Instance UIDs):", *(f"  {uid}" for uid in stored)]
    return "\n".join(lines)


def impression_summary(result: Any) -> str:
    prob = f", probability {result.probability:.4f}" if result.probability is not None else ""
    steps = f" after {result.progress.steps} steps" if result.progress else ""
    return f"impression of {result.label!r} (class {result.target}) on {result.model}: {result.status}{steps}{prob}"


def model_input(model: Any) -> str:
    """How a model reads its image: the resize target, or a mil model's tiling at native resolution."""
    if model.patch_size is not None:
        limit = f", at most {model.max_patches} per image" if model.max_patches is not None else ""
        return f"native size, {model.patch_size} px patches at stride {model.stride}{limit}"
    text = "x".join(map(str, model.input_size))
    return f"{text} volume{' (aspect kept)' if model.keep_aspect else ''}" if len(model.input_size) == 3 else text


def models_table(models: list[Any]) -> str:
    """``GET /models``: one row per model; the default one starred."""
    return format_table("models (* default)", ["model", "task", "classes", "input", "device"],
                        [[f"{m.name}{' *' if m.default else ''}", m.task, str(m.num_classes), model_input(m), m.device]
                         for m in models], text_columns=frozenset({"model", "task", "input", "device"}))


def model_summary(model: Any) -> str:
    """``GET /models/{name}``: task, classes, input (a mil model's tiling), layer, methods, and the refused methods
    with the first one's reason (all of them: ``--json``)."""
    shown = ", ".join(model.labels[:8]) + (", ..." if len(model.labels) > 8 else "")
    lines = [f"{model.name}: {model.task}, {model.num_classes} classes ({shown}), device {model.device}"
             f"{', default' if model.default else ''}",
             f"  input: {model_input(model)}" + (f", {model.channels} channel(s)" if model.channels else "")]
    if model.target_layer:
        reason = f" ({model.target_layer_reason})" if model.target_layer_reason else ""
        lines.append(f"  target layer: {model.target_layer}{reason}")
    elif model.target_layer_reason:
        lines.append(f"  target layer: none ({model.target_layer_reason})")
    lines.append(f"  methods: {', '.join(model.methods) or '(none)'}")
    if model.refused:
        first, reason = next(iter(model.refused.items()))
        lines += [f"  refused ({len(model.refused)}): {', '.join(model.refused)}", f"    {first}: {reason}"]
    return "\n".join(lines)
