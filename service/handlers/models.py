"""Model and method catalogue: ``/models``, ``/models/{name}``, ``/methods``."""

from __future__ import annotations

from ..api.schemas import LayerChoice, MethodInfo, MethodList, MethodTrustInfo, ModelDetail, ModelInfo, ModelList
from ..engine import METHODS, describe
from ..registry import LoadedModel
from ..runtime import Runtime
from ..trust import method_trust_view

__all__ = ["list_methods", "list_models", "model_detail", "model_info"]


def model_info(runtime: Runtime, model: LoadedModel) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        task=model.task,
        num_classes=model.num_classes,
        input_size=list(model.spec.input_size),
        channels=model.spec.channels,
        device=str(model.device),
        target_layer=model.target_layer,
        target_layer_reason=model.capabilities.target_layer_reason,
        methods=model.capabilities.usable_methods,
        default=model.name == runtime.registry.default_name,
        score_threshold=model.spec.score_threshold if model.task == "detection" else None,
        spatial_dims=model.spec.spatial_dims,
        keep_aspect=model.spec.keep_aspect,
        **({"patch_size": model.spec.patch_size, "stride": model.spec.stride, "max_patches": model.spec.max_patches}
           if model.task == "mil" else {}),
    )


def list_models(runtime: Runtime) -> ModelList:
    return ModelList(models=[model_info(runtime, m) for m in runtime.registry.loaded()])


def model_detail(runtime: Runtime, name: str) -> ModelDetail:
    model = runtime.registry.get(name)
    caps = model.capabilities
    layers = [LayerChoice(name=d.name, layout=d.layout, grid=list(d.grid), channels=d.channels, prefix=d.prefix)
              for d in caps.layer_details]
    return ModelDetail(**model_info(runtime, model).model_dump(), labels=model.labels, layers=layers,
                       refused={m: why for m, why in caps.methods.items() if why is not None},
                       caveats={m: list(notes) for m, notes in caps.caveats.items()},
                       trust=model_trust(model))


def model_trust(model: LoadedModel) -> dict[str, MethodTrustInfo]:
    """Per usable method: the flags measured on the model's data (``method_trust``), else the demo's sanity."""
    measured = model.spec.method_trust
    return {m: MethodTrustInfo.model_validate(method_trust_view(m, METHODS[m].sanity, measured.get(m)))
            for m in model.capabilities.usable_methods if m in METHODS}


def list_methods() -> MethodList:
    return MethodList(methods=[MethodInfo.model_validate(m) for m in describe()])
