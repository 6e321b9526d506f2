"""Micro-batching: crops from one request and from concurrent requests share network calls.

A batch starts when it holds `max_batch_size` items, or when its oldest item has waited `max_wait_s`, or at once when
no other request is on its way: requests announce themselves (`expect`) while they decode and crop, so a lone request
pays no wait while concurrent ones still meet in one batch. Items that arrive while the network is busy simply queue
and go together in the next call.

The queue is bounded (in items): a request that would overflow it is refused at once (503 + Retry-After), so latency
stays bounded under overload instead of growing without limit. The event loop keeps accepting and answering while a
batch computes: a network in its own process (service.isolation) is awaited on the loop itself (`infer_async`: the
child's replies wake the loop), and a full batch may follow one still computing into the child's pipe; a network in
this process runs in a worker thread, one batch at a time. A request cancelled by its deadline leaves its waiting
items behind; they free their places at once and are never computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import ApiError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchResult:
    outputs: np.ndarray  # one row per submitted item, in order
    queue_seconds: float  # longest wait of the request's items before their batch started
    compute_seconds: float  # network time of the batches the request's items were in


@dataclass
class Expectation:
    done: bool = False


@dataclass
class _Job:
    items: np.ndarray
    future: asyncio.Future[BatchResult]
    enqueued_at: float
    outputs: list[np.ndarray | None] = field(default_factory=list)
    remaining: int = 0
    queued: int = 0  # items still waiting in the queue
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0
    cancelled: bool = False


class MicroBatcher:
    """One per loaded model. `submit` is awaited by request handlers; `run` is the single consumer."""

    def __init__(
        self,
        model: str,
        backend: str,
        infer: InferFn,
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_s: float,
        queue_size: int,
        metrics: Metrics,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.model = model
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._infer = infer
        self._executor = executor
        self._metrics = metrics
        self._pending: deque[tuple[_Job, int]] = deque()
        self._live = 0  # waiting items of requests that still want them
        self._expected = 0  # requests announced by `expect` that have not submitted yet
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # The average batch time, for Retry-After.
        self._mean_compute_s = 0.05
        self._in_flight = 0  # batches sent to the network and not answered yet
        self._computing: set[asyncio.Task[None]] = set()
        self._last_done = 0.0  # when the last batch's outputs came back

    @property
    def depth(self) -> int:
        return self._live

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model}")

    async def close(self) -> None:
        """Stop taking work, finish what is queued, then return."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    def retry_after_s(self) -> int:
        batches_ahead = math.ceil(max(self.depth, 1) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._mean_compute_s))

    @contextlib.contextmanager
    def expect(self) -> Iterator[Expectation]:
        """Announce a request that will `submit` soon (it is decoding and cropping), so a filling batch waits for
        it, up to max_wait. Pass the yielded token to `submit`; leaving the block without submitting withdraws it."""
        token = Expectation()
        self._expected += 1
        try:
            yield token
        finally:
            self._withdraw(token)

    def _withdraw(self, token: Expectation | None) -> None:
        if token is not None and not token.done:
            token.done = True
            self._expected -= 1
            self._wakeup.set()  # a batch waiting for this request need not wait any more

    async def submit(self, items: np.ndarray, expectation: Expectation | None = None) -> BatchResult:
        self._withdraw(expectation)
        n = int(items.shape[0])
        if n == 0:
            return BatchResult(np.zeros((0,), np.float32), 0.0, 0.0)
        if self._closed:
            raise ApiError(503, "shutting_down", "the server is shutting down; retry on another instance",
                           {"Retry-After": "1"})  # fmt: skip
        if n > self.queue_size:
            raise ApiError(
                413, "too_many_items",
                f"this request needs {n} network inputs but the queue holds at most {self.queue_size}; "
                "send fewer boxes or raise BINPOSE_QUEUE_SIZE",
            )  # fmt: skip
        if self.depth + n > self.queue_size:
            self._metrics.rejected.labels(model=self.model, reason="overload").inc()
            retry = self.retry_after_s()
            raise ApiError(
                503, "overloaded",
                f"model {self.model!r} has {self.depth} inputs queued (limit {self.queue_size}); retry in {retry} s",
                {"Retry-After": str(retry)},
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        job = _Job(items=items, future=loop.create_future(), enqueued_at=time.perf_counter())
        job.outputs = [None] * n
        job.remaining = job.queued = n
        self._pending.extend((job, i) for i in range(n))
        self._live += n
        self._metrics.queue_depth.labels(model=self.model).set(self.depth)
        self._wakeup.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The request is gone (deadline or disconnect): its waiting items no longer count against the bound.
            job.cancelled = True
            self._live -= job.queued
            job.queued = 0
            self._metrics.queue_depth.labels(model=self.model).set(self.depth)
            raise

    def _take_batch(self) -> list[tuple[_Job, int]]:
        batch: list[tuple[_Job, int]] = []
        while self._pending and len(batch) < self.max_batch_size:
            job, i = self._pending.popleft()
            if not job.cancelled:
                job.queued -= 1
                self._live -= 1
                batch.append((job, i))
        self._metrics.queue_depth.labels(model=self.model).set(self.depth)
        return batch

    async def _wait_to_fill(self) -> None:
        deadline = self._pending[0][0].enqueued_at + self.max_wait_s
        while not self._closed and self._live < self.max_batch_size and self._expected > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(self) -> None:
        # Batches in flight at once: a network in its own process takes a second batch into its pipe while it computes
        # one (service.isolation.PIPELINE_DEPTH); a second batch leaves only when it is full, so pipelining never
        # splits what would have been one batch.
        depth = int(getattr(self._infer, "pipeline_depth", 1))
        while True:
            while not self._pending or self._in_flight >= depth or (self._in_flight and self._live < self.max_batch_size):
                if self._closed and not self._pending:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._closed and not self._pending:
                break
            if not self._in_flight:
                await self._wait_to_fill()
            batch = self._take_batch()
            if not batch:
                continue
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._compute(batch))
            self._computing.add(task)
            task.add_done_callback(self._computing.discard)
        if self._computing:
            await asyncio.gather(*self._computing)

    async def _compute(self, batch: list[tuple[_Job, int]]) -> None:
        """One batch through the network, then its outputs to their requests."""
        dispatched = time.perf_counter()
        try:
            stacked = np.stack([job.items[i] for job, i in batch])
            infer_async = getattr(self._infer, "infer_async", None)  # a network in its own process
            if infer_async is not None:
                outputs = await infer_async(stacked, self._executor)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer, stacked)
        except Exception as exc:  # the model failed: fail these requests, keep serving
            logger.exception("inference failed for model %s on a batch of %d", self.model, len(batch))
            error = ApiError(500, "inference_failed", f"model {self.model!r} failed: {type(exc).__name__}: {exc}")
            for job, _ in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        finally:
            self._in_flight -= 1
            self._wakeup.set()
        done = time.perf_counter()
        started = max(dispatched, self._last_done)  # a pipelined batch starts when the one before it has ended
        self._last_done = done
        compute = done - started
        self._mean_compute_s = 0.8 * self._mean_compute_s + 0.2 * compute
        self._metrics.compute_seconds.labels(model=self.model, backend=self.backend).observe(compute)
        self._metrics.batch_size.labels(model=self.model).observe(len(batch))
        seen: set[int] = set()
        for k, (job, i) in enumerate(batch):
            if id(job) not in seen:
                seen.add(id(job))
                job.compute_seconds += compute
            wait = started - job.enqueued_at
            self._metrics.queue_wait_seconds.labels(model=self.model).observe(wait)
            job.queue_seconds = max(job.queue_seconds, wait)
            job.outputs[i] = outputs[k]
            job.remaining -= 1
            if job.remaining == 0 and not job.future.done():
                job.future.set_result(
                    BatchResult(np.stack(job.outputs), job.queue_seconds, job.compute_seconds)  # type: ignore[arg-type]
                )
