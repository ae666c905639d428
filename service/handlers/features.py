"""Feature views: ``/activations``, ``/models/{name}/filters`` and class-impression jobs."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from ..api.schemas import (
    ActivationOptions,
    ActivationResponse,
    ChannelStats,
    ClassImpressionRequest,
    FilterResponse,
    GridInfo,
    ImageInfo,
    JobAccepted,
)
from ..engine.features import (
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
from ..engine.passes import Progress
from ..errors import FieldError, InvalidOption
from ..jobs import JobWork
from ..rendering import encode_png
from ..runtime import Runtime
from . import CallInfo

__all__ = ["ImpressionWork", "activations", "filters", "start_class_impression"]


def _png(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(array)).decode("ascii")


async def activations(runtime: Runtime, data: bytes, opts: ActivationOptions, call: CallInfo) -> ActivationResponse:
    """One hooked forward on the worker (between request batches), then statistics and pictures in the pool."""
    model = runtime.model(opts.model)
    call.model = model.name
    layer = model.capabilities.check_layer(model.name, opts.layer)
    image, tensor = await runtime.load_image(model, data, frame=opts.frame)
    act = await runtime.batcher(model).run_exclusive(
        lambda: layer_activations(model.module, tensor.to(model.device), layer), timeout=runtime.timeout(opts.timeout))

    def render() -> ActivationResponse:
        stats = [ChannelStats(**s) for s in channel_stats(act)]
        common: dict[str, Any] = {"model": model.name, "layer": layer, "shape": list(act.shape),
                                  "image": ImageInfo(width=image.width, height=image.height)}
        if opts.channel is not None:
            png = channel_image(act, opts.channel)  # 422 when out of range
            return ActivationResponse(**common, channels=[stats[opts.channel]], channel=_png(png))
        chosen = top_channels(act, opts.top)
        grid, scale = activation_grid(act, chosen)
        rows, cols = grid_shape(len(chosen))
        tile = [int(act.shape[1]) * scale, int(act.shape[2]) * scale]
        return ActivationResponse(**common, channels=[stats[i] for i in chosen], grid=_png(grid),
                                  grid_info=GridInfo(rows=rows, cols=cols, tile=tile, scale=scale, pad=GRID_PAD))

    return await runtime.in_thread(render)


async def filters(runtime: Runtime, name: str, layer: str | None) -> FilterResponse:
    """A conv layer's weights as a grid. Weights only (frozen), so it runs beside the worker; cached per layer."""
    model = runtime.model(name)
    convs = conv_layers(model.module)
    key = (model.name, layer or (convs[0] if convs else ""))
    cached = runtime.rendered_filters.get(key)
    if cached is not None:
        return cached

    def render() -> FilterResponse:
        out = filter_grid(model.module, layer)
        rows, cols = grid_shape(out["count"])
        kh, kw = out["kernel_size"]
        scale = out["scale"]
        return FilterResponse(model=model.name, layer=out["layer"], count=out["count"], in_channels=out["in_channels"],
                              kernel_size=[kh, kw], mode=out["mode"], grid=_png(out["grid"]), conv_layers=convs,
                              grid_info=GridInfo(rows=rows, cols=cols, tile=[kh * scale, kw * scale], scale=scale,
                                                 pad=GRID_PAD))

    response = await runtime.in_thread(render)
    runtime.rendered_filters[key] = response
    return response


def start_class_impression(runtime: Runtime, name: str, body: ClassImpressionRequest) -> JobAccepted:
    """Queue a class-impression job on the model's worker (background slices between live batches)."""
    model = runtime.model(name)
    limit = runtime.settings.job_max_steps
    if body.steps > limit:
        raise InvalidOption(f"steps {body.steps} exceeds the limit of {limit} (XAAS_JOB_MAX_STEPS)",
                            errors=[FieldError("steps", f"must be <= {limit}")])
    target = model.class_index(body.target)
    batcher = runtime.batcher(model)
    params = ImpressionParams(steps=body.steps, lr=body.lr, tv_weight=body.tv_weight, l2_weight=body.l2_weight,
                              jitter=body.jitter, rotation=body.rotation, scale=tuple(body.scale), seed=body.seed)
    runner = ClassImpression(model.module, target, model.input_shape, model.input_range, task=model.task,
                             params=params, device=model.device)

    def finish(pixels: np.ndarray) -> dict[str, Any]:
        return {"image": _png(pixels[..., 0] if pixels.shape[2] == 1 else pixels)}

    job = runtime.jobs.submit(batcher, ImpressionWork(runner), kind="class-impression", model=model.name,
                              finish=finish, meta={"target": target, "label": model.labels[target]})
    return JobAccepted(id=job.id, status=job.status)


class ImpressionWork(JobWork):
    """A class impression as job work: one optimisation step per step; the probability shows while it runs."""

    def __init__(self, runner: ClassImpression) -> None:
        self.runner = runner
        self.progress = Progress(0, runner.params.steps, "steps")

    def advance(self) -> bool:
        self.runner.run(1)
        self.progress = Progress(self.runner.step, self.runner.params.steps, "steps")
        return self.runner.done

    def outcome(self) -> np.ndarray:
        return self.runner.pixels()

    def live(self) -> dict[str, Any]:
        return {"probability": self.runner.probability} if self.runner.probability is not None else {}
