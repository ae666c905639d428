from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from ...registry import LoadedModel
from ...runtime import Runtime
from ..deps import get_runtime
from ..schemas import PROBLEM_RESPONSES, ModelDetail, ModelInfo, ModelList

router = APIRouter(tags=["models"])


def model_info(runtime: Runtime, model: LoadedModel) -> dict:
    return {
        "name": model.name,
        "task": model.task,
        "num_classes": model.num_classes,
        "input_size": model.spec.input_size,
        "channels": model.spec.channels,
        "device": str(model.device),
        "target_layer": model.target_layer,
        "methods": runtime.methods_for(model),
        "default": model.name == runtime.registry.default_name,
    }


@router.get("/models", response_model=ModelList, summary="Loaded models")
async def list_models(runtime: Runtime = Depends(get_runtime)) -> ModelList:
    return ModelList(models=[ModelInfo(**model_info(runtime, m)) for m in runtime.registry.loaded()])


@router.get("/models/{name}", response_model=ModelDetail, summary="One model, with its labels",
            responses={k: v for k, v in PROBLEM_RESPONSES.items() if k in (404, 503)})
async def get_model(name: str = Path(max_length=64), runtime: Runtime = Depends(get_runtime)) -> ModelDetail:
    model = runtime.registry.get(name)
    return ModelDetail(**model_info(runtime, model), labels=model.labels)
