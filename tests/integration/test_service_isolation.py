"""A model served in its own process (service.isolation): the same outputs as the model loaded in this process, its
loading errors raised as they are, a crash in the child answered with an error and healed by a new child, signals
meant for the server ignored, and nothing left behind when it is closed. Real child processes throughout."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service import isolation
from service.backends import LoadOptions, load_model
from service.isolation import ChildProcessInfer, load_in_child

MODEL = "resnet18-small"  # a small classifier (3x32x32 without the bundled weights' overrides): loads in a second


def options(tmp_path: Path) -> LoadOptions:
    return LoadOptions(weights_dir=tmp_path, threads=1, seed=0)  # no weights there: seeded random init


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def gone(pid: int, timeout_s: float = 10.0) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as exited)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture()
def child_model(tmp_path: Path) -> Iterator[tuple[object, object]]:
    here = load_model(MODEL, "torch", options(tmp_path))
    there = load_in_child(MODEL, "torch", options(tmp_path))
    try:
        yield here, there
    finally:
        assert isinstance(there.infer, ChildProcessInfer)
        there.infer.close()


def only_child(loaded: object) -> ChildProcessInfer:
    infer = loaded.infer  # type: ignore[attr-defined]
    assert isinstance(infer, ChildProcessInfer)
    return infer


def test_child_serves_the_same_model(child_model: tuple[object, object]) -> None:
    here, there = child_model
    infer = only_child(there)
    assert infer.pid is not None and infer.pid != os.getpid()
    # What /v1/models reports comes from the child's LoadedModel.
    assert there.spec == here.spec  # type: ignore[attr-defined]
    assert there.complexity == here.complexity and there.provenance == here.provenance  # type: ignore[attr-defined]
    # Sizes up and down: the shared blocks grow, the first batch of a new size comes back over the pipe.
    for n in (1, 3, 8, 2, 8, 16, 1):
        x = batch(n, seed=n)
        got = infer(x)
        assert got.dtype == np.float32 and got.shape == (n, 10)
        np.testing.assert_allclose(got, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_child_crash_fails_one_batch_then_a_new_child_serves(child_model: tuple[object, object]) -> None:
    here, there = child_model
    infer = only_child(there)
    infer(batch(2))
    first = infer.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    # The next call notices the dead child: either it restarts at once or this batch fails with a clear error.
    x = batch(2)
    try:
        got = infer(x)
    except RuntimeError as exc:
        assert "died" in str(exc)
        got = infer(x)
    assert infer.restarts == 1 and infer.pid not in (None, first)
    np.testing.assert_allclose(got, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_child_ignores_the_servers_signals(child_model: tuple[object, object]) -> None:
    """Ctrl-C reaches the whole process group: the child must keep serving until the server has drained."""
    _, there = child_model
    infer = only_child(there)
    assert infer.pid is not None
    pid = infer.pid
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    assert infer(batch(1)).shape == (1, 10)
    assert infer.pid == pid and infer.restarts == 0


class CountingExecutor(ThreadPoolExecutor):
    """A one-thread executor that counts the calls handed to it (the thread path of infer_async)."""

    def __init__(self) -> None:
        super().__init__(1)
        self.calls = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.calls += 1
        return super().submit(fn, *args, **kwargs)


def test_infer_async_on_the_event_loop(child_model: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """The batcher's path: the same outputs as the model here, through shared blocks that grow and are replaced; the
    thread path only for the first call (no output size known yet)."""
    here, there = child_model
    infer = only_child(there)
    monkeypatch.setattr(isolation, "MIN_BLOCK_BYTES", 256)  # every size change replaces blocks

    async def run(sizes: list[int], executor: CountingExecutor) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for n in sizes:
            x = batch(n, seed=20 + n)
            out.append((x, await infer.infer_async(x, executor)))
        return out

    with CountingExecutor() as executor:
        got = asyncio.run(run([2, 1, 4, 3, 4, 12, 2], executor))
        assert executor.calls == 1
    for x, y in got:
        assert y.shape == (x.shape[0], 10)
        np.testing.assert_allclose(y, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_infer_async_pipelined_batches_each_get_their_own_outputs(child_model: tuple[object, object]) -> None:
    """Two batches in flight at once (each in its own shared blocks, answered in order), over and over with sizes
    that make the blocks grow; a third batch in flight is refused."""
    here, there = child_model
    infer = only_child(there)
    infer(batch(1))
    assert infer.pipeline_depth == 2
    inputs = [batch(n, seed=40 + k) for k, n in enumerate([3, 5, 1, 8, 2, 2, 16, 4])]

    async def run(executor: CountingExecutor) -> list[np.ndarray]:
        got: list[np.ndarray] = []
        for k in range(0, len(inputs), 2):
            got += await asyncio.gather(infer.infer_async(inputs[k], executor), infer.infer_async(inputs[k + 1], executor))
        pair = [asyncio.ensure_future(infer.infer_async(batch(1), executor)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="more than 2 batches in flight"):
            await infer.infer_async(batch(1), executor)
        await asyncio.gather(*pair)
        return got

    with CountingExecutor() as executor:
        got = asyncio.run(run(executor))
        assert executor.calls == 0
    for x, y in zip(inputs, got, strict=True):
        np.testing.assert_allclose(y, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_infer_async_child_dying_in_flight_then_a_new_child(
    child_model: tuple[object, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that dies after the liveness check (here: reported alive, killed before the batch is sent) fails that
    batch with a clear error; the next call starts a new child and answers right."""
    here, there = child_model
    infer = only_child(there)
    infer(batch(4))  # the output size is known: the next calls take the loop's path
    first = infer.pid
    assert first is not None and infer._proc is not None
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    monkeypatch.setattr(infer._proc, "is_alive", lambda: True)
    with CountingExecutor() as executor:
        with pytest.raises(RuntimeError, match="died"):
            asyncio.run(infer.infer_async(batch(2), executor))
        assert executor.calls == 0
        monkeypatch.undo()
        x = batch(3, seed=5)
        got = asyncio.run(infer.infer_async(x, executor))
    assert infer.restarts == 1 and infer.pid not in (None, first)
    np.testing.assert_allclose(got, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_infer_async_cancelled_in_flight_never_mixes_up_replies(child_model: tuple[object, object]) -> None:
    """A batch cancelled while the child computes it, with a second batch behind it in the pipe, and a third sent
    after: the cancelled batch's reply is read in turn and dropped, never taken for another batch's answer."""
    here, there = child_model
    infer = only_child(there)
    infer(batch(64))  # a batch the child takes a while over, its output size known
    big, second, third = batch(64, seed=1), batch(2, seed=2), batch(3, seed=3)

    async def cancel_then_call(executor: CountingExecutor) -> tuple[np.ndarray, np.ndarray]:
        cancelled = asyncio.ensure_future(infer.infer_async(big, executor))
        behind = asyncio.ensure_future(infer.infer_async(second, executor))
        await asyncio.sleep(0)  # both sent; the first reply is not there yet
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        return await behind, await infer.infer_async(third, executor)

    with CountingExecutor() as executor:
        got_second, got_third = asyncio.run(cancel_then_call(executor))
    assert infer.restarts == 0  # the same child answered on
    np.testing.assert_allclose(got_second, here.infer(second), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]
    np.testing.assert_allclose(got_third, here.infer(third), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]


def test_calls_from_several_threads_and_close(tmp_path: Path) -> None:
    here = load_model(MODEL, "torch", options(tmp_path))
    loaded = load_in_child(MODEL, "torch", options(tmp_path))
    infer = only_child(loaded)
    pid = infer.pid
    assert pid is not None
    inputs = [batch(n, seed=10 + n) for n in (1, 2, 3, 4, 5, 6)]
    with ThreadPoolExecutor(4) as ex:  # one batch at a time reaches the child, each gets its own answer
        got = list(ex.map(infer, inputs))
    for x, y in zip(inputs, got, strict=True):
        np.testing.assert_allclose(y, here.infer(x), rtol=1e-5, atol=1e-5)  # type: ignore[attr-defined]
    blocks = [b.name for b in infer._blocks.values()]
    assert len(blocks) == 2  # the input block and the output block
    infer.close()
    assert gone(pid), "the inference process outlived close()"
    assert infer.pid is None
    # The shared memory went with it.
    assert not [name for name in blocks if Path("/dev/shm", name.lstrip("/")).exists()]


def test_loading_errors_come_back_as_they_are(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        load_in_child(MODEL, "no-such-backend", options(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet18-small\.bnn does not exist"):
        load_in_child(MODEL, "packed", options(tmp_path))


def test_packed_threads_leave_the_server_a_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed runtime's threads: configured ones win (setting, then BINPOSE_THREADS); beside the server, all CPUs
    but one; in the server's own process, the engine's default; and a model loaded in a child is loaded beside it."""
    from service.backends import packed_threads

    monkeypatch.delenv("BINPOSE_THREADS", raising=False)
    cpus = os.cpu_count() or 1
    assert packed_threads(LoadOptions(threads=3, beside_server=True)) == 3
    assert packed_threads(LoadOptions(beside_server=True)) == max(1, cpus - 1)
    assert packed_threads(LoadOptions()) is None
    monkeypatch.setenv("BINPOSE_THREADS", "5")
    assert packed_threads(LoadOptions(beside_server=True)) == 5

    class Started(Exception):  # stands in for the child process: what matters is the options it would get
        pass

    def start_child(name: str, backend: str, opts: LoadOptions) -> None:
        raise Started(opts)

    monkeypatch.setattr(isolation, "ChildProcessInfer", start_child)
    with pytest.raises(Started) as started:
        load_in_child(MODEL, "packed", LoadOptions())
    assert started.value.args[0].beside_server
