"""POST /v1/classify: the top-k classes of an image."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from service.pipeline import finish_classify, ms_since, plan_classify
from service.routes.inputs import image_request_body, read_image_request
from service.routes.pose import ERRORS
from service.schemas import ClassifyOptions, ClassifyRequest, ClassifyResponse, Timings
from service.state import ServiceDep, ServiceState

router = APIRouter(prefix="/v1", tags=["classify"])


async def run_classify(service: ServiceState, request: Request) -> ClassifyResponse:
    started = time.perf_counter()
    data, options = await read_image_request(request, ClassifyOptions)
    loaded = service.model_for(options.model, "classification", request)
    batcher = service.batchers[loaded.name]
    with batcher.expect() as token:
        x, timings = await service.in_thread(plan_classify, data, loaded.spec, service.settings.max_image_pixels)
        result = await batcher.submit(x, token)
    t = time.perf_counter()
    classes = finish_classify(result.outputs[0], loaded.spec, options.top_k)
    return ClassifyResponse(
        model=loaded.name,
        backend=loaded.backend,
        classes=classes,
        timings=Timings(
            **timings,
            queue_ms=result.queue_seconds * 1000.0,
            inference_ms=result.compute_seconds * 1000.0,
            postprocess_ms=ms_since(t),
            total_ms=ms_since(started),
        ),
    )


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="Top-k classes of an image",
    openapi_extra=image_request_body(ClassifyRequest.model_json_schema()),
)
async def classify(request: Request, service: ServiceDep) -> ClassifyResponse:
    """Send an image (multipart field `image`, JSON with base64 `image`, or raw image/* bytes)."""
    return await service.with_deadline(run_classify(service, request), request)
