"""POST /v1/pose and /v1/pose/render: keypoints of the people in an image."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.draw import draw_pose
from service.errors import ApiError
from service.imaging import encode_image
from service.pipeline import finish_pose, ms_since, plan_pose
from service.routes.inputs import image_request_body, read_image_request
from service.schemas import ErrorResponse, PoseOptions, PoseRequest, PoseResponse, RenderOptions, Timings
from service.state import ServiceDep, ServiceState

# Up to this many persons, the keypoints are decoded on the event loop (about 0.25 ms for one person at 128x96): a
# thread hand-off costs about as much CPU, and skipping it changed requests/s under load by -1% to +16% (median +4%;
# 32 clients, 7 paired runs). More persons go to a worker thread, so that no request holds the loop for long.
INLINE_FINISH_MAX_PERSONS = 4

router = APIRouter(prefix="/v1", tags=["pose"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "a box lies outside the image",
        404: "unknown model",
        413: "body or image too large",
        415: "not an image",
        422: "invalid fields or undecodable image",
        503: "overloaded or not ready (Retry-After)",
        504: "request timeout",
    }.items()
}


async def run_pose(
    service: ServiceState, request: Request, options_cls: type[PoseOptions]
) -> tuple[PoseResponse, PoseOptions, object]:
    started = time.perf_counter()
    data, options = await read_image_request(request, options_cls)
    loaded = service.model_for(options.model, "pose", request)
    s = service.settings
    batcher = service.batchers[loaded.name]
    with batcher.expect() as token:
        # a JPEG may be decoded at reduced scale, except for a rendered answer, which draws on the full image
        reduce = not isinstance(options, RenderOptions)
        plan = await service.in_thread(plan_pose, data, options, loaded.spec, s.max_image_pixels, s.max_persons, reduce)
        result = await batcher.submit(plan.inputs, token)
    t = time.perf_counter()
    if len(plan.boxes) <= INLINE_FINISH_MAX_PERSONS:
        persons = finish_pose(plan, result.outputs, loaded.spec, options.score_threshold)
    else:
        persons = await service.in_thread(finish_pose, plan, result.outputs, loaded.spec, options.score_threshold)
    service.metrics.persons.labels(model=loaded.name).observe(len(persons))
    timings = Timings(
        **plan.timings,
        queue_ms=result.queue_seconds * 1000.0,
        inference_ms=result.compute_seconds * 1000.0,
        postprocess_ms=ms_since(t),
        total_ms=ms_since(started),
    )
    response = PoseResponse(
        model=loaded.name,
        backend=loaded.backend,
        image_size={"width": plan.width, "height": plan.height},  # type: ignore[arg-type]
        persons=persons,
        timings=timings,
    )
    return response, options, plan.rgb


@router.post(
    "/pose",
    response_model=PoseResponse,
    responses=ERRORS,  # type: ignore[arg-type]
    summary="Keypoints of every person in an image",
    openapi_extra=image_request_body(PoseRequest.model_json_schema()),
)
async def pose(request: Request, service: ServiceDep) -> PoseResponse:
    """Send an image (multipart field `image`, JSON with base64 `image`, or raw image/* bytes) and optionally person
    boxes; without boxes people are found by OpenCV's HOG detector, or the whole image is one person
    (`detector=whole`). Boxes of this request and of concurrent requests go through the network together."""
    response, _, _ = await service.with_deadline(run_pose(service, request, PoseOptions), request)
    return response


@router.post(
    "/pose/render",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}, **ERRORS},  # type: ignore[dict-item]
    summary="The same as /v1/pose, answered as an image with boxes and skeletons drawn",
    openapi_extra=image_request_body(PoseRequest.model_json_schema()),
)
async def pose_render(request: Request, service: ServiceDep) -> Response:
    response, options, rgb = await service.with_deadline(run_pose(service, request, RenderOptions), request)
    if not isinstance(options, RenderOptions) or rgb is None:
        raise ApiError(500, "internal_error", "render lost its image")
    spec = service.models[response.model].spec
    boxes = [p.box for p in response.persons]
    kpts = [[(k.x, k.y, k.score) for k in p.keypoints] for p in response.persons]
    drawn = await service.in_thread(draw_pose, rgb, boxes, kpts, spec.skeleton, options.score_threshold)
    body = await service.in_thread(encode_image, drawn, options.format)
    headers = {
        "X-Binpose-Persons": str(len(response.persons)),
        "X-Binpose-Total-Ms": f"{response.timings.total_ms:.2f}",
        "X-Binpose-Model": response.model,
    }
    return Response(body, media_type=f"image/{options.format}", headers=headers)
