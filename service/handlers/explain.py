"""``/explain/{method}``: validate cheaply, decode, queue the explanation, render the maps.

:func:`plan` checks everything that needs no model work (method parameters, model, method/layer fit, targets) so a
bad request is refused before its image is decoded; :func:`run` decodes and queues; :func:`explain` renders. The
``/localize`` handler reuses :func:`plan` and :func:`run`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..api.schemas import ExplainOptions, ExplainResponse, Explanation, ImageInfo, ImageOptions, JobAccepted
from ..engine import Explainer, get_method, validate_params
from ..errors import DeadlineExceeded, XaasError
from ..imaging import DecodedImage, rgb8
from ..inference import TargetMap
from ..registry import LoadedModel
from ..rendering import encode_raw, map_stats, render_heatmap, render_overlay, validate_overlay_options
from ..runtime import Runtime
from . import CallInfo

__all__ = ["ExplanationPlan", "ExplanationRun", "explain", "explain_async", "method_param_names", "plan",
           "render_response", "run", "submit"]


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

    @property
    def explained_layer(self) -> str | None:
        """The layer whose map is explained (CAM methods), else None."""
        return (self.layer or self.model.target_layer) if self.explainer.uses_layer else None


@dataclass
class ExplanationRun:
    plan: ExplanationPlan
    image: DecodedImage
    maps: list[TargetMap]


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
        caps.check_layer(model.name, layer)
    targets = runtime.resolve_targets(model, opts.target)
    cap = min(model.num_classes, runtime.settings.max_targets)
    top_k = cap if all_likely else min(opts.top_k or 1, cap)
    return ExplanationPlan(model, explainer, params, layer, targets, top_k,
                           min_probability if all_likely else None, runtime.timeout(opts.timeout))


ASYNC_HINT = "resend it with the header 'Prefer: respond-async' to run it as a job (202, then poll GET /jobs/{id})"


async def run(runtime: Runtime, plan: ExplanationPlan, data: bytes, *, frame: int | None, call: CallInfo
              ) -> ExplanationRun:
    """Decode the image and queue the explanation on the model's worker. Past its deadline, the 504 says how to
    run it as an asynchronous job instead."""
    image, tensor = await runtime.load_image(plan.model, data, frame=frame)
    try:
        maps = await runtime.explain(plan.model, tensor, method=plan.explainer.name, params=plan.params,
                                     layer=plan.layer, targets=plan.targets, top_k=plan.top_k,
                                     min_probability=plan.min_probability, timeout=plan.timeout)
    except DeadlineExceeded as exc:
        raise DeadlineExceeded(f"{exc.detail}; {ASYNC_HINT}") from None
    call.rows = len(maps)
    return ExplanationRun(plan, image, maps)


async def submit(runtime: Runtime, plan: ExplanationPlan, data: bytes, *, frame: int | None, kind: str,
                 render: Callable[[ExplanationRun], dict[str, Any]]) -> JobAccepted:
    """Decode now (a broken image is refused at once), then queue the explanation as a job whose result is
    ``render(run)`` — exactly the body of the synchronous call."""
    image, tensor = await runtime.load_image(plan.model, data, frame=frame)
    job = runtime.submit_explanation(
        plan.model, tensor, method=plan.explainer.name, params=plan.params, layer=plan.layer, targets=plan.targets,
        top_k=plan.top_k, min_probability=plan.min_probability, kind=kind, meta={"method": plan.explainer.name},
        finish=lambda maps: render(ExplanationRun(plan, image, maps)))
    return JobAccepted(id=job.id, status=job.status)


def _validated(runtime: Runtime, method: str, opts: ExplainOptions, extras: Mapping[str, Any], call: CallInfo
               ) -> ExplanationPlan:
    explainer = get_method(method)
    if "overlay" in opts.outputs:
        validate_overlay_options(opts.colormap, opts.alpha)
    return plan(runtime, explainer, opts, extras, call)


async def explain(runtime: Runtime, method: str, data: bytes, opts: ExplainOptions, extras: Mapping[str, Any],
                  call: CallInfo) -> ExplainResponse:
    result = await run(runtime, _validated(runtime, method, opts, extras, call), data, frame=opts.frame, call=call)
    return await runtime.in_thread(render_response, result, opts)


async def explain_async(runtime: Runtime, method: str, data: bytes, opts: ExplainOptions, extras: Mapping[str, Any],
                        call: CallInfo) -> JobAccepted:
    """``/explain/{method}`` with ``Prefer: respond-async``: the same validation, then a job."""
    validated = _validated(runtime, method, opts, extras, call)
    return await submit(runtime, validated, data, frame=opts.frame, kind="explanation",
                        render=lambda result: render_response(result, opts).model_dump(mode="json",
                                                                                      exclude_unset=True))


def render_response(result: ExplanationRun, opts: ExplainOptions) -> ExplainResponse:
    """The response body; runs in the thread pool (PNG encoding never blocks the event loop or the worker)."""
    return ExplainResponse(model=result.plan.model.name, method=result.plan.explainer.name,
                           layer=result.plan.explained_layer,
                           image=ImageInfo(width=result.image.width, height=result.image.height),
                           explanations=_render_all(result, opts))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _render_all(result: ExplanationRun, opts: ExplainOptions) -> list[Explanation]:
    """Runs in the thread pool: PNG encoding never blocks the event loop or the model worker."""
    image, labels = result.image, result.plan.model.labels
    size = (image.width, image.height)
    base = rgb8(image) if "overlay" in opts.outputs else None
    out = []
    for item in result.maps:
        stats = map_stats(item.heatmap)
        fields: dict[str, Any] = {}
        if "heatmap" in opts.outputs:
            png, stats = render_heatmap(item.heatmap, size)
            fields["heatmap"] = _b64(png)
        if base is not None:
            fields["overlay"] = _b64(render_overlay(item.heatmap, base, colormap=opts.colormap, alpha=opts.alpha))
        if "raw" in opts.outputs:
            fields["raw"] = encode_raw(item.heatmap)
        out.append(Explanation(index=item.index, label=labels[item.index], score=item.score, empty=stats.empty,
                               nonfinite=stats.nonfinite, min=stats.min, max=stats.max, **fields))
    return out
