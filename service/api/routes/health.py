from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ...runtime import Runtime
from ..deps import get_runtime
from ..schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: 200 while the process serves")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="Readiness: 200 once every model is loaded and warm",
            responses={503: {"model": Readiness, "description": "Loading, failed or shutting down"}})
async def readyz(runtime: Runtime = Depends(get_runtime)) -> Response:
    reg = runtime.registry
    per_model = {name: ("loaded" if name in runtime.batchers else ("failed" if reg.state == "failed" else "loading"))
                 for name in reg.names()}
    if runtime.shutting_down:
        status, detail = "shutting-down", "the service is draining"
    elif runtime.ready:
        return JSONResponse(Readiness(status="ready", models=per_model).model_dump(exclude_none=True))
    elif reg.state == "failed":
        status, detail = "failed", reg.error
    else:
        status, detail = "loading", "models are loading"
    body = Readiness(status=status, models=per_model, detail=detail).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
async def metrics(runtime: Runtime = Depends(get_runtime)) -> Response:
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
