"""Every setting of the service in one place: BINPOSE_ environment variables, or flags of `binpose serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The repository's weights/ folder (bundled .bnn files and manifest.json), wherever the server is started from.
BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
BackendName = Literal["auto", "packed", "torch", "onnx"]


class Settings(BaseSettings):
    """Service configuration. Lists may be given as JSON or comma-separated (BINPOSE_MODELS=sbpn-r18,resnet18)."""

    model_config = SettingsConfigDict(env_prefix="BINPOSE_", extra="ignore")

    models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["sbpn-r18", "resnet18-small"], description="registered model names to load"
    )
    backend: BackendName = Field(
        default="auto",
        description="packed (engine.load of weights/NAME.bnn), torch (float-simulated), onnx (ONNX Runtime); "
        "auto = packed where weights/NAME.bnn and the engine exist, otherwise torch",
    )
    pose_model: str | None = Field(default=None, description="default pose model; the first pose model loaded if unset")
    classify_model: str | None = Field(default=None, description="default classification model; the first one if unset")
    weights_dir: Path = Field(
        default=BUNDLED_WEIGHTS, description="where NAME.bnn, NAME.pt, NAME.onnx and manifest.json live"
    )
    cache_dir: Path | None = Field(default=None, description="where ONNX exports are written; a temporary folder if unset")
    model_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="models.build overrides per model for the torch and onnx backends, as JSON, e.g. "
        '{"sbpn-r18": {"binary": false}} serves the float twin',
    )
    seed: int = Field(default=0, description="seed of random-init weights when a model has no bundled weights")

    max_batch_size: int | None = Field(
        default=None, ge=1, le=1024,
        description="most crops/images per network call; unset = the backend's own (packed 4, torch and onnx 16)",
    )  # fmt: skip
    max_wait_ms: float = Field(
        default=4.0, ge=0, le=10_000, description="how long a batch waits to fill once it has one item"
    )
    queue_size: int = Field(default=256, ge=1, description="most crops waiting per model; beyond it requests get 503")
    request_timeout_s: float = Field(default=30.0, gt=0, description="whole-request deadline; beyond it requests get 504")
    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1024, description="larger bodies get 413")
    max_image_pixels: int = Field(default=40_000_000, ge=1, description="larger images (read from the header) get 413")
    max_persons: int = Field(default=64, ge=1, description="upper bound of persons per pose request")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    threads: int | None = Field(
        default=None,
        ge=1,
        description="intra-op threads of the backends (the engine reads BINPOSE_THREADS too); "
        "unset = each library's default",
    )
    infer_process: bool = Field(
        default=True,
        description="run each model's network in a child process of its own, so that the server's event loop and "
        "image threads never hold up the engine's per-layer calls (Python's GIL); false = a thread of the server",
    )
    shutdown_timeout_s: float = Field(default=30.0, gt=0, description="how long SIGTERM waits for in-flight requests")
    warmup: bool = Field(default=True, description="run each model once on a full batch before reporting ready")
    log_level: str = "info"

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [name.strip() for name in text.split(",") if name.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.models:
            raise ValueError("models is empty: name at least one registered model, e.g. BINPOSE_MODELS=sbpn-r18")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a name twice: {self.models}")
        for key in ("pose_model", "classify_model"):
            name = getattr(self, key)
            if name is not None and name not in self.models:
                raise ValueError(f"{key}={name!r} is not among the loaded models {self.models}; add it to models")
        return self
