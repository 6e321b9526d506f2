"""The micro-batcher alone, in one event loop with a fake network whose calls are recorded: batches up to the
maximum, a partial batch waits (up to max_wait) only for announced requests, items of one request may span batches
and come back in order, the queue bound refuses at once, cancelled requests free their places and are never
computed, close() drains."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batching import MicroBatcher
from service.errors import ApiError
from service.metrics import Metrics


class FakeNet:
    """out[i] = 10 * x[i] (so every row is traceable), after `delay_s`; records each batch's rows."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.batches: list[list[float]] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(x[:, 0].tolist())
        return 10 * x


def items(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], np.float32)


def make(net: FakeNet, **kw: float) -> tuple[MicroBatcher, ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    opts = {"max_batch_size": 4, "max_wait_s": 0.05, "queue_size": 16, **kw}
    b = MicroBatcher("m", "fake", net, pool, metrics=Metrics(), **opts)  # type: ignore[arg-type]
    b.start()
    return b, pool


def test_concurrent_requests_are_batched_and_answered_in_order() -> None:
    async def main() -> None:
        net = FakeNet(delay_s=0.01)
        b, pool = make(net)
        results = await asyncio.gather(b.submit(items(1, 2, 3)), b.submit(items(4, 5)), b.submit(items(6)))
        np.testing.assert_array_equal(results[0].outputs[:, 0], [10, 20, 30])
        np.testing.assert_array_equal(results[1].outputs[:, 0], [40, 50])
        np.testing.assert_array_equal(results[2].outputs[:, 0], [60])
        assert [len(batch) for batch in net.batches] == [4, 2]  # max 4 per call; request 2 spans both calls
        assert sorted(v for batch in net.batches for v in batch) == [1, 2, 3, 4, 5, 6]
        assert results[1].compute_seconds > results[0].compute_seconds  # it waited for two calls
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_lone_request_does_not_wait_but_announced_ones_are_awaited() -> None:
    async def main() -> None:
        net = FakeNet()
        b, pool = make(net, max_wait_s=0.2)
        t = time.perf_counter()
        await b.submit(items(1))  # nobody else is coming: no wait
        assert time.perf_counter() - t < 0.1

        # Another request announced itself (it is still decoding): the batch waits for it, then both go together.
        with b.expect() as first, b.expect() as second:
            a = asyncio.ensure_future(b.submit(items(2), first))
            await asyncio.sleep(0.05)
            c = asyncio.ensure_future(b.submit(items(3), second))
            await asyncio.gather(a, c)
        assert net.batches[-1] == [2, 3]

        # An announced request that never submits (it failed to decode) holds the batch at most max_wait.
        t = time.perf_counter()
        with b.expect():
            result = await b.submit(items(4))
        waited = time.perf_counter() - t
        assert 0.15 <= waited < 1.0 and result.queue_seconds >= 0.15
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_queue_bound_refuses_at_once_with_retry_after() -> None:
    async def main() -> None:
        gate = threading.Event()
        net = FakeNet(gate=gate)
        b, pool = make(net, max_batch_size=2, max_wait_s=0.0, queue_size=3)
        first = asyncio.ensure_future(b.submit(items(1, 2)))  # taken by the (blocked) network
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(b.submit(items(3, 4, 5)))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(ApiError) as refused:
            await b.submit(items(6))
        assert refused.value.status == 503 and refused.value.headers and "Retry-After" in refused.value.headers
        with pytest.raises(ApiError) as too_big:
            await b.submit(items(*range(4)))
        assert too_big.value.status == 413  # could never fit
        gate.set()
        assert len((await first).outputs) == 2 and len((await waiting).outputs) == 3
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_cancelled_request_frees_its_places_and_is_not_computed() -> None:
    async def main() -> None:
        gate = threading.Event()
        net = FakeNet(gate=gate)
        b, pool = make(net, max_batch_size=1, max_wait_s=0.0, queue_size=3)
        running = asyncio.ensure_future(b.submit(items(1)))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(b.submit(items(2, 3, 4)))
        await asyncio.sleep(0.01)
        assert b.depth == 3
        doomed.cancel()
        await asyncio.sleep(0.01)
        assert b.depth == 0
        later = asyncio.ensure_future(b.submit(items(5)))  # fits again
        gate.set()
        await running
        assert (await later).outputs[0, 0] == 50
        assert [v for batch in net.batches for v in batch] == [1, 5]
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_close_finishes_queued_work_then_refuses() -> None:
    async def main() -> None:
        net = FakeNet(delay_s=0.02)
        b, pool = make(net, max_batch_size=1, max_wait_s=0.0)
        pending = [asyncio.ensure_future(b.submit(items(i))) for i in range(5)]
        await asyncio.sleep(0)
        await b.close()
        assert [p.result().outputs[0, 0] for p in pending] == [0, 10, 20, 30, 40]
        with pytest.raises(ApiError) as refused:
            await b.submit(items(1))
        assert refused.value.status == 503
        pool.shutdown()

    asyncio.run(main())


def test_network_failure_fails_its_requests_only() -> None:
    async def main() -> None:
        calls = {"n": 0}

        def flaky(x: np.ndarray) -> np.ndarray:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            return x

        pool = ThreadPoolExecutor(1)
        b = MicroBatcher("m", "fake", flaky, pool, max_batch_size=8, max_wait_s=0.0, queue_size=8, metrics=Metrics())
        b.start()
        with pytest.raises(ApiError) as failed:
            await b.submit(items(1))
        assert failed.value.status == 500 and "boom" in failed.value.message
        assert (await b.submit(items(2))).outputs[0, 0] == 2
        await b.close()
        pool.shutdown()

    asyncio.run(main())


class PipelinedNet(FakeNet):
    """A network in its own process, as the batcher sees one (`infer_async`, `pipeline_depth` 2): each batch is
    answered when the test releases it, in order; records how many batches were in flight at once."""

    pipeline_depth = 2

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[np.ndarray, asyncio.Future[None]]] = []
        self.most_in_flight = 0

    async def infer_async(self, x: np.ndarray, executor: object) -> np.ndarray:
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((x, release))
        self.most_in_flight = max(self.most_in_flight, sum(not r.done() for _, r in self.waiting))
        await release
        self.batches.append(x[:, 0].tolist())
        return 10 * x

    def release_next(self) -> None:
        next(r for _, r in self.waiting if not r.done()).set_result(None)


def test_a_full_batch_follows_one_in_flight_a_partial_one_waits() -> None:
    async def main() -> None:
        net = PipelinedNet()
        b, pool = make(net, max_batch_size=2, max_wait_s=0.0)
        first = asyncio.ensure_future(b.submit(items(1)))
        await asyncio.sleep(0.01)
        assert len(net.waiting) == 1  # [1] in flight
        partial = asyncio.ensure_future(b.submit(items(2)))
        await asyncio.sleep(0.01)
        assert len(net.waiting) == 1  # [2] alone is not a full batch: it waits for the one in flight
        full = asyncio.ensure_future(b.submit(items(3, 4, 5)))
        await asyncio.sleep(0.01)
        assert len(net.waiting) == 2 and net.waiting[1][0][:, 0].tolist() == [2, 3]  # full: it follows at once
        await asyncio.sleep(0.01)
        assert len(net.waiting) == 2  # never more than two in flight
        net.release_next()
        await asyncio.sleep(0.01)
        assert len(net.waiting) == 3  # [4, 5] is full: it takes the free place
        for _ in range(2):
            net.release_next()
        results = await asyncio.gather(first, partial, full)
        assert net.most_in_flight == 2
        np.testing.assert_array_equal(results[0].outputs[:, 0], [10])
        np.testing.assert_array_equal(results[1].outputs[:, 0], [20])
        np.testing.assert_array_equal(results[2].outputs[:, 0], [30, 40, 50])
        assert net.batches == [[1], [2, 3], [4, 5]]
        await b.close()
        pool.shutdown()

    asyncio.run(main())


def test_close_waits_for_pipelined_batches() -> None:
    async def main() -> None:
        net = PipelinedNet()
        b, pool = make(net, max_batch_size=1, max_wait_s=0.0)
        pending = [asyncio.ensure_future(b.submit(items(v))) for v in (1, 2, 3)]
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(b.close())
        await asyncio.sleep(0.01)
        assert not closing.done()  # two batches in flight, one queued: close() drains them all
        for _ in range(3):
            net.release_next()
            await asyncio.sleep(0.01)
        await closing
        assert [r.outputs[0, 0] for r in await asyncio.gather(*pending)] == [10, 20, 30]
        pool.shutdown()

    asyncio.run(main())
