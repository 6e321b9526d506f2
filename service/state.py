"""What the running service holds: settings, metrics, loaded models and their batchers, and readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from service.backends import LoadedModel, LoadOptions, load_model
from service.batching import MicroBatcher
from service.errors import ApiError
from service.isolation import ChildProcessInfer, load_in_child
from service.metrics import Metrics
from service.settings import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")


class ServiceState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.models: dict[str, LoadedModel] = {}
        self.batchers: dict[str, MicroBatcher] = {}
        self.ready = False
        self.load_error: str | None = None
        self.loading: str | None = None
        # One thread runs the networks, or hands their batches to the models' own processes (settings.infer_process);
        # two prepare images (decode, detect, crop), so that work never runs on the event loop.
        self.inference_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="binpose-infer")
        self.prep_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="binpose-prep")
        self._load_task: asyncio.Task[None] | None = None
        self.default_model: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start_loading(self) -> None:
        self._load_task = asyncio.get_running_loop().create_task(self._load_all(), name="binpose-load-models")

    async def _load_all(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        options = LoadOptions(
            weights_dir=s.weights_dir,
            cache_dir=s.cache_dir,
            threads=s.threads or 0,
            seed=s.seed,
            overrides=s.model_overrides,
        )
        try:
            for name in s.models:
                self.loading = name
                load = load_in_child if s.infer_process else load_model
                loaded = await loop.run_in_executor(self.inference_executor, load, name, s.backend, options)
                if s.warmup:
                    await loop.run_in_executor(self.inference_executor, loaded.warm_up, self.batch_size(loaded))
                self._register(loaded)
            self._pick_defaults()
        except Exception as exc:
            logger.exception("loading models failed; the service stays not-ready")
            self.load_error = f"{type(exc).__name__}: {exc}"
            return
        finally:
            self.loading = None
        self.ready = True
        self.metrics.ready.set(1)
        logger.info("ready: %s", ", ".join(f"{m.name} ({m.backend})" for m in self.models.values()))

    def _register(self, loaded: LoadedModel) -> None:
        s = self.settings
        self.models[loaded.name] = loaded
        batcher = MicroBatcher(
            loaded.name,
            loaded.backend,
            loaded.infer,
            self.inference_executor,
            max_batch_size=self.batch_size(loaded),
            max_wait_s=s.max_wait_ms / 1000.0,
            queue_size=s.queue_size,
            metrics=self.metrics,
        )
        batcher.start()
        self.batchers[loaded.name] = batcher
        m = self.metrics
        m.record_model(loaded.name, loaded.backend, loaded.spec.task, loaded.complexity, loaded.sha256 or "")
        m.model_load_seconds.labels(model=loaded.name, backend=loaded.backend).set(loaded.load_seconds)
        m.model_warmup_seconds.labels(model=loaded.name, backend=loaded.backend).set(loaded.warmup_seconds)
        logger.info("model %s: load %.2f s, warm-up %.2f s", loaded.name, loaded.load_seconds, loaded.warmup_seconds)

    def batch_size(self, loaded: LoadedModel) -> int:
        """Most items per network call: BINPOSE_MAX_BATCH_SIZE, else what the model's backend runs best."""
        return self.settings.max_batch_size or loaded.batch_size

    def _pick_defaults(self) -> None:
        s = self.settings
        for task, chosen in (("pose", s.pose_model), ("classification", s.classify_model)):
            if chosen is not None:
                if self.models[chosen].spec.task != task:
                    raise ValueError(f"{chosen!r} is a {self.models[chosen].spec.task} model, not a {task} model")
                self.default_model[task] = chosen
                continue
            for name, loaded in self.models.items():
                if loaded.spec.task == task:
                    self.default_model[task] = name
                    break

    async def shutdown(self) -> None:
        """Finish queued work, then release the threads. Called after uvicorn has drained the connections."""
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        self.ready = False
        self.metrics.ready.set(0)
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        self.inference_executor.shutdown(wait=True, cancel_futures=True)
        self.prep_executor.shutdown(wait=True, cancel_futures=True)
        for loaded in self.models.values():
            if isinstance(loaded.infer, ChildProcessInfer):
                loaded.infer.close()

    # -- request helpers ---------------------------------------------------------------------------------------------

    def model_for(self, name: str | None, task: str, request: Request | None = None) -> LoadedModel:
        """The loaded model a request asks for (or the task's default). 404 unknown, 400 wrong task, 503 loading."""
        if name is not None and name not in self.settings.models:
            raise ApiError(404, "model_not_found", f"model {name!r} is not served here; see GET /v1/models")
        if not self.ready:
            raise ApiError(503, "not_ready", self.not_ready_reason(), {"Retry-After": "2"})
        if name is None:
            if task not in self.default_model:
                raise ApiError(404, "model_not_found", f"no {task} model is loaded; start the service with one")
            name = self.default_model[task]
        loaded = self.models[name]
        if loaded.spec.task != task:
            raise ApiError(400, "wrong_task", f"model {name!r} is a {loaded.spec.task} model, not a {task} model")
        if request is not None:
            request.state.model = name
        return loaded

    def not_ready_reason(self) -> str:
        if self.load_error:
            return f"model loading failed: {self.load_error}"
        if self.loading:
            return f"loading model {self.loading!r}; retry shortly"
        return "models are loading; retry shortly"

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.prep_executor, fn, *args)

    async def with_deadline(self, work: Awaitable[T], request: Request) -> T:
        try:
            return await asyncio.wait_for(work, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            model = str(getattr(request.state, "model", ""))
            self.metrics.rejected.labels(model=model, reason="timeout").inc()
            raise ApiError(
                504, "timeout",
                f"the request took longer than {self.settings.request_timeout_s} s (BINPOSE_REQUEST_TIMEOUT_S); "
                "send fewer boxes or retry when the server is less busy",
            ) from None  # fmt: skip


async def get_service(request: Request) -> ServiceState:
    # async: FastAPI runs a plain `def` dependency in its thread pool, one thread hand-off more per request
    service: ServiceState = request.app.state.service
    return service


ServiceDep = Annotated[ServiceState, Depends(get_service)]
