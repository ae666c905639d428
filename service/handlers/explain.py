"""``/explain/{method}``: validate cheaply, answer from the result cache or queue the explanation, render the maps.

:func:`plan` checks everything that needs no model work (method parameters, model, method/layer fit, targets) so a
bad request is refused before its image is decoded; :func:`map_key` names the maps the plan asks for (the result
cache's key, :mod:`service.cache`); :func:`run` answers from the cache or decodes and queues; :func:`explain`
renders. The ``/localize`` handler reuses :func:`plan`, :func:`map_key` and :func:`run`, so both endpoints share
cached maps.

Rendering options (``outputs``, ``colormap``, ``alpha``) are not part of the map key: they only shape the response,
so they are folded into its entity tag instead. A client that already holds the tagged response (``If-None-Match``)
gets "not modified" before anything is decoded or computed, whether or not the maps are still cached: the tag is a
digest of every input of a deterministic computation, so a match means the client's copy is the answer (equivalent,
hence a weak tag: a recomputation may differ in the last float bits).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api.schemas import (
    ExplainedDetection,
    ExplainOptions,
    ExplainResponse,
    Explanation,
    ImageInfo,
    ImageOptions,
    JobAccepted,
)
from ..cache import CachedMaps, MapKey, entity_tag
from ..dicom_outputs import DICOM_OUTPUTS, build_outputs, read_source, refuse_non_dicom
from ..engine import Explainer, get_method, validate_params
from ..engine.localize import DEFAULT_THRESHOLD
from ..errors import DeadlineExceeded, FieldError, InvalidOption, XaasError
from ..imaging import DecodedImage, rgb8
from ..imaging.volume import Volume, VolumeGeometry, decode_volume, nifti_bytes
from ..inference import TargetMap
from ..registry import LoadedModel
from ..rendering import encode_raw, map_stats, render_heatmap, render_overlay, validate_overlay_options
from ..rendering_volume import AXES, map_on_grid, montage_png, slice_png
from ..runtime import Runtime
from . import CallInfo, Conditional, HeldTags, untagged
from .detections import DetectionRequest, box_to_original, parse_detection
from .regions import RegionRequest, parse_region

__all__ = ["ExplanationPlan", "ExplanationRun", "explain", "explain_async", "image_digest", "map_key",
           "method_param_names", "plan", "render_response", "run", "submit"]

#: What a volume's explanation can be rendered as.
VOLUME_OUTPUTS = ("heatmap", "raw", "nifti", "dicom-pm", "dicom-seg")

ASYNC_HINT = "resend it with the header 'Prefer: respond-async' to run it as a job (202, then poll GET /jobs/{id})"

#: Bodies up to this size are hashed on the event loop; larger ones in the thread pool (hashlib releases the GIL).
_INLINE_HASH_BYTES = 1 << 20


def method_param_names(method: str | None) -> frozenset[str]:
    """The options a method accepts besides the shared ones (empty for an unknown method: its 404 comes later)."""
    try:
        return frozenset(p.name for p in get_method(method or "gradcam").params)
    except XaasError:
        return frozenset()


@dataclass(frozen=True)
class ExplanationPlan:
    """A validated explanation request: everything but the image."""

    model: LoadedModel
    explainer: Explainer
    params: dict[str, Any]
    layer: str | None          # the layer the request named (None = the model's target layer)
    targets: list[int]
    top_k: int
    min_probability: float | None
    timeout: float
    region: RegionRequest | None = None   # segmentation models: where each class is explained
    detection: DetectionRequest | None = None   # detection models: the detection explained (else the top_k)

    @property
    def explained_layer(self) -> str | None:
        """The layer whose map is explained (CAM methods), else None."""
        return (self.layer or self.model.target_layer) if self.explainer.uses_layer else None


@dataclass(frozen=True)
class ExplanationRun:
    """The maps of one explanation and what rendering needs: the original size, and the pixels when decoded (always
    on a miss; on a cache hit only when the caller asked for them)."""

    plan: ExplanationPlan
    maps: tuple[TargetMap, ...]
    width: int
    height: int
    image: DecodedImage | Volume | None
    cache_hit: bool
    volume: VolumeGeometry | None = None   # volumes: the source's voxel grid, for rendering without the voxels

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def plan(runtime: Runtime, explainer: Explainer, opts: ImageOptions, extras: Mapping[str, Any], call: CallInfo, *,
         min_probability: float | None = None, all_likely: bool = False) -> ExplanationPlan:
    """Validate without model work. ``all_likely``: without explicit targets, explain every class whose probability
    reaches ``min_probability`` (multi-label localization) instead of the ``top_k`` best."""
    params = validate_params(explainer, extras)
    model = runtime.model(opts.model)
    call.model, call.method = model.name, explainer.name
    layer = getattr(opts, "layer", None) if explainer.uses_layer else None
    caps = model.capabilities
    caps.check_method(model.name, explainer.name, layer=layer)
    if layer is not None:
        caps.check_layer(model.name, layer, patches=model.task == "mil")
    targets = runtime.resolve_targets(model, opts.target)
    region = parse_region(getattr(opts, "region", None), model.task)
    detection = parse_detection(getattr(opts, "detection", None), model.task, targets,
                                box_regression=bool(getattr(opts, "box_regression", False)))
    if model.task == "detection":
        # A detector's targets are detections: the label (if any) went into the detection request; without one the
        # top_k most confident detections that reach the entry's score threshold are explained.
        targets = []
        min_probability = model.spec.score_threshold
        cap = min(model.spec.max_detections, runtime.settings.max_targets)
        top_k = min(opts.top_k or 1, cap)
        return ExplanationPlan(model, explainer, params, layer, targets, top_k, min_probability,
                               runtime.timeout(opts.timeout), detection=detection)
    cap = min(model.num_classes, runtime.settings.max_targets)
    top_k = cap if all_likely else min(opts.top_k or 1, cap)
    return ExplanationPlan(model, explainer, params, layer, targets, top_k,
                           min_probability if all_likely else None, runtime.timeout(opts.timeout), region)


async def image_digest(runtime: Runtime, data: bytes) -> str:
    """sha256 of the uploaded bytes; large bodies are hashed in the thread pool so the event loop never stalls."""
    if len(data) <= _INLINE_HASH_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await runtime.in_thread(lambda: hashlib.sha256(data).hexdigest())


async def map_key(runtime: Runtime, plan: ExplanationPlan, data: bytes, *, frame: int | None) -> MapKey:
    """The result-cache key of the maps ``plan`` asks for on this image (see :class:`service.cache.MapKey`).

    Explicit targets make ``top_k`` irrelevant (the engine ignores it then), so it is left out: ``/explain`` and
    ``/localize`` asking for the same classes share an entry whatever their ``top_k`` defaults."""
    model, explicit = plan.model, tuple(plan.targets)
    return MapKey(model=model.name, weights=model.weights_digest, config=model.config_digest,
                  image=await image_digest(runtime, data), frame=frame or 0, method=plan.explainer.name,
                  params=tuple(sorted(plan.params.items())), layer=plan.explained_layer, targets=explicit,
                  top_k=None if explicit else plan.top_k, min_probability=None if explicit else plan.min_probability,
                  region=plan.region.key() if plan.region is not None else None,
                  detection=plan.detection.key() if plan.detection is not None else None)


async def run(runtime: Runtime, plan: ExplanationPlan, data: bytes, key: MapKey, *, frame: int | None, call: CallInfo,
              pixels: bool = False) -> ExplanationRun:
    """The maps from the result cache — no model work, and no decoding unless ``pixels`` (an overlay) needs the
    image — or else decode, queue the explanation on the model's worker and store its maps."""
    cached = runtime.cache.get(key)
    if cached is not None:
        call.cache = "hit"
        image = await runtime.decode(data, frame=frame) if pixels else None
        return ExplanationRun(plan, cached.maps, cached.width, cached.height, image, cache_hit=True,
                              volume=cached.volume)
    call.cache = "miss"
    image, tensor = await runtime.load_image(plan.model, data, frame=frame)
    try:
        maps = await runtime.explain(plan.model, tensor, method=plan.explainer.name, params=plan.params,
                                     layer=plan.layer, targets=plan.targets, top_k=plan.top_k,
                                     min_probability=plan.min_probability, timeout=plan.timeout,
                                     region=_bound(plan, image), detection=_bound_detection(plan, image))
    except DeadlineExceeded as exc:  # past its deadline: say how to run it as a job instead
        raise DeadlineExceeded(f"{exc.detail}; {ASYNC_HINT}") from None
    call.rows = len(maps)
    entry = CachedMaps.freeze(maps, image.width, image.height, _geometry(image))
    runtime.cache.put(key, entry)
    return ExplanationRun(plan, entry.maps, entry.width, entry.height, image, cache_hit=False, volume=entry.volume)


async def submit(runtime: Runtime, plan: ExplanationPlan, data: bytes, key: MapKey, *, frame: int | None, kind: str,
                 render: Callable[[ExplanationRun], dict[str, Any]]) -> JobAccepted:
    """Decode now (a broken image is refused at once), then run the explanation as a job whose result is
    ``render(run)`` — exactly the body of the synchronous call. Its maps go into the result cache; maps already
    cached make the job done at its first slice."""
    image, tensor = await runtime.load_image(plan.model, data, frame=frame)
    cached = runtime.cache.get(key)

    def finish(maps: list[TargetMap]) -> dict[str, Any]:
        entry = cached or CachedMaps.freeze(maps, image.width, image.height, _geometry(image))
        if cached is None:
            runtime.cache.put(key, entry)
        return render(ExplanationRun(plan, entry.maps, entry.width, entry.height, image, cache_hit=cached is not None,
                                     volume=entry.volume))

    job = runtime.submit_explanation(
        plan.model, tensor, method=plan.explainer.name, params=plan.params, layer=plan.layer, targets=plan.targets,
        top_k=plan.top_k, min_probability=plan.min_probability, kind=kind, meta={"method": plan.explainer.name},
        finish=finish, ready=list(cached.maps) if cached is not None else None, region=_bound(plan, image),
        detection=_bound_detection(plan, image))
    return JobAccepted(id=job.id, status=job.status)


def _geometry(image: DecodedImage | Volume) -> VolumeGeometry | None:
    return image.geometry if isinstance(image, Volume) else None


def _bound(plan: ExplanationPlan, image: DecodedImage) -> Any:
    """The plan's segmentation region checked against the decoded image (None for classifiers)."""
    return plan.region.bind(image.width, image.height) if plan.region is not None else None


def _bound_detection(plan: ExplanationPlan, image: DecodedImage) -> Any:
    """The plan's detection checked against the decoded image, its box in model-input pixels (None: top_k)."""
    if plan.detection is None:
        return None
    return plan.detection.bind(image.width, image.height, plan.model.spec.input_size)


def explained_detection(result: ExplanationRun, item: TargetMap) -> ExplainedDetection | None:
    """A row's detection for the response, its box in original pixels."""
    if item.detection is None:
        return None
    box = box_to_original(item.detection.box, result.width, result.height, result.plan.model.spec.input_size)
    return ExplainedDetection(id=item.detection.id, box=box)


def rendering_options(opts: ExplainOptions) -> dict[str, Any]:
    """What shapes an ``/explain`` body besides the maps: the outputs (as a set: a body's fields have a fixed order),
    and the colour map and opacity only when an overlay is drawn."""
    options: dict[str, Any] = {"endpoint": "explain", "outputs": sorted(opts.outputs)}
    if _needs_overlay(opts):
        options.update(colormap=opts.colormap, alpha=float(opts.alpha))
    if "dicom-seg" in opts.outputs:
        options.update(threshold=opts.threshold, segmentation_type=opts.segmentation_type)
    if opts.slice is not None or opts.axis != "axial":   # volumes' slices; absent otherwise, so 2-D tags stay
        options.update(axis=opts.axis, slice=opts.slice)
    return options


def _needs_overlay(opts: ExplainOptions) -> bool:
    return "overlay" in opts.outputs or "dicom-sc" in opts.outputs


def _dicom_kinds(opts: ExplainOptions) -> list[str]:
    return [kind for kind in opts.outputs if kind in DICOM_OUTPUTS]


def _validate_outputs(opts: ExplainOptions, data: bytes, model: LoadedModel) -> None:
    """Checks needing no model work: overlay options, and a DICOM input for DICOM outputs (a volume's series is
    checked once decoded: it may come as a zip)."""
    if _needs_overlay(opts):
        validate_overlay_options(opts.colormap, opts.alpha)
    if _dicom_kinds(opts) and not model.volumetric:
        refuse_non_dicom(data)


async def explain(runtime: Runtime, method: str, data: bytes, opts: ExplainOptions, extras: Mapping[str, Any],
                  call: CallInfo, held: HeldTags | None = None) -> Conditional[ExplainResponse]:
    """The tagged response; "not modified" when ``held`` (the client's ``If-None-Match``) names its tag — answered
    before any decoding or model work — or is ``*`` (after the work: only a valid request has an answer to hold).
    With DICOM outputs the answer is untagged and always a body."""
    explainer = get_method(method)
    validated = plan(runtime, explainer, opts, extras, call)
    check_volume_options(validated.model, opts)
    _validate_outputs(opts, data, validated.model)
    key = await map_key(runtime, validated, data, frame=opts.frame)
    if _dicom_kinds(opts):  # new UIDs in every answer: no entity tag, If-None-Match ignored
        result = await run(runtime, validated, data, key, frame=opts.frame, call=call, pixels=_needs_overlay(opts))
        return untagged(await runtime.in_thread(render_response, result, opts, data), result.cache_hit)
    etag = entity_tag(key, rendering_options(opts))
    if held is not None and held.names(etag):
        call.cache = "not-modified"
        return Conditional(etag)
    any_answer = held is not None and held.any  # "*": not modified once the answer exists, known after the work
    result = await run(runtime, validated, data, key, frame=opts.frame, call=call,
                       pixels=_needs_overlay(opts) and not any_answer)
    if any_answer:
        return Conditional(etag, cache_hit=result.cache_hit)
    body = await runtime.in_thread(render_response, result, opts, data)
    return Conditional(etag, body, cache_hit=result.cache_hit)


async def explain_async(runtime: Runtime, method: str, data: bytes, opts: ExplainOptions, extras: Mapping[str, Any],
                        call: CallInfo) -> JobAccepted:
    """``/explain/{method}`` with ``Prefer: respond-async``: the same validation, then a job."""
    explainer = get_method(method)
    validated = plan(runtime, explainer, opts, extras, call)
    check_volume_options(validated.model, opts)
    _validate_outputs(opts, data, validated.model)
    key = await map_key(runtime, validated, data, frame=opts.frame)
    return await submit(runtime, validated, data, key, frame=opts.frame, kind="explanation",
                        render=lambda result: render_response(result, opts, data).model_dump(mode="json",
                                                                                      exclude_unset=True))


def render_response(result: ExplanationRun, opts: ExplainOptions, data: bytes | None = None) -> ExplainResponse:
    """The response body; runs in the thread pool (PNG encoding never blocks the event loop or the worker).
    ``data`` (the uploaded bytes) is needed for DICOM outputs: their source data set is parsed from it."""
    plan = result.plan
    if result.volume is not None:
        return ExplainResponse(model=plan.model.name, method=plan.explainer.name, layer=plan.explained_layer,
                               image=volume_info(result.volume), explanations=_render_volume(result, opts, data))
    return ExplainResponse(model=plan.model.name, method=plan.explainer.name, layer=plan.explained_layer,
                           image=ImageInfo(width=result.width, height=result.height),
                           explanations=_render_all(result, opts, data))


def volume_info(volume: VolumeGeometry) -> ImageInfo:
    return ImageInfo(width=volume.width, height=volume.height, depth=volume.depth,
                     spacing=[round(s, 6) for s in volume.spacing])


def _render_volume(result: ExplanationRun, opts: ExplainOptions, data: bytes | None) -> list[Explanation]:
    """Volumes: the map resampled onto the source's voxels; a montage PNG of its most relevant slices (or the one
    ``slice``), NIfTI with the source's placement, the raw map at its native grid, and from a DICOM series
    multi-frame Parametric Map / Segmentation objects referencing every source slice."""
    volume = result.volume
    assert volume is not None
    labels = result.plan.model.labels
    kinds = _dicom_kinds(opts)
    slices = _volume_slices(result, data) if kinds else None
    out = []
    for item in result.maps:
        stats = map_stats(item.heatmap)
        fields: dict[str, Any] = {}
        needs_grid = {"heatmap", "nifti"} & set(opts.outputs) or kinds
        grid = map_on_grid(item.heatmap, volume.size, volume.content) if needs_grid else None
        if "heatmap" in opts.outputs:
            assert grid is not None
            if opts.slice is not None:
                count = grid.shape[AXES.index(opts.axis)]
                if opts.slice >= count:   # known only once the volume is decoded: its own size, not the model's
                    raise InvalidOption(f"slice {opts.slice} is outside the volume: {count} {opts.axis} slices "
                                        f"(0..{count - 1})", errors=[FieldError("slice", "out of range")])
                fields["heatmap"] = _b64(slice_png(grid, opts.axis, opts.slice))
                fields["slices"] = [opts.slice]
            else:
                png, shown = montage_png(grid, opts.axis)
                fields["heatmap"], fields["slices"] = _b64(png), shown
        if "nifti" in opts.outputs:
            assert grid is not None
            fields["nifti"] = _b64(nifti_bytes(grid, np.asarray(volume.affine)))
        if "raw" in opts.outputs:
            fields["raw"] = encode_raw(item.heatmap)
        if slices is not None:
            assert grid is not None
            fields["dicom"] = {key: _b64(blob) for key, blob in _volume_dicom(result, item, grid, slices, kinds,
                                                                                 opts).items()}
        out.append(Explanation(index=item.index, label=labels[item.index], score=item.score, empty=stats.empty,
                               nonfinite=stats.nonfinite, min=stats.min, max=stats.max, **fields))
    return out


def _volume_slices(result: ExplanationRun, data: bytes | None) -> list[Any]:
    """The source instances of a DICOM volume in volume order (headers: patient and study included, since the
    results attach to the study) — from the decoded volume, or re-read from the upload on a cache hit."""
    volume = result.image if isinstance(result.image, Volume) else None
    if volume is None:
        assert data is not None, "DICOM outputs are built from the uploaded bytes"
        volume = decode_volume(data)
    if not volume.format.startswith("dicom") or not volume.datasets:
        raise InvalidOption("DICOM outputs (dicom-pm, dicom-seg) need a DICOM series or multi-frame DICOM input, "
                            f"not {volume.format}", errors=[FieldError("outputs", "not a DICOM volume")])
    return volume.datasets


def _volume_dicom(result: ExplanationRun, item: TargetMap, grid: Any, slices: list[Any], kinds: list[str],
                  opts: ExplainOptions) -> dict[str, bytes]:
    from .. import __version__

    plan = result.plan
    if len(slices) != grid.shape[0]:   # an enhanced multi-frame file is one instance for all its frames
        raise InvalidOption("DICOM outputs of a multi-frame DICOM volume are not built yet; send the series as "
                            "single-frame slices", errors=[FieldError("outputs", "multi-frame source")])
    threshold = float(opts.threshold or plan.model.spec.localize_threshold or DEFAULT_THRESHOLD)
    return build_outputs(kinds, slices[0], grid, overlay_rgb=None, threshold=threshold,
                         label=plan.model.labels[item.index], method=plan.explainer.name, family=plan.explainer.family,
                         model=plan.model.name, version=__version__,
                         fractional=opts.segmentation_type == "fractional", slices=slices)


def check_volume_options(model: LoadedModel, opts: ExplainOptions) -> None:
    """Outputs and options that apply to one kind of input only, refused before any work."""
    if model.volumetric:
        wrong = [kind for kind in opts.outputs if kind not in VOLUME_OUTPUTS]
        if wrong:
            raise InvalidOption(f"outputs {', '.join(wrong)} are for 2-D images; a volume's are "
                                f"{', '.join(VOLUME_OUTPUTS)}", errors=[FieldError("outputs", "not for volumes")])
        return
    if "nifti" in opts.outputs or opts.slice is not None:
        raise InvalidOption("nifti and slice are for volume models (spatial_dims: 3)",
                            errors=[FieldError("outputs" if "nifti" in opts.outputs else "slice", "not for 2-D")])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _render_all(result: ExplanationRun, opts: ExplainOptions, data: bytes | None) -> list[Explanation]:
    """Runs in the thread pool: PNG encoding never blocks the event loop or the model worker."""
    labels = result.plan.model.labels
    kinds = _dicom_kinds(opts)
    source = None
    if kinds:
        assert data is not None, "DICOM outputs are built from the uploaded bytes"
        source = read_source(data)
    base = None
    if _needs_overlay(opts):
        assert result.image is not None, "run(pixels=True) decodes the image for an overlay"
        base = rgb8(result.image)
    out = []
    for item in result.maps:
        stats = map_stats(item.heatmap)
        fields: dict[str, Any] = {}
        if "heatmap" in opts.outputs:
            png, stats = render_heatmap(item.heatmap, result.size)
            fields["heatmap"] = _b64(png)
        overlay_png = None
        if base is not None:
            overlay_png = render_overlay(item.heatmap, base, colormap=opts.colormap, alpha=opts.alpha)
        if "overlay" in opts.outputs:
            fields["overlay"] = _b64(overlay_png)
        if source is not None:
            fields["dicom"] = {key: _b64(blob) for key, blob in _dicom_objects(result, item, source, kinds, opts,
                                                                                 overlay_png).items()}
        if "raw" in opts.outputs:
            fields["raw"] = encode_raw(item.heatmap)
        detection = explained_detection(result, item)
        if detection is not None:
            fields["detection"] = detection
        out.append(Explanation(index=item.index, label=labels[item.index], score=item.score, empty=stats.empty,
                               nonfinite=stats.nonfinite, min=stats.min, max=stats.max, **fields))
    return out


def _dicom_objects(result: ExplanationRun, item: TargetMap, source: Any, kinds: list[str], opts: ExplainOptions,
                   overlay_png: bytes | None) -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    from .. import __version__

    plan = result.plan
    overlay_rgb = None
    if overlay_png is not None:
        with Image.open(io.BytesIO(overlay_png)) as picture:
            overlay_rgb = np.asarray(picture.convert("RGB"))
    threshold = float(opts.threshold or plan.model.spec.localize_threshold or DEFAULT_THRESHOLD)
    return build_outputs(kinds, source, item.heatmap, overlay_rgb=overlay_rgb, threshold=threshold,
                         label=plan.model.labels[item.index], method=plan.explainer.name,
                         family=plan.explainer.family, model=plan.model.name, version=__version__,
                         fractional=opts.segmentation_type == "fractional")
