"""GET /v1/models and /v1/models/{name}: what each served model is, costs and comes from."""

from __future__ import annotations

from fastapi import APIRouter

from service.backends import LoadedModel
from service.errors import ApiError
from service.schemas import ErrorResponse, ModelInfo, ModelList
from service.state import ServiceDep, ServiceState

router = APIRouter(prefix="/v1", tags=["models"])


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def describe(service: ServiceState, loaded: LoadedModel) -> ModelInfo:
    spec, c = loaded.spec, loaded.complexity
    return ModelInfo(
        name=loaded.name,
        task=spec.task,
        backend=loaded.backend,
        input_size=list(spec.input_size),
        in_chans=spec.in_chans,
        heatmap_size=list(spec.heatmap_size) if spec.heatmap_size else None,
        keypoint_names=list(spec.keypoint_names),
        skeleton=[list(p) for p in spec.skeleton],
        flip_pairs=[list(p) for p in spec.flip_pairs],
        num_classes=spec.num_classes,
        class_names=list(spec.class_names),
        mean=list(spec.mean),
        std=list(spec.std),
        params_binary=_int_or_none(c.get("params_binary")),
        params_float=_int_or_none(c.get("params_float")),
        bops=_float_or_none(c.get("bops")),
        flops=_float_or_none(c.get("flops")),
        ops=_float_or_none(c.get("ops")),
        packed_bytes=_int_or_none(c.get("packed_bytes")),
        weights_sha256=loaded.sha256,
        weights_path=loaded.weights_path,
        provenance=loaded.provenance,
        metrics=loaded.metrics,
        load_seconds=loaded.load_seconds,
        warmup_seconds=loaded.warmup_seconds,
        default_for=[task for task, name in service.default_model.items() if name == loaded.name],
        ready=service.ready,
    )


@router.get("/models", response_model=ModelList, summary="The models this server serves")
async def list_models(service: ServiceDep) -> ModelList:
    infos = [describe(service, m) for m in service.models.values()]
    return ModelList(models=infos, ready=service.ready, backend_setting=service.settings.backend)


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    responses={404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    summary="One served model",
)
async def get_model(name: str, service: ServiceDep) -> ModelInfo:
    if name not in service.settings.models:
        raise ApiError(404, "model_not_found", f"model {name!r} is not served here; served: {service.settings.models}")
    if name not in service.models:
        raise ApiError(503, "not_ready", service.not_ready_reason(), {"Retry-After": "2"})
    return describe(service, service.models[name])
