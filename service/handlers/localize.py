"""``/localize``: boxes from heatmaps, with the box code that calibration measures (:mod:`service.engine.localize`)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from ..api.schemas import ImageInfo, JobAccepted, LocalizedBox, LocalizeOptions, LocalizeResponse, MaskBox
from ..cache import entity_tag
from ..dicom_outputs import build_report, read_source, refuse_non_dicom
from ..engine import get_method
from ..engine.localize import DEFAULT_THRESHOLD, boxes_from_map, mask_boxes
from ..registry import LoadedModel
from ..rendering_volume import boxes_3d, map_on_grid
from ..runtime import Runtime
from . import CallInfo, Conditional, HeldTags, untagged
from . import explain as explaining

__all__ = ["MULTILABEL_MIN_PROBABILITY", "localize", "localize_async", "param_names", "render_response"]

MULTILABEL_MIN_PROBABILITY = 0.5
DEFAULT_METHOD = "gradcam"


def param_names(raw: Mapping[str, Any]) -> frozenset[str]:
    """The method parameters ``/localize`` accepts for the ``method`` named in the raw options."""
    name = raw.get("method")
    if isinstance(name, list):
        name = name[0] if name else None
    return explaining.method_param_names(name if isinstance(name, str) else None)


async def localize(runtime: Runtime, data: bytes, opts: LocalizeOptions, extras: Mapping[str, Any],
                   call: CallInfo, held: HeldTags | None = None) -> Conditional[LocalizeResponse]:
    """Without ``target``/``top_k``, a multi-label model gets a box for every class with p >= 0.5, a multi-class one
    for its top class (a segmentation model: its class of highest mean probability, and ``mask_boxes`` beside).
    Method and threshold default to the model's calibrated ones, else Grad-CAM at 0.15.

    The maps come from the result cache shared with ``/explain`` (same key: same image, method, parameters, layer and
    targets); the box options only shape the response, so they are part of its entity tag, not of the map key."""
    if opts.outputs:
        refuse_non_dicom(data)
    validated, threshold = _plan(runtime, opts, extras, call)
    key = await explaining.map_key(runtime, validated, data, frame=opts.frame)
    if opts.outputs:  # a DICOM SR: new UIDs in every answer, so no entity tag and If-None-Match ignored
        result = await explaining.run(runtime, validated, data, key, frame=opts.frame, call=call)
        return untagged(await runtime.in_thread(render_response, result, opts, threshold, data), result.cache_hit)
    etag = entity_tag(key, {"endpoint": "localize", "threshold": float(threshold),
                            "all_components": opts.all_components, "min_area": opts.min_area,
                            "outputs": sorted(opts.outputs)})
    if held is not None and held.names(etag):
        call.cache = "not-modified"
        return Conditional(etag)
    result = await explaining.run(runtime, validated, data, key, frame=opts.frame, call=call)
    if held is not None and held.any:
        return Conditional(etag, cache_hit=result.cache_hit)
    body = await runtime.in_thread(render_response, result, opts, threshold, data)
    return Conditional(etag, body, cache_hit=result.cache_hit)


def _plan(runtime: Runtime, opts: LocalizeOptions, extras: Mapping[str, Any], call: CallInfo
          ) -> tuple[explaining.ExplanationPlan, float]:
    model = runtime.model(opts.model)
    explainer = get_method(opts.method or model.spec.localize_method or DEFAULT_METHOD)
    threshold = opts.threshold or model.spec.localize_threshold or DEFAULT_THRESHOLD
    all_likely = model.task == "multilabel" and not opts.target and opts.top_k is None
    validated = explaining.plan(runtime, explainer, opts, extras, call, min_probability=MULTILABEL_MIN_PROBABILITY,
                                all_likely=all_likely)
    return validated, threshold


def render_response(result: explaining.ExplanationRun, opts: LocalizeOptions, threshold: float,
                    data: bytes | None = None) -> LocalizeResponse:
    """The response body (boxes of every map); runs in the thread pool. ``data`` (the uploaded bytes) is the
    source of a ``dicom-sr`` output."""
    plan = result.plan
    boxes = _boxes(plan.model, result, threshold, opts)
    extra: dict[str, Any] = {}
    if "dicom-sr" in opts.outputs:
        assert data is not None, "a DICOM SR is built from the uploaded bytes"
        from .. import __version__

        report = build_report(read_source(data), [(box.label, box.score, box.box) for box in boxes],
                              method=plan.explainer.name, model=plan.model.name, version=__version__)
        extra["dicom"] = {"sr": base64.b64encode(report).decode("ascii")}
    if plan.model.task == "segmentation":
        extra["mask_boxes"] = _mask_boxes(plan.model, result, opts)
    image = explaining.volume_info(result.volume) if result.volume is not None else \
        ImageInfo(width=result.width, height=result.height)
    return LocalizeResponse(model=plan.model.name, method=plan.explainer.name, layer=plan.explained_layer,
                            threshold=threshold, image=image, boxes=boxes, **extra)


async def localize_async(runtime: Runtime, data: bytes, opts: LocalizeOptions, extras: Mapping[str, Any],
                         call: CallInfo) -> JobAccepted:
    """``/localize`` with ``Prefer: respond-async``: the same validation, then a job."""
    if opts.outputs:
        refuse_non_dicom(data)
    validated, threshold = _plan(runtime, opts, extras, call)
    key = await explaining.map_key(runtime, validated, data, frame=opts.frame)
    return await explaining.submit(runtime, validated, data, key, frame=opts.frame, kind="localization",
                                   render=lambda result: render_response(result, opts, threshold, data).model_dump(
                                       mode="json", exclude_unset=True))


def _boxes(model: LoadedModel, result: explaining.ExplanationRun, threshold: float,
           opts: LocalizeOptions) -> list[LocalizedBox]:
    """Runs in the thread pool: the box of every map, by the function calibration measures."""
    if result.volume is not None:
        return _boxes_3d(model, result, threshold, opts)
    return [
        LocalizedBox(index=item.index, label=model.labels[item.index], score=item.score, box=box.as_list(),
                     area=box.area, **_detection_of(result, item))
        for item in result.maps
        for box in boxes_from_map(item.heatmap, result.size, threshold=threshold, all_components=opts.all_components,
                                  min_area=opts.min_area)
    ]


def _boxes_3d(model: LoadedModel, result: explaining.ExplanationRun, threshold: float,
              opts: LocalizeOptions) -> list[LocalizedBox]:
    """Volumes: 26-connected components of each map on the source's voxels, in voxels and in patient mm (the
    voxel-edge corners through the source's affine)."""
    volume = result.volume
    assert volume is not None
    out = []
    for item in result.maps:
        grid = map_on_grid(item.heatmap, volume.size, volume.content)
        for (x0, y0, z0, x1, y1, z1), voxels in boxes_3d(grid, threshold, all_components=opts.all_components,
                                                          min_voxels=opts.min_area):
            corners = volume.to_mm([[x0 - 0.5, y0 - 0.5, z0 - 0.5], [x1 - 0.5, y1 - 0.5, z1 - 0.5]])
            low, high = corners.min(0), corners.max(0)
            out.append(LocalizedBox(index=item.index, label=model.labels[item.index], score=item.score,
                                    box=[x0, y0, x1, y1], area=voxels, box3d=[x0, y0, z0, x1, y1, z1],
                                    box_mm=[round(float(v), 4) for v in (*low, *high)]))
    return out


def _detection_of(result: explaining.ExplanationRun, item: Any) -> dict[str, Any]:
    found = explaining.explained_detection(result, item)
    return {"detection": found} if found is not None else {}


def _mask_boxes(model: LoadedModel, result: explaining.ExplanationRun, opts: LocalizeOptions) -> list[MaskBox]:
    """Runs in the thread pool: the components of the model's own predicted mask of every explained class, from the
    explanation's clean forward (no second pass), by the component code of the explanation boxes."""
    out = []
    for item in result.maps:
        if item.predicted is None or item.probability is None:
            raise RuntimeError("a segmentation explanation row lacks its predicted mask")
        for found in mask_boxes(item.predicted, item.probability, result.size, min_area=opts.min_area):
            out.append(MaskBox(index=item.index, label=model.labels[item.index], box=found.box.as_list(),
                               area=found.box.area, mean_probability=found.mean_probability))
    return out
