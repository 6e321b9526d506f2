"""Open Inference Protocol v2 (KServe / Triton REST): tensors in, tensors out. Errors are {"error": "message"}."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import service
from service.backends import LoadedModel
from service.errors import ApiError
from service.schemas import V2InferRequest, V2InferResponse, V2ModelMetadata, V2Tensor, V2TensorMeta
from service.state import ServiceDep, ServiceState

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])


def _output_meta(loaded: LoadedModel) -> V2TensorMeta:
    spec = loaded.spec
    if spec.task == "pose":
        h, w = spec.heatmap_size or (spec.input_size[0] // 4, spec.input_size[1] // 4)
        return V2TensorMeta(name="heatmaps", datatype="FP32", shape=[-1, spec.num_keypoints, h, w])
    return V2TensorMeta(name="logits", datatype="FP32", shape=[-1, spec.num_classes])


def _served(service: ServiceState, name: str) -> LoadedModel:
    if name not in service.settings.models:
        raise ApiError(404, "model_not_found", f"model {name!r} is not served here; served: {service.settings.models}")
    if name not in service.models:
        raise ApiError(503, "not_ready", service.not_ready_reason(), {"Retry-After": "2"})
    return service.models[name]


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, object]:
    return {"name": "binpose", "version": getattr(service, "__version__", "0.1.0"), "extensions": []}


@router.get("/health/live", summary="Liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Readiness (503 until every model is loaded and warmed)")
async def ready(service: ServiceDep) -> Response:
    return JSONResponse({"ready": service.ready}, status_code=200 if service.ready else 503)


@router.get("/models/{name}", response_model=V2ModelMetadata, summary="Model metadata: input and output tensors")
async def model_metadata(name: str, service: ServiceDep) -> V2ModelMetadata:
    loaded = _served(service, name)
    c, (h, w) = loaded.spec.in_chans, loaded.spec.input_size
    return V2ModelMetadata(
        name=name,
        versions=[loaded.sha256[:12]] if loaded.sha256 else [],
        platform=f"binpose_{loaded.backend}",
        inputs=[V2TensorMeta(name="input", datatype="FP32", shape=[-1, c, h, w])],
        outputs=[_output_meta(loaded)],
    )


@router.get("/models/{name}/ready", summary="Model readiness")
async def model_ready(name: str, service: ServiceDep) -> Response:
    ok = name in service.models and service.ready
    if name not in service.settings.models:
        _served(service, name)
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


def _input_array(loaded: LoadedModel, body: V2InferRequest, max_items: int) -> np.ndarray:
    if len(body.inputs) != 1:
        raise ApiError(400, "bad_inputs", f"model {loaded.name!r} takes exactly one input tensor, got {len(body.inputs)}")
    tensor = body.inputs[0]
    if tensor.datatype.upper() != "FP32":
        raise ApiError(400, "bad_datatype", f"input datatype must be FP32, got {tensor.datatype}")
    c, (h, w) = loaded.spec.in_chans, loaded.spec.input_size
    shape = list(tensor.shape)
    if len(shape) != 4 or shape[1:] != [c, h, w] or not 1 <= shape[0] <= max_items:
        raise ApiError(
            400, "bad_shape",
            f"input shape must be [N, {c}, {h}, {w}] with 1 <= N <= {max_items}, got {shape}",
        )  # fmt: skip
    try:
        x = np.asarray(tensor.data, dtype=np.float32).reshape(shape)
    except (ValueError, TypeError):
        raise ApiError(400, "bad_data", f"data must hold {int(np.prod(shape))} numbers for shape {shape}") from None
    if not np.isfinite(x).all():
        raise ApiError(400, "bad_data", "input data must be finite numbers")
    return x


@router.post("/models/{name}/infer", response_model=V2InferResponse, summary="Run the network on an FP32 tensor")
async def infer(name: str, body: V2InferRequest, request: Request, service: ServiceDep) -> V2InferResponse:
    loaded = _served(service, name)
    request.state.model = name
    x = _input_array(loaded, body, service.settings.queue_size)
    result = await service.with_deadline(service.batchers[name].submit(x), request)
    out = np.ascontiguousarray(result.outputs, dtype=np.float32)
    meta = _output_meta(loaded)
    return V2InferResponse(
        model_name=name,
        model_version=loaded.sha256[:12] if loaded.sha256 else None,
        id=body.id,
        outputs=[V2Tensor(name=meta.name, shape=list(out.shape), datatype="FP32", data=out.reshape(-1).tolist())],
    )
