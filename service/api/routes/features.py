"""Feature visualisation: layer activations, convolution filters, class impressions (background jobs)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request, Response

from ...handlers import features as features_handler
from ...handlers import jobs as jobs_handler
from ..deps import CallDep, RuntimeDep, unless_disconnected
from ..inputs import read_image_request
from ..schemas import (
    IMAGE_PROBLEMS,
    ActivationOptions,
    ActivationResponse,
    ClassImpressionRequest,
    FilterResponse,
    JobAccepted,
    JobStatus,
    image_request_body,
    problem_responses,
)

router = APIRouter(tags=["features"])


@router.post("/activations", response_model=ActivationResponse, response_model_exclude_unset=True,
             summary="A layer's activations for an image: top channels as a grid, or one channel",
             responses=problem_responses(*IMAGE_PROBLEMS), openapi_extra=image_request_body(ActivationOptions))
async def activations(request: Request, runtime: RuntimeDep, call: CallDep) -> ActivationResponse:
    data, opts, _ = await read_image_request(request, ActivationOptions,
                                             max_image_bytes=runtime.settings.max_body_bytes)
    return await unless_disconnected(request, features_handler.activations(runtime, data, opts, call))


@router.get("/models/{name}/filters", response_model=FilterResponse,
            summary="A convolution layer's filters as an image grid (default: the first conv layer)",
            responses=problem_responses(401, 404, 422, 503))
async def filters(runtime: RuntimeDep, name: str = Path(max_length=64),
                  layer: str | None = Query(None, max_length=200)) -> FilterResponse:
    return await features_handler.filters(runtime, name, layer)


@router.post("/models/{name}/class-impressions", status_code=202, response_model=JobAccepted,
             summary="Start a class-impression job (gradient ascent on a class from noise)",
             responses=problem_responses(400, 401, 404, 408, 413, 415, 422, 429, 503))
async def start_class_impression(body: ClassImpressionRequest, response: Response, runtime: RuntimeDep,
                                 name: str = Path(max_length=64)) -> JobAccepted:
    accepted = features_handler.start_class_impression(runtime, name, body)
    response.headers["Location"] = f"/jobs/{accepted.id}"
    return accepted


@router.get("/jobs/{job_id}", response_model=JobStatus, response_model_exclude_unset=True,
            summary="A job's status and result", responses=problem_responses(401, 404))
async def get_job(runtime: RuntimeDep, job_id: str = Path(max_length=64)) -> JobStatus:
    return jobs_handler.get_job(runtime, job_id)


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel a job or delete a finished one; then it is gone",
               responses=problem_responses(401, 404))
async def delete_job(runtime: RuntimeDep, job_id: str = Path(max_length=64)) -> Response:
    jobs_handler.delete_job(runtime, job_id)
    return Response(status_code=204)
