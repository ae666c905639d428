"""Feature visualisation: layer activations, convolution filters, class impressions (background jobs)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from ...engine.features import (
    GRID_PAD,
    ClassImpression,
    ImpressionParams,
    activation_grid,
    channel_image,
    channel_stats,
    conv_layers,
    filter_grid,
    grid_shape,
    layer_activations,
    top_channels,
)
from ...errors import InvalidOption
from ...registry import LoadedModel
from ...rendering import encode_png
from ...runtime import Runtime
from ..deps import get_runtime, unless_disconnected
from ..inputs import read_image_request
from ..schemas import (
    PROBLEM_RESPONSES,
    ActivationOptions,
    ActivationResponse,
    ClassImpressionRequest,
    FilterResponse,
    ImageInfo,
    JobAccepted,
    JobStatus,
    image_request_body,
)

router = APIRouter(tags=["features"])


def _png(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(array)).decode("ascii")


def check_layer(model: LoadedModel, layer: str | None) -> str:
    valid = model.extra.get("layers", [])
    layer = layer or model.target_layer
    if layer is None or layer not in valid:
        shown = ", ".join(valid) if valid else "none (the model cannot be hooked)"
        raise InvalidOption(f"unknown layer {layer!r} for model '{model.name}'; layers with a spatial output: {shown}",
                            errors=[{"field": "layer", "message": "not a layer with a spatial output"}])
    return layer


@router.post("/activations", response_model=ActivationResponse, response_model_exclude_none=True,
             summary="A layer's activations for an image: top channels as a grid, or one channel",
             responses=PROBLEM_RESPONSES, openapi_extra=image_request_body(ActivationOptions))
async def activations(request: Request, runtime: Runtime = Depends(get_runtime)) -> ActivationResponse:
    data, opts, _ = await read_image_request(request, ActivationOptions, max_image_bytes=runtime.settings.max_body_bytes)
    model = runtime.model(opts.model)
    request.state.model = model.name
    layer = check_layer(model, opts.layer)
    image, tensor = await runtime.load_image(model, data, frame=opts.frame)
    act = await unless_disconnected(request, runtime.batcher(model).run_exclusive(
        lambda: layer_activations(model.module, tensor.to(model.device), layer), timeout=runtime.timeout(opts.timeout)))

    def render() -> ActivationResponse:
        stats = channel_stats(act)
        common: dict[str, Any] = {"model": model.name, "layer": layer, "shape": tuple(act.shape),
                                  "image": ImageInfo(width=image.width, height=image.height)}
        if opts.channel is not None:
            png = channel_image(act, opts.channel)  # 422 when out of range
            return ActivationResponse(**common, channels=[stats[opts.channel]], channel=_png(png))
        chosen = top_channels(act, opts.top)
        grid, scale = activation_grid(act, chosen)
        rows, cols = grid_shape(len(chosen))
        tile = (int(act.shape[1]) * scale, int(act.shape[2]) * scale)
        return ActivationResponse(**common, channels=[stats[i] for i in chosen], grid=_png(grid),
                                  grid_info={"rows": rows, "cols": cols, "tile": tile, "scale": scale, "pad": GRID_PAD})

    return await runtime.in_thread(render)


@router.get("/models/{name}/filters", response_model=FilterResponse,
            summary="A convolution layer's filters as an image grid (default: the first conv layer)",
            responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (404, 422, 503)})
async def filters(name: str = Path(max_length=64), layer: str | None = Query(None, max_length=200),
                  runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    model = runtime.model(name)
    convs = conv_layers(model.module)
    key = (model.name, layer or (convs[0] if convs else ""))
    cached = runtime.feature_cache.get(key)
    if cached is None:
        def render() -> dict[str, Any]:
            out = filter_grid(model.module, layer)  # weights only (frozen): no forward, safe beside the worker
            grid = out.pop("grid")
            rows, cols = grid_shape(out["count"])
            kh, kw = out["kernel_size"]
            return {"model": model.name, **out, "grid": _png(grid), "conv_layers": convs,
                    "grid_info": {"rows": rows, "cols": cols, "tile": (kh * out["scale"], kw * out["scale"]),
                                  "scale": out.pop("scale"), "pad": GRID_PAD}}

        cached = await runtime.in_thread(render)
        runtime.feature_cache[key] = cached
    return cached


@router.post("/models/{name}/class-impressions", status_code=202, response_model=JobAccepted,
             summary="Start a class-impression job (gradient ascent on a class from noise)",
             responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (404, 422, 429, 503)})
async def start_class_impression(body: ClassImpressionRequest, response: Response, name: str = Path(max_length=64),
                                 runtime: Runtime = Depends(get_runtime)) -> JobAccepted:
    model = runtime.model(name)
    if body.steps > runtime.settings.job_max_steps:
        raise InvalidOption(f"steps {body.steps} exceeds the limit of {runtime.settings.job_max_steps} (XAAS_JOB_MAX_STEPS)",
                            errors=[{"field": "steps", "message": f"must be <= {runtime.settings.job_max_steps}"}])
    target = model.class_index(body.target)
    batcher = runtime.batcher(model)
    params = ImpressionParams(steps=body.steps, lr=body.lr, tv_weight=body.tv_weight, l2_weight=body.l2_weight,
                              jitter=body.jitter, rotation=body.rotation, scale=tuple(body.scale), seed=body.seed)
    runner = ClassImpression(model.module, target, model.input_shape, model.input_range, task=model.task,
                             params=params, device=model.device)

    def finish(r: ClassImpression) -> dict[str, Any]:
        pixels = r.pixels()
        return {"image": _png(pixels[..., 0] if pixels.shape[2] == 1 else pixels)}

    job = runtime.jobs.submit(batcher, runner, kind="class-impression", model=model.name, steps=body.steps,
                              finish=finish, meta={"target": target, "label": model.labels[target]})
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobAccepted(id=job.id, status=job.status)


@router.get("/jobs/{job_id}", response_model=JobStatus, response_model_exclude_none=True, summary="A job's status and result",
            responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (404,)})
async def get_job(job_id: str = Path(max_length=64), runtime: Runtime = Depends(get_runtime)) -> dict[str, Any]:
    return runtime.jobs.get(job_id).to_json()


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel a job (or delete a finished one)",
               responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (404,)})
async def cancel_job(job_id: str = Path(max_length=64), runtime: Runtime = Depends(get_runtime)) -> Response:
    runtime.jobs.cancel(job_id)
    return Response(status_code=204)
