"""Each served network in a child process of its own (``BINPOSE_INFER_PROCESS``, on by default).

Why: the packed engine runs a network as one native call per layer (about 70 for sbpn-r18), and each call gives
Python's GIL back and must take it again. In the server's own process the event loop and the image threads hold the
GIL in between, so every layer waits for them: under 8 concurrent clients sbpn-r18 took 7.9 ms of wall time per crop
for 3.2 ms of CPU (2.5-2.9 ms per crop alone), with a third of the two cores idle. In a child process only the
network's own threads want that process's GIL.

The child loads the model with the same backends (`service.backends.load_model`) and answers batches: the server
writes each batch into a shared-memory block it owns, sends a small message over a pipe, and reads the outputs from a
second block, rather than pushing the arrays through the pipe (64 KiB per write: a 0.6 MB batch of four 128x96 crops
would take a dozen hand-overs between the processes each way). It ignores SIGINT and SIGTERM, so a Ctrl-C or a
`docker stop` reaches the server, which drains its requests and then closes the pipe; the child exits on a closed pipe
too, so it never outlives a killed server. If the child dies (a crash in native code), the batch it held
fails with a 500 and the next batch starts a new child: the server stays up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from concurrent.futures import Executor
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from service.backends import LoadedModel, LoadOptions, load_model

logger = logging.getLogger(__name__)

MIN_BLOCK_BYTES = 1 << 16  # the smallest shared block
PIPELINE_DEPTH = 2  # batches in flight to a child (infer_async)

_RERAISE: dict[str, type[Exception]] = {
    cls.__name__: cls for cls in (ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError, MemoryError)
}


def _send_array(conn: Connection, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    conn.send(("array", array.shape, array.dtype.str))
    conn.send_bytes(array.data.cast("B"))


def _recv_array(conn: Connection, header: tuple[Any, ...]) -> np.ndarray:
    _, shape, dtype = header
    out = np.empty(shape, np.dtype(dtype))  # received in place: writable, one copy
    conn.recv_bytes_into(out.data.cast("B"))
    return out


def _error(exc: BaseException) -> tuple[str, str, str]:
    return ("error", type(exc).__name__, str(exc))


def _child_main(conn: Connection, name: str, backend: str, options: LoadOptions, log_level: int) -> None:
    """The child: load the model, report what /v1/models needs, then answer batches until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[infer]: %(message)s")
    try:
        loaded = load_model(name, backend, options)
    except Exception as exc:
        conn.send(_error(exc))
        return
    fields = {f.name: getattr(loaded, f.name) for f in dataclasses.fields(loaded) if f.name != "infer"}
    conn.send(("loaded", fields))
    mapped: dict[str, SharedMemory] = {}  # the server's blocks, by name
    while True:
        try:
            msg = conn.recv()
            if msg is None:
                return
        except (EOFError, OSError):
            return  # the server is gone
        _, in_name, shape, dtype, out_name, out_capacity, dropped = msg
        for block in [b for b in dropped if b in mapped]:  # blocks the server has replaced
            try:
                mapped.pop(block).close()
            except BufferError:  # an array of the network still views it: the mapping goes with that array
                pass
        for block in (in_name, out_name):
            if block is not None and block not in mapped:
                mapped[block] = SharedMemory(name=block)
        try:
            out = np.asarray(loaded.infer(np.ndarray(shape, np.dtype(dtype), buffer=mapped[in_name].buf)))
        except Exception as exc:
            conn.send(_error(exc))
            continue
        if out_name is not None and out.nbytes <= out_capacity:
            np.ndarray(out.shape, out.dtype, buffer=mapped[out_name].buf)[...] = out
            conn.send(("shared", out.shape, out.dtype.str))
        else:  # the first batch of a size (the server learns the output size from it), or an output too large
            _send_array(conn, out)


class ChildProcessInfer:
    """The batch function of a model whose network runs in a child process: ``infer(batch) -> outputs``.

    Thread-safe (one batch at a time); restarts the child on the next call if it has died. `infer_async` is the same
    for an event loop."""

    pipeline_depth = PIPELINE_DEPTH  # what the batcher may send ahead (infer_async)

    def __init__(self, name: str, backend: str, options: LoadOptions, start_timeout_s: float = 600.0) -> None:
        self.name, self.backend, self.options = name, backend, options
        self.start_timeout_s = start_timeout_s
        self._lock = threading.RLock()  # start() may close() while a call holds it
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._blocks: dict[str, SharedMemory] = {}  # the batches' and outputs' shared memory, owned here
        self._item_out_bytes: int | None = None  # one item's output, once a batch has shown it
        self._queue: deque[tuple[asyncio.Future[np.ndarray], int]] = deque()  # infer_async's batches in flight, by slot
        self._reader: tuple[asyncio.AbstractEventLoop, int] | None = None  # the loop watching the pipe for replies
        self._dropped: list[str] = []  # blocks replaced since the last message: the child unmaps them
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> dict[str, Any]:
        """Start the child and wait until it has loaded the model; returns the LoadedModel's fields (all but infer).
        Raises the child's loading error (same type for the common ones, RuntimeError otherwise)."""
        self.spawn()
        return self.wait_loaded()

    def spawn(self) -> None:
        """Start the child process; it loads the model on its own (see `wait_loaded`)."""
        ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds threads and locks
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_child_main,
            args=(child, self.name, self.backend, self.options, logging.getLogger().getEffectiveLevel()),
            name=f"binpose-infer-{self.name}",
            daemon=True,
        )
        proc.start()
        child.close()
        self._conn, self._proc = parent, proc

    def wait_loaded(self) -> dict[str, Any]:
        parent = self._conn
        assert parent is not None, "spawn() first"
        if not parent.poll(self.start_timeout_s):
            self.close()
            raise RuntimeError(f"the inference process of {self.name!r} did not load it in {self.start_timeout_s} s")
        try:
            reply = parent.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise RuntimeError(f"the inference process of {self.name!r} exited while loading (exit code {code})") from None
        if reply[0] == "error":
            self.close()
            raise _RERAISE.get(reply[1], RuntimeError)(reply[2])
        fields: dict[str, Any] = reply[1]
        return fields

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._queue:
            raise RuntimeError(f"model {self.name!r}: a blocking call while batches of infer_async are in flight")
        with self._lock:
            if self._proc is None or not self._proc.is_alive():
                self._reap()
                self.restarts += 1
                logger.warning("model %s: starting a new inference process (restart %d)", self.name, self.restarts)
                self.start()
            assert self._conn is not None
            self._send_batch(batch)
            try:
                reply = self._conn.recv()
                return self._outputs(reply)
            except (EOFError, OSError) as exc:
                raise self._died() from exc

    async def infer_async(self, batch: np.ndarray, executor: Executor) -> np.ndarray:
        """The same as calling it, for the event loop's batcher, and pipelined: up to `PIPELINE_DEPTH` batches may be
        in flight, each in shared blocks of its own, so the child finds the next batch waiting in the pipe when it
        finishes one instead of idling until the server has answered and sent again. The batch is sent from the
        loop's thread and the child's replies (in order) wake the loop itself (`add_reader` on the pipe): through a
        worker thread, each batch took two thread hand-offs and waited for the GIL behind the loop's Python, and under
        8-32 clients the child sat idle ~20% of the time with batches queued for it. Where the child must first be
        (re)started (the batches in flight to a dead child fail) or an item's output size is not known yet, the call
        takes the thread path (`executor`)."""
        loop = asyncio.get_running_loop()
        if len(self._queue) >= PIPELINE_DEPTH:
            raise RuntimeError(f"model {self.name!r}: more than {PIPELINE_DEPTH} batches in flight")
        alive = self._conn is not None and self._proc is not None and self._proc.is_alive()
        if not alive or self._item_out_bytes is None:
            if self._queue:  # batches sent to a child that has died since
                self._fail_in_flight(self._died())
            return await loop.run_in_executor(executor, self, batch)
        busy = {slot for _, slot in self._queue}
        slot = next(k for k in range(PIPELINE_DEPTH) if k not in busy)
        future: asyncio.Future[np.ndarray] = loop.create_future()
        with self._lock:
            conn = self._conn
            assert conn is not None
            try:
                self._send_batch(batch, slot, int(batch.shape[0]) * self._item_out_bytes)
            except RuntimeError as exc:  # the child died: the batches before this one cannot be answered either
                self._fail_in_flight(exc)
                raise
        self._queue.append((future, slot))
        if self._reader is None:
            self._reader = (loop, conn.fileno())
            loop.add_reader(conn.fileno(), self._on_replies)
        return await future  # a cancelled batch's reply is still read in turn, and dropped

    def _on_replies(self) -> None:
        """The pipe is readable: take every reply there is, in order, for the batches in flight."""
        conn = self._conn
        while self._queue and conn is not None and conn.poll():
            future, slot = self._queue[0]
            try:
                with self._lock:
                    out = self._outputs(conn.recv(), slot)
            except (EOFError, OSError):
                self._fail_in_flight(self._died())
                return
            except Exception as exc:  # an error the child reported for this batch
                self._queue.popleft()
                if not future.done():
                    future.set_exception(exc)
                continue
            self._queue.popleft()
            if not future.done():
                future.set_result(out)
        if not self._queue:
            self._stop_reading()

    def _fail_in_flight(self, exc: BaseException) -> None:
        self._stop_reading()
        while self._queue:
            future, _ = self._queue.popleft()
            if not future.done():
                future.set_exception(exc)

    def _stop_reading(self) -> None:
        if self._reader is not None:
            loop, fd = self._reader
            loop.remove_reader(fd)
            self._reader = None

    def _send_batch(self, batch: np.ndarray, slot: int = 0, out_bytes: int = 0) -> None:
        """Write the batch into the slot's shared input block and tell the child (under the lock, child running);
        with `out_bytes` the slot's output block is made that large first."""
        assert self._conn is not None
        x = np.ascontiguousarray(batch, dtype=np.float32)
        block_in = self._block(f"in{slot}", x.nbytes)
        np.ndarray(x.shape, x.dtype, buffer=block_in.buf)[...] = x
        block_out = self._block(f"out{slot}", out_bytes) if out_bytes else self._blocks.get(f"out{slot}")
        dropped, self._dropped = self._dropped, []
        try:
            self._conn.send(("batch", block_in.name, x.shape, x.dtype.str, block_out.name if block_out else None,
                             block_out.size if block_out else 0, dropped))  # fmt: skip
        except OSError as exc:
            raise self._died() from exc

    def _outputs(self, reply: tuple[Any, ...], slot: int = 0) -> np.ndarray:
        """The child's reply to a batch -> its outputs (read from the slot's shared block, or through the pipe)."""
        assert self._conn is not None
        if reply[0] == "error":
            raise _RERAISE.get(reply[1], RuntimeError)(reply[2])
        block_out = self._blocks.get(f"out{slot}")
        if reply[0] == "shared" and block_out is not None:
            out = np.ndarray(reply[1], np.dtype(reply[2]), buffer=block_out.buf).copy()
        else:
            out = _recv_array(self._conn, reply)
            self._block(f"out{slot}", 2 * out.nbytes)  # outputs of this size and up to twice it come back shared
        if out.shape[0] > 0:
            self._item_out_bytes = out.nbytes // out.shape[0]
        return out

    def _died(self) -> RuntimeError:
        code = self._reap()
        return RuntimeError(
            f"the inference process of {self.name!r} died (exit code {code}); the next batch starts a new one"
        )

    def _block(self, role: str, nbytes: int) -> SharedMemory:
        """The shared block for a slot's inputs ("in0") or outputs ("out0"), replaced by a larger one when `nbytes`
        don't fit."""
        block = self._blocks.get(role)
        if block is None or block.size < nbytes:
            if block is not None:
                self._dropped.append(block.name)
                block.close()
                block.unlink()
            block = self._blocks[role] = SharedMemory(create=True, size=max(nbytes, MIN_BLOCK_BYTES))
        return block

    def _reap(self) -> int | None:
        """Forget a dead (or dying) child: close the pipe, collect its exit code."""
        self._stop_reading()  # before the descriptor is closed (and its number reused)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        code = None
        if self._proc is not None:
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=5.0)
            code = self._proc.exitcode
            self._proc = None
        for block in self._blocks.values():
            block.close()
            block.unlink()
        self._blocks.clear()
        self._dropped.clear()
        return code

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the child to exit (after the batch it may be computing) and wait for it."""
        with self._lock:
            if self._conn is not None and self._proc is not None and self._proc.is_alive():
                try:
                    self._conn.send(None)
                except OSError:
                    pass
                deadline = time.monotonic() + timeout_s
                self._proc.join(timeout=max(0.0, deadline - time.monotonic()))
            self._reap()


def load_in_child(name: str, backend: str, options: LoadOptions) -> LoadedModel:
    """`load_model` in a child process: the same LoadedModel, whose infer sends each batch to that process."""
    started = time.perf_counter()
    child = ChildProcessInfer(name, backend, dataclasses.replace(options, beside_server=True))
    fields = child.start()
    loaded = LoadedModel(infer=child, **fields)
    loaded.load_seconds = time.perf_counter() - started  # the whole start: process, imports and loading
    logger.info("model %s runs in inference process %s", name, child.pid)
    return loaded
