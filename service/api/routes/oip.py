"""Open Inference Protocol v2 (REST): health, server and model metadata, readiness, infer (HTTP only)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request, Response

from ...handlers import oip as oip_handler
from ..deps import CallDep, RuntimeDep, unless_disconnected
from ..inputs import parse_infer_body
from ..schemas import IMAGE_PROBLEMS, problem_responses
from ..schemas_oip import OipInferResponse, OipModelMetadata, OipServerMetadata

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
ModelName = Path(max_length=64, description="A model of the registry")


@router.get("/health/live", summary="OIP liveness: 200 while the process serves", status_code=200,
            response_class=Response, responses={200: {"description": "Live"}})
async def live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="OIP readiness: 200 once every model is warm", response_class=Response,
            responses={200: {"description": "Ready"}, **problem_responses(503)})
async def ready(runtime: RuntimeDep) -> Response:
    if runtime.ready and not runtime.shutting_down:
        return Response(status_code=200)
    return Response(status_code=503, headers={"Retry-After": "5"})


@router.get("", response_model=OipServerMetadata, summary="OIP server metadata", responses=problem_responses(401))
async def server_metadata() -> OipServerMetadata:
    return oip_handler.server_metadata()


@router.get("/models/{name}", response_model=OipModelMetadata, summary="OIP model metadata",
            responses=problem_responses(401, 404))
async def model_metadata(runtime: RuntimeDep, name: str = ModelName) -> OipModelMetadata:
    return oip_handler.model_metadata(runtime, name)


@router.get("/models/{name}/ready", summary="OIP model readiness", response_class=Response,
            responses={200: {"description": "The model serves"}, **problem_responses(401, 404, 503)})
async def model_ready(runtime: RuntimeDep, name: str = ModelName) -> Response:
    oip_handler.model_ready(runtime, name)
    return Response(status_code=200)


INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/OipInferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                            "description": "Binary tensor extension: the JSON header (its length in "
                                                           "the Inference-Header-Content-Length header), then the "
                                                           "tensors' bytes."}}}}}


@router.post("/models/{name}/infer", response_model=OipInferResponse, summary="OIP inference (and explanations)",
             responses=problem_responses(*IMAGE_PROBLEMS), openapi_extra=INFER_BODY)
async def infer(request: Request, runtime: RuntimeDep, call: CallDep, name: str = ModelName) -> OipInferResponse:
    body, binary = parse_infer_body(await request.body(), request.headers.get("inference-header-content-length"))
    return await unless_disconnected(request, oip_handler.infer(runtime, name, body, call, binary=binary))
