from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Path, Request

from ...engine import Explainer, describe, get_method, validate_params
from ...imaging import DecodedImage, rgb8
from ...inference import TargetMap
from ...registry import LoadedModel
from ...rendering import encode_raw, map_stats, render_heatmap, render_overlay, validate_overlay_options
from ...runtime import Runtime
from ..deps import get_runtime, unless_disconnected
from ..inputs import read_image_request
from ..schemas import (
    PROBLEM_RESPONSES,
    ExplainOptions,
    ExplainResponse,
    Explanation,
    ImageInfo,
    ImageOptions,
    MethodList,
    image_request_body,
)

router = APIRouter(tags=["explain"])


@router.get("/methods", response_model=MethodList, summary="Explanation methods, their families and parameters")
async def methods() -> dict[str, Any]:
    return {"methods": describe()}


@router.post("/explain/{method}", response_model=ExplainResponse, response_model_exclude_none=True,
             summary="Heatmaps explaining the model's score for each target",
             responses=PROBLEM_RESPONSES, openapi_extra=image_request_body(ExplainOptions))
async def explain(request: Request, method: str = Path(max_length=64, description="See GET /methods."),
                  runtime: Runtime = Depends(get_runtime)) -> ExplainResponse:
    explainer = get_method(method)
    data, opts, extras = await read_image_request(request, ExplainOptions, max_image_bytes=runtime.settings.max_body_bytes,
                                                  extra_names=frozenset(p.name for p in explainer.params))
    if "overlay" in opts.outputs:
        validate_overlay_options(opts.colormap, opts.alpha)
    run = await run_explanation(request, runtime, explainer, data, opts, extras)
    explanations = await runtime.in_thread(_render_all, run.model, run.image, run.maps, opts)
    return ExplainResponse(model=run.model.name, method=explainer.name, layer=run.layer,
                           image=ImageInfo(width=run.image.width, height=run.image.height), explanations=explanations)


@dataclass
class ExplanationRun:
    model: LoadedModel
    image: DecodedImage
    maps: list[TargetMap]
    layer: str | None  # the layer explained (CAM methods), else None


async def run_explanation(request: Request, runtime: Runtime, explainer: Explainer, data: bytes, opts: ImageOptions,
                          extras: dict[str, Any], *, min_probability: float | None = None,
                          all_likely: bool = False) -> ExplanationRun:
    """Validate everything cheap first (params, model, method/layer fit, targets), then decode and queue the job.

    ``all_likely``: without explicit targets, explain every class whose probability reaches ``min_probability``
    (multi-label localization) instead of the ``top_k`` best.
    """
    params = validate_params(explainer, extras)
    model = runtime.model(opts.model)
    request.state.model, request.state.xai_method = model.name, explainer.name
    layer = getattr(opts, "layer", None) if explainer.uses_layer else None
    runtime.check_explainable(model, explainer.name, layer)
    targets = runtime.resolve_targets(model, opts.target)
    cap = min(model.num_classes, runtime.settings.max_targets)
    top_k = cap if all_likely else min(opts.top_k or 1, cap)
    image, tensor = await runtime.load_image(model, data, frame=opts.frame)
    maps = await unless_disconnected(request, runtime.explain(
        model, tensor, method=explainer.name, params=params, layer=layer, targets=targets, top_k=top_k,
        min_probability=min_probability if all_likely else None, timeout=runtime.timeout(opts.timeout)))
    request.state.batch_rows = len(maps)
    return ExplanationRun(model, image, maps, (layer or model.target_layer) if explainer.uses_layer else None)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _render_all(model: LoadedModel, image: DecodedImage, maps: list[TargetMap], opts: ExplainOptions) -> list[Explanation]:
    """Runs in the thread pool: PNG encoding never blocks the event loop or the model worker."""
    size = (image.width, image.height)
    base = rgb8(image) if "overlay" in opts.outputs else None
    out = []
    for item in maps:
        stats = map_stats(item.heatmap)
        fields: dict[str, Any] = {}
        if "heatmap" in opts.outputs:
            png, stats = render_heatmap(item.heatmap, size)
            fields["heatmap"] = _b64(png)
        if base is not None:
            fields["overlay"] = _b64(render_overlay(item.heatmap, base, colormap=opts.colormap, alpha=opts.alpha))
        if "raw" in opts.outputs:
            fields["raw"] = encode_raw(item.heatmap)
        out.append(Explanation(index=item.index, label=model.labels[item.index], score=item.score, empty=stats.empty,
                               nonfinite=stats.nonfinite, min=stats.min, max=stats.max, **fields))
    return out
