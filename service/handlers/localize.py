"""``/localize``: boxes from heatmaps, with the box code that calibration measures (:mod:`service.engine.localize`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..api.schemas import ImageInfo, JobAccepted, LocalizedBox, LocalizeOptions, LocalizeResponse
from ..engine import get_method
from ..engine.localize import DEFAULT_THRESHOLD, boxes_from_map
from ..runtime import Runtime
from . import CallInfo
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


def _plan(runtime: Runtime, opts: LocalizeOptions, extras: Mapping[str, Any], call: CallInfo
          ) -> tuple[explaining.ExplanationPlan, float]:
    model = runtime.model(opts.model)
    explainer = get_method(opts.method or model.spec.localize_method or DEFAULT_METHOD)
    threshold = opts.threshold or model.spec.localize_threshold or DEFAULT_THRESHOLD
    all_likely = model.task == "multilabel" and not opts.target and opts.top_k is None
    validated = explaining.plan(runtime, explainer, opts, extras, call, min_probability=MULTILABEL_MIN_PROBABILITY,
                                all_likely=all_likely)
    return validated, threshold


def render_response(result: explaining.ExplanationRun, opts: LocalizeOptions, threshold: float) -> LocalizeResponse:
    """Boxes of every map, with the box code that calibration measures; runs in the thread pool."""
    model, size = result.plan.model, (result.image.width, result.image.height)
    boxes = [
        LocalizedBox(index=item.index, label=model.labels[item.index], score=item.score, box=box.as_list(),
                     area=box.area)
        for item in result.maps
        for box in boxes_from_map(item.heatmap, size, threshold=threshold, all_components=opts.all_components,
                                  min_area=opts.min_area)
    ]
    return LocalizeResponse(model=model.name, method=result.plan.explainer.name, layer=result.plan.explained_layer,
                            threshold=threshold, image=ImageInfo(width=size[0], height=size[1]), boxes=boxes)


async def localize(runtime: Runtime, data: bytes, opts: LocalizeOptions, extras: Mapping[str, Any],
                   call: CallInfo) -> LocalizeResponse:
    """Without ``target``/``top_k``, a multi-label model gets a box for every class with p >= 0.5, a multi-class one
    for its top class. Method and threshold default to the model's calibrated ones, else Grad-CAM at 0.15."""
    validated, threshold = _plan(runtime, opts, extras, call)
    result = await explaining.run(runtime, validated, data, frame=opts.frame, call=call)
    return await runtime.in_thread(render_response, result, opts, threshold)


async def localize_async(runtime: Runtime, data: bytes, opts: LocalizeOptions, extras: Mapping[str, Any],
                         call: CallInfo) -> JobAccepted:
    """``/localize`` with ``Prefer: respond-async``: the same validation, then a job."""
    validated, threshold = _plan(runtime, opts, extras, call)
    return await explaining.submit(runtime, validated, data, frame=opts.frame, kind="localization",
                                   render=lambda result: render_response(result, opts, threshold).model_dump(
                                       mode="json"))
