"""Reading an image request in any of its three forms: multipart upload (field `image`), JSON with the image in
base64, or the raw image bytes with an image/* content type. Options come from the query string, overridden by form
or JSON fields."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.errors import ApiError
from service.pipeline import decode_base64

O = TypeVar("O", bound=BaseModel)

JSON_FIELDS = ("boxes",)  # fields given as JSON text in forms and query strings


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def validate(cls: type[O], data: dict[str, Any]) -> O:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc)) from None


def _text_fields(items: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        if not isinstance(value, str):
            continue
        if key in JSON_FIELDS:
            try:
                out[key] = json.loads(value)
            except ValueError:
                raise ApiError(422, "invalid_request", f"{key} must be JSON, e.g. [[10, 20, 110, 220]]") from None
        else:
            out[key] = value
    return out


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_image_request(request: Request, options_cls: type[O]) -> tuple[bytes, O]:
    """(image bytes, options). 415 for a content type that carries no image, 422 for invalid fields."""
    fields = _text_fields(list(request.query_params.items()))
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        form = await request.form()
        upload = form.get("image", form.get("file"))
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "the form has no file field named image; upload the image as `image`")
        part_type = (upload.content_type or "").split(";")[0].strip().lower()
        if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
            raise ApiError(415, "unsupported_media_type",
                           f"the uploaded file is {part_type}; upload an image (image/jpeg, image/png)")  # fmt: skip
        data = await upload.read()
        fields.update(_text_fields([(k, v) for k, v in form.multi_items() if k not in ("image", "file")]))
    elif ctype == "application/json":
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(422, "invalid_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(422, "invalid_json", "the JSON body must be an object with at least an `image` field")
        image = body.pop("image", None)
        if not isinstance(image, str):
            raise ApiError(422, "missing_image", "the JSON body needs `image`: the image file in base64")
        data = decode_base64(image)
        fields.update(body)
    elif ctype.startswith("image/") or ctype == "application/octet-stream":
        data = await request.body()
    else:
        shown = ctype or "no content type"
        raise ApiError(
            415, "unsupported_media_type",
            f"{shown} carries no image; send multipart/form-data (file field `image`), application/json "
            "(base64 `image`) or the image bytes as image/jpeg or image/png",
        )  # fmt: skip
    return data, validate(options_cls, fields)


def image_request_body(json_schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI requestBody for the three accepted forms."""
    form_props = {k: v for k, v in json_schema.get("properties", {}).items() if k != "image"}
    form_props["image"] = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"type": "object", "properties": form_props, "required": ["image"]}},
                "application/json": {"schema": json_schema},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }
