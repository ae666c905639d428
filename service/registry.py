"""Model registry: ``models.yaml`` → validated ``ModelSpec`` → warm ``LoadedModel``.

A broken entry fails with one line naming the entry and the field (``ConfigError``), never a long traceback.

(A little over our usual ~500 lines on purpose: the entry schema, its per-task checks and the loading that depends
on them are one contract; loaders and the applicability probe already live in ``loaders`` and ``capabilities``.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from .capabilities import Capabilities, probe
from .engine.detection import DetectorOutputs
from .engine.mil import mil_outputs
from .errors import ConfigError, FieldError, InvalidOption, ModelExecutionError, ModelNotReady, UnknownModel
from .loaders import build_module, resolve_path, weights_digest
from .trust import MethodTrust

log = logging.getLogger("xaas.registry")

#: Patches one image of a mil model may make when its entry sets no max_patches (a 4096² image at 64 px).
DEFAULT_MAX_PATCHES = 4096


class BatchingSpec(BaseModel):
    """Per-model overrides of the global batching settings."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    max_batch_delay_ms: float | None = Field(None, ge=0, le=10_000)
    max_queue: int | None = Field(None, ge=1)


class TokensSpec(BaseModel):
    """The token layout of a transformer's token layers, when it cannot be inferred (register tokens, odd grids)."""

    model_config = ConfigDict(extra="forbid")
    grid: tuple[int, int] = Field(description="[height, width] of the patch grid.")
    prefix: int = Field(1, ge=0, le=64, description="Leading non-patch tokens (class, distillation, registers).")


class ModelSpec(BaseModel):
    """One entry of ``models.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: str
    weights: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | str | None = None
    num_classes: int | None = Field(None, ge=1)
    task: Literal["multiclass", "multilabel", "segmentation", "detection", "mil"] = "multiclass"
    activation: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="Segmentation: softmax over classes per pixel, or an independent sigmoid per class.")
    score_threshold: float = Field(0.5, ge=0, le=1, description="Detection: the least score of a reported detection.")
    max_detections: int = Field(100, ge=1, le=1000, description="Detection: detections kept per image, best first.")
    patch_size: int | None = Field(None, ge=8, le=1024, description="mil: the side of a square patch, in pixels "
                                                                      "of the image at its native resolution.")
    stride: int | None = Field(None, ge=1, le=1024, description="mil: pixels between two patches (default: "
                                                                "patch_size, no overlap); must divide patch_size.")
    max_patches: int | None = Field(None, ge=1, le=65_536, description="mil: the most patches one image may make "
                                                                       "(memory bound; default 4096).")
    spatial_dims: Literal[2, 3] = Field(2, description="3: a volume model ([B, C, D, H, W] inputs).")
    input_size: tuple[int, ...] = Field((224, 224), description="[height, width], or [depth, height, width] for "
                                                                "volume models.")
    window: tuple[float, float] | None = Field(None, description="Volumes: [centre, width] mapped to [0, 1] "
                                                                  "(default: the files' own window, else the range).")
    keep_aspect: bool = Field(False, description="Volumes: keep the physical proportions (voxels x spacing) when "
                                                 "resampling to input_size, padding the rest (default: stretch).")
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])
    channels: Literal[1, 3] = 3
    target_layer: str | None = None
    tokens: TokensSpec | None = None
    device: str = "auto"
    default: bool = False
    enabled: bool = True
    localize_threshold: float | None = Field(None, gt=0, le=1,
                                             description="Calibrated /localize threshold (xaas calibrate).")
    localize_method: str | None = Field(None, description="Default /localize method (gradcam when absent).")
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    method_trust: dict[str, MethodTrust] = Field(
        default_factory=dict, description="Per method, its quality measured on this model's data (xaas evaluate).")

    @field_validator("method_trust")
    @classmethod
    def _trust_methods(cls, v: dict[str, MethodTrust]) -> dict[str, MethodTrust]:
        from .engine import METHODS

        unknown = [k for k in v if k not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown} (valid: {', '.join(METHODS)})")
        return v

    @field_validator("input_size")
    @classmethod
    def _size(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) not in (2, 3):
            raise ValueError("expected [height, width] (or [depth, height, width] for volume models)")
        if not all(4 <= s <= 4096 for s in v) or (len(v) == 2 and min(v) < 8):
            raise ValueError("each side must be between 8 and 4096 pixels (4 for a volume's sides)")
        return v

    @model_validator(mode="after")
    def _volume_size(self) -> ModelSpec:
        if len(self.input_size) != self.spatial_dims:
            raise ValueError(f"input_size has {len(self.input_size)} sides; spatial_dims {self.spatial_dims} needs "
                             f"{self.spatial_dims}")
        if self.spatial_dims == 3 and self.task != "multiclass" and self.task != "multilabel":
            raise ValueError("volume models are classifiers here (multiclass or multilabel)")
        return self

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        kind, _, rest = v.partition(":")
        if kind not in ("torchvision", "torchscript", "export", "python") or not rest:
            raise ValueError("expected 'torchvision:<arch>', 'torchscript:<path>', 'export:<path>.pt2' or "
                             "'python:<module>:<factory>'")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:[0-9]{1,3}", v, re.ASCII):
            return v
        raise ValueError("expected auto, cpu, cuda or cuda:N")

    @field_validator("std")
    @classmethod
    def _std(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError("std values must be > 0")
        return v

    @model_validator(mode="after")
    def _mil_tiling(self) -> ModelSpec:
        tiling = [f for f in ("patch_size", "stride", "max_patches") if getattr(self, f) is not None]
        if self.task != "mil":
            if tiling:
                raise ValueError(f"{', '.join(tiling)} are for task: mil (attention-MIL models over patches)")
            return self
        if self.patch_size is None:
            raise ValueError("task mil needs patch_size (the side of a patch, in pixels)")
        if self.spatial_dims != 2:
            raise ValueError("mil models take 2-D images cut into patches (spatial_dims 2)")
        if "input_size" in self.model_fields_set and tuple(self.input_size) != (self.patch_size, self.patch_size):
            raise ValueError("for a mil model input_size is the patch: leave it out (patch_size sets it)")
        self.stride = self.stride or self.patch_size
        if self.stride > self.patch_size or self.patch_size % self.stride:
            raise ValueError(f"stride {self.stride} must divide patch_size {self.patch_size} (so that overlapping "
                             "patches cover whole cells of the map)")
        self.max_patches = self.max_patches or DEFAULT_MAX_PATCHES
        self.input_size = (self.patch_size, self.patch_size)
        return self

    @model_validator(mode="after")
    def _detection_normalisation(self) -> ModelSpec:
        # torchvision's detectors normalise inside (GeneralizedRCNNTransform): they take [0, 1] pixels.
        if self.task == "detection":
            if "mean" not in self.model_fields_set:
                self.mean = [0.0]
            if "std" not in self.model_fields_set:
                self.std = [1.0]
        return self

    @model_validator(mode="after")
    def _norm_len(self) -> ModelSpec:
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values (channels={self.channels})")
        return self


@dataclass
class LoadedModel:
    """A warm model: the module on its device plus everything needed to feed and read it."""

    spec: ModelSpec
    module: nn.Module
    device: torch.device
    labels: list[str]
    target_layer: str | None  # None for TorchScript models (no hooks, so no CAM methods)
    capabilities: Capabilities
    weights_digest: str  # sha256 of the weights (loaders.weights_digest): part of every result-cache key and ETag
    load_seconds: float = 0.0
    forward_seconds: float = 0.0  # one image's inference forward, measured at warm-up (sizes job steps)

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def config_digest(self) -> str:
        """sha256 of the registry fields besides the weights that shape an answer (labels, task, preprocessing,
        target layer), so a result cached or tagged under one models.yaml is never served under an edited one."""
        s = self.spec
        fields = [self.labels, s.task, list(s.input_size), s.mean, s.std, s.channels, self.target_layer]
        if s.spatial_dims == 3:
            fields += [s.spatial_dims, list(s.window) if s.window else None, s.keep_aspect]
        if s.task == "detection":
            fields += [s.score_threshold, s.max_detections]
        if s.task == "mil":
            fields += [s.patch_size, s.stride, s.max_patches]
        return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def input_range(self) -> tuple[list[float], list[float]]:
        """Per-channel values that pixel intensities 0 and 1 take after normalisation (for baselines)."""
        c = self.spec.channels
        mean = self.spec.mean * (c if len(self.spec.mean) == 1 else 1)
        std = self.spec.std * (c if len(self.spec.std) == 1 else 1)
        return [-m / s for m, s in zip(mean, std)], [(1 - m) / s for m, s in zip(mean, std)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)``, or ``(C, D, H, W)`` for a volume model."""
        return (self.spec.channels, *self.spec.input_size)

    @property
    def volumetric(self) -> bool:
        return self.spec.spatial_dims == 3

    def class_index(self, target: int | str) -> int:
        """Resolve a class index (an int, or a string of ASCII digits) or a label; ``InvalidOption`` names a bad one.

        Only ASCII digits make an index: ``"¹"`` or ``"٣"`` are labels (``str.isdigit`` is true for them, and
        ``int()`` reads some), so they are looked up, and refused, as labels."""
        if isinstance(target, int) and not isinstance(target, bool):
            idx = target
        elif isinstance(target, str) and _INDEX.fullmatch(target.strip()):
            idx = int(target.strip())
        else:
            try:
                return self.labels.index(target)  # type: ignore[arg-type]
            except ValueError:
                hint = ", ".join(self.labels[:10]) + (" ..." if self.num_classes > 10 else "")
                shown = repr(target) if len(repr(target)) <= 60 else repr(target)[:57] + "..."
                raise InvalidOption(f"target {shown} is not a label of model '{self.name}' (labels: {hint})",
                                    errors=[FieldError("target", "unknown label")]) from None
        if not 0 <= idx < self.num_classes:
            raise InvalidOption(f"target {idx} is out of range: model '{self.name}' has classes "
                                f"0..{self.num_classes - 1}",
                                errors=[FieldError("target", "class index out of range")])
        return idx


_INDEX = re.compile(r"-?[0-9]{1,18}", re.ASCII)


def read_registry_file(path: Path) -> list[ModelSpec]:
    """Parse and validate ``models.yaml``; disabled entries are dropped. Raises ``ConfigError``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: models file not found (set XAAS_MODELS or --models)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ConfigError(f"{path}: expected a top-level 'models:' list")
    specs: list[ModelSpec] = []
    for i, entry in enumerate(raw["models"]):
        label = f"{path}: models[{i}]" + (f" ({entry.get('name')!r})" if isinstance(entry, dict) and entry.get("name")
                                          else "")
        if not isinstance(entry, dict):
            raise ConfigError(f"{label}: expected a mapping")
        try:
            spec = ModelSpec.model_validate(entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "entry"
            raise ConfigError(f"{label}, field '{where}': {err['msg']}") from None
        if spec.enabled:
            specs.append(spec)
    names = [s.name for s in specs]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{path}: duplicate model name(s): {', '.join(sorted(dupes))}")
    if not specs:
        raise ConfigError(f"{path}: no enabled model")
    if sum(s.default for s in specs) > 1:
        raise ConfigError(f"{path}: more than one model has 'default: true'")
    return specs


def resolve_device(requested: str, policy: str) -> torch.device:
    if policy == "cpu":
        return torch.device("cpu")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"field 'device': {requested} requested but CUDA is not available")
    return dev


def read_labels(spec: ModelSpec, base_dir: Path) -> list[str] | None:
    if spec.labels is None:
        return None
    if isinstance(spec.labels, list):
        return [str(x) for x in spec.labels]
    path = resolve_path(spec.labels, base_dir, "labels")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        import json

        data = json.loads(text)
        data = data.get("classes", data) if isinstance(data, dict) else data
        return [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_model(spec: ModelSpec, *, base_dir: Path, device_policy: str = "auto") -> LoadedModel:
    """Build, freeze, move and warm up one model. Raises ``ConfigError`` prefixed with the model name."""
    t0 = time.perf_counter()
    try:
        device = resolve_device(spec.device, device_policy)
        labels = read_labels(spec, base_dir)
        if labels is not None and spec.num_classes is not None and len(labels) != spec.num_classes:
            raise ConfigError(f"field 'labels': {len(labels)} labels but num_classes is {spec.num_classes}")
        num_classes = spec.num_classes or (len(labels) if labels else None)
        module = build_module(spec.source, spec.weights, spec.args, num_classes=num_classes, base_dir=base_dir)
        if spec.task == "detection":
            module = DetectorOutputs(module, spec.max_detections)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        digest = weights_digest(spec.source, module, base_dir)  # on the CPU, before the move: no device copies
        module.to(device)
        out_classes, forward_seconds = _warm_up(module, spec, device)
        if num_classes is not None and out_classes != num_classes:
            raise ConfigError(f"field 'num_classes': the model outputs {out_classes} classes, "
                              f"the entry says {num_classes}")
        if labels is None:
            labels = [str(i) for i in range(out_classes)]
        target_layer, reason = _target_layer(module, spec, out_classes)
        capabilities = probe(module, input_shape=(spec.channels, *spec.input_size), task=spec.task,
                             target_layer=target_layer, target_layer_reason=reason)
    except ConfigError as exc:
        raise ConfigError(f"model '{spec.name}': {exc}") from None
    return LoadedModel(spec, module, device, labels, target_layer, capabilities, digest,
                       load_seconds=time.perf_counter() - t0, forward_seconds=forward_seconds)


def _warm_up(module: nn.Module, spec: ModelSpec, device: torch.device) -> tuple[int, float]:
    """``(classes, seconds per image)``: a first forward checks the output, a second one is timed (the first pays
    one-off costs: allocator, kernel selection)."""
    if spec.task == "mil":
        return _warm_up_mil(module, spec, device)
    dummy = torch.zeros(2, spec.channels, *spec.input_size, device=device)
    try:
        with torch.inference_mode():
            out = module(dummy)
            t0 = time.perf_counter()
            module(dummy)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - t0) / 2
    except Exception as exc:  # noqa: BLE001
        if spec.task == "detection":
            raise ConfigError("field 'source': a detection model must follow torchvision's detection API (a list of "
                              "[C, H, W] images in, a list of {'boxes', 'labels', 'scores'} out); warm-up on "
                              f"{tuple(dummy.shape)} failed: {exc}") from None
        raise ConfigError(f"field 'input_size': warm-up forward pass on {tuple(dummy.shape)} failed: {exc}") from None
    if spec.task == "detection":
        return _detector_classes(module), seconds
    if spec.task == "segmentation" and isinstance(out, dict):
        out = out.get("out")   # torchvision's segmentation models
    wanted = 4 if spec.task == "segmentation" else 2
    if not isinstance(out, torch.Tensor) or out.ndim != wanted or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        layout = "[batch, classes, height, width]" if wanted == 4 else "[batch, classes]"
        raise ConfigError(f"field 'source': a {spec.task} model must return logits {layout}, got {shape}")
    return int(out.shape[1]), seconds


def _warm_up_mil(module: nn.Module, spec: ModelSpec, device: torch.device) -> tuple[int, float]:
    """A mil model on two bags of four patches: its output must follow the protocol of :mod:`service.engine.mil`."""
    bags, count = torch.zeros(2, 4, spec.channels, *spec.input_size, device=device), 4
    try:
        with torch.inference_mode():
            out = mil_outputs(module(bags), 2, count)
            t0 = time.perf_counter()
            module(bags)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - t0) / 2   # per bag of four patches
    except ModelExecutionError as exc:
        raise ConfigError(f"field 'source': {exc.detail}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError("field 'source': a mil model takes bags [B, N, C, p, p] (see README 'Attention-MIL "
                          f"models'); warm-up on {tuple(bags.shape)} failed: {exc}") from None
    return int(out.logits.shape[1]), seconds


def _detector_classes(module: DetectorOutputs) -> int:
    """The class count of a torchvision detector (background included, as its labels count), from its head."""
    for path in ("roi_heads.box_predictor.cls_score.out_features", "head.classification_head.num_classes"):
        value: Any = module
        for attr in path.split("."):
            value = getattr(value, attr, None)
        if isinstance(value, int):
            return value
    raise ConfigError("field 'num_classes': cannot tell this detector's class count; set num_classes or labels")


def _detection_layer(module: nn.Module, shape: tuple[int, ...]) -> tuple[str, str] | None:
    """A detector's default CAM layer: the last map of its backbone's body (before the FPN mixes the scales), else
    of its backbone; the heads after it see one anchor or RoI at a time, so their maps are no image map."""
    from .engine.layers import trace_layers

    infos = [i for i in trace_layers(module, shape) if i.preferred]
    for prefix in ("backbone.body.", "backbone."):
        found = [i for i in infos if i.name.startswith(prefix)]
        if found:
            return found[-1].name, f"the last spatial map of the detector's {prefix[:-1]} (before the heads)"
    return None


def _is_scripted(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def _target_layer(module: nn.Module, spec: ModelSpec, num_classes: int) -> tuple[str | None, str | None]:
    """``(layer, reason)``: the entry's layer, else the automatic choice with the reason it gives."""
    from .engine.layers import choose_target_layer, explainable_layers, set_token_layout

    if _is_scripted(module):
        if spec.target_layer is not None:
            raise ConfigError("field 'target_layer': TorchScript models cannot be hooked, so they have no target layer")
        return None, "TorchScript models cannot be hooked"
    if spec.task == "mil":
        return _mil_target_layer(module, spec)
    shape = (spec.channels, *spec.input_size)
    if spec.tokens is not None:
        set_token_layout(module, spec.tokens.grid, spec.tokens.prefix)
    if spec.target_layer is None:
        picked = _detection_layer(module, shape) if spec.task == "detection" else None
        if picked is not None:
            return picked
        try:
            return choose_target_layer(module, shape, num_classes=num_classes)
        except InvalidOption as exc:
            return None, exc.detail   # no map at all: only the hook-free methods apply
    valid = explainable_layers(module, shape)
    if spec.target_layer not in valid:
        raise ConfigError(f"field 'target_layer': {spec.target_layer!r} is not a layer with a spatial or token output "
                          f"(e.g. {', '.join(valid[-5:])})")
    return spec.target_layer, "set in the registry entry (target_layer)"


def _mil_target_layer(module: nn.Module, spec: ModelSpec) -> tuple[str | None, str | None]:
    """A mil model's ``mil-gradcam`` layer: the entry's (one 4-D map per patch), else the last such map larger than
    1 x 1 seen in a probe forward of a two-patch bag; ``None`` when its encoder has none."""
    from .engine.mil_cam import patch_layers

    found = patch_layers(module, (spec.channels, *spec.input_size))
    if spec.target_layer is not None:
        if spec.target_layer not in {name for name, _ in found}:
            shown = ", ".join(name for name, _ in found[-5:]) or "none"
            raise ConfigError(f"field 'target_layer': {spec.target_layer!r} is not a layer of the patch encoder with "
                              f"one [K, h, w] map per patch (e.g. {shown})")
        return spec.target_layer, "set in the registry entry (target_layer)"
    maps = [name for name, shape in found if shape[1] * shape[2] > 1]
    if maps:
        return maps[-1], "the last per-patch map of the patch encoder (mil-gradcam; attention-mil needs no layer)"
    return None, ("a mil model is explained by its attention over the patches (attention-mil); its encoder has no "
                  "per-patch map for mil-gradcam")


class ModelRegistry:
    """The set of warm models, loaded once at start-up; read-only afterwards (so no lock on lookups)."""

    def __init__(self, specs: list[ModelSpec], *, base_dir: Path, device_policy: str = "auto"):
        self.specs = specs
        self.base_dir = base_dir
        self.device_policy = device_policy
        self._models: dict[str, LoadedModel] = {}
        self.state: Literal["loading", "ready", "failed"] = "loading"
        self.error: str | None = None
        self._ready = threading.Event()
        self.default_name = next((s.name for s in specs if s.default), specs[0].name)

    @classmethod
    def from_file(cls, path: Path, *, device_policy: str = "auto") -> ModelRegistry:
        path = Path(path).resolve()
        return cls(read_registry_file(path), base_dir=path.parent, device_policy=device_policy)

    def load_all(self) -> None:
        """Load every model; on failure record the one-line reason and re-raise ``ConfigError``."""
        try:
            for spec in self.specs:
                model = load_model(spec, base_dir=self.base_dir, device_policy=self.device_policy)
                self._models[spec.name] = model
                log.info("model loaded", extra={"model": spec.name, "device": str(model.device),
                                                "seconds": round(model.load_seconds, 3)})
        except ConfigError as exc:
            self.state, self.error = "failed", str(exc)
            raise
        except Exception as exc:
            self.state, self.error = "failed", f"{exc.__class__.__name__}: {exc}"
            raise ConfigError(self.error) from exc
        self.state = "ready"
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def get(self, name: str | None) -> LoadedModel:
        name = name or self.default_name
        if name not in self.names():
            raise UnknownModel(name, self.names())
        model = self._models.get(name)
        if model is None:
            raise ModelNotReady(name)
        return model

    def loaded(self) -> list[LoadedModel]:
        return [self._models[n] for n in self.names() if n in self._models]
