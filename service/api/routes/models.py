from __future__ import annotations

from fastapi import APIRouter, Path

from ...handlers import models as models_handler
from ..deps import RuntimeDep
from ..schemas import ModelDetail, ModelList, problem_responses

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, summary="Loaded models", responses=problem_responses(401))
async def list_models(runtime: RuntimeDep) -> ModelList:
    return models_handler.list_models(runtime)


@router.get("/models/{name}", response_model=ModelDetail, summary="One model, with its labels",
            responses=problem_responses(401, 404, 503))
async def get_model(runtime: RuntimeDep, name: str = Path(max_length=64)) -> ModelDetail:
    return models_handler.model_detail(runtime, name)
