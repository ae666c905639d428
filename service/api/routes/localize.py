from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from ...engine import get_method
from ...engine.localize import DEFAULT_THRESHOLD, boxes_from_map
from ...errors import NotFound
from ...runtime import Runtime
from ..deps import get_runtime
from ..inputs import read_image_request
from .explain import run_explanation
from ..schemas import PROBLEM_RESPONSES, ImageInfo, LocalizedBox, LocalizeOptions, LocalizeResponse, image_request_body

router = APIRouter(tags=["localize"])
MULTILABEL_MIN_PROBABILITY = 0.5


def _method_params(raw: dict[str, Any]) -> frozenset[str]:
    name = raw.get("method")
    if isinstance(name, list):
        name = name[0] if name else None
    try:
        return frozenset(p.name for p in get_method(name or "gradcam").params)
    except NotFound:
        return frozenset()


@router.post("/localize", response_model=LocalizeResponse, summary="Bounding boxes from heatmaps",
             responses=PROBLEM_RESPONSES, openapi_extra=image_request_body(LocalizeOptions))
async def localize(request: Request, runtime: Runtime = Depends(get_runtime)) -> LocalizeResponse:
    data, opts, extras = await read_image_request(request, LocalizeOptions, max_image_bytes=runtime.settings.max_body_bytes,
                                                  extra_names=_method_params)
    model = runtime.model(opts.model)
    explainer = get_method(opts.method or model.spec.localize_method or "gradcam")
    threshold = opts.threshold or model.spec.localize_threshold or DEFAULT_THRESHOLD
    all_likely = model.task == "multilabel" and not opts.target and opts.top_k is None
    run = await run_explanation(request, runtime, explainer, data, opts, extras,
                                min_probability=MULTILABEL_MIN_PROBABILITY, all_likely=all_likely)
    size = (run.image.width, run.image.height)

    def boxes() -> list[LocalizedBox]:
        return [
            LocalizedBox(index=item.index, label=model.labels[item.index], score=item.score, box=tuple(box.as_list()),
                         area=box.area)
            for item in run.maps
            for box in boxes_from_map(item.heatmap, size, threshold=threshold, all_components=opts.all_components,
                                      min_area=opts.min_area)
        ]

    return LocalizeResponse(model=model.name, method=explainer.name, layer=run.layer, threshold=threshold,
                            image=ImageInfo(width=size[0], height=size[1]), boxes=await runtime.in_thread(boxes))
