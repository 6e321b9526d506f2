"""Request and response bodies (pydantic v2). These are the API's documentation too: see /docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Box = Annotated[
    list[FiniteFloat],
    Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in image pixels, x2 > x1, y2 > y1"),
]


class PoseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(default=None, description="a loaded pose model; the default pose model if unset")
    boxes: list[Box] | None = Field(default=None, description="person boxes; without them people are detected")
    detector: Literal["hog", "whole"] = Field(
        default="hog", description="without boxes: hog = OpenCV's HOG people detector, whole = the whole image is one person"
    )
    flip: bool = Field(default=False, description="flip test: average the network on the crop and on its mirror")
    score_threshold: float = Field(default=0.2, ge=0.0, le=1.0, description="keypoints below it are marked not visible")
    max_persons: int = Field(default=20, ge=1, description="keep at most this many persons (best detections first)")

    @field_validator("boxes")
    @classmethod
    def _boxes_ordered(cls, boxes: list[list[float]] | None) -> list[list[float]] | None:
        for i, (x1, y1, x2, y2) in enumerate(boxes or []):
            if not (x2 > x1 and y2 > y1):
                raise ValueError(f"box {i} {[x1, y1, x2, y2]} must satisfy x2 > x1 and y2 > y1 ([x1, y1, x2, y2])")
        return boxes


class PoseRequest(PoseOptions):
    image: str = Field(..., description="the image file (JPEG, PNG, ...) in base64")


class ClassifyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str | None = Field(default=None, description="a loaded classification model; the default one if unset")
    top_k: int = Field(default=5, ge=1, le=1000)


class ClassifyRequest(ClassifyOptions):
    image: str = Field(..., description="the image file (JPEG, PNG, ...) in base64")


class Keypoint(BaseModel):
    name: str
    x: float
    y: float
    score: float
    visible: bool = Field(description="score >= score_threshold")


class Person(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] in image pixels")
    box_source: Literal["client", "hog", "whole"]
    box_score: float
    score: float = Field(description="instance score: mean score of the visible keypoints (0 if none)")
    keypoints: list[Keypoint]


class Timings(BaseModel):
    decode_ms: float = 0.0
    detect_ms: float = 0.0
    preprocess_ms: float = 0.0
    queue_ms: float = Field(default=0.0, description="wait in the micro-batch queue")
    inference_ms: float = Field(default=0.0, description="network time of the batches this request was in")
    postprocess_ms: float = 0.0
    total_ms: float = 0.0


class ImageSize(BaseModel):
    width: int
    height: int


class PoseResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    backend: str
    image_size: ImageSize
    persons: list[Person]
    timings: Timings


class ClassScore(BaseModel):
    index: int
    name: str
    probability: float


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model: str
    backend: str
    classes: list[ClassScore]
    timings: Timings


class ModelInfo(BaseModel):
    name: str
    task: str
    backend: str
    input_size: list[int]
    in_chans: int
    heatmap_size: list[int] | None = None
    keypoint_names: list[str] = []
    skeleton: list[list[int]] = []
    flip_pairs: list[list[int]] = []
    num_classes: int = 0
    class_names: list[str] = []
    mean: list[float] = []
    std: list[float] = []
    params_binary: int | None = None
    params_float: int | None = None
    bops: float | None = None
    flops: float | None = None
    ops: float | None = None
    packed_bytes: int | None = None
    weights_sha256: str | None = None
    weights_path: str | None = None
    provenance: Any = None
    metrics: dict[str, Any] = {}
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    default_for: list[str] = Field(default_factory=list, description="tasks this model serves when none is named")
    ready: bool = False


class ModelList(BaseModel):
    models: list[ModelInfo]
    ready: bool
    backend_setting: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str
    models: dict[str, str] = {}
    detail: str | None = None


# Open Inference Protocol v2 ------------------------------------------------------------------------------------------


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]


class V2TensorMeta(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str] = []
    platform: str
    inputs: list[V2TensorMeta]
    outputs: list[V2TensorMeta]


class RenderOptions(PoseOptions):
    format: Literal["jpeg", "png"] = Field(default="jpeg", description="image format of the answer")
