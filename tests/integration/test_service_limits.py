"""The service's limits on a real uvicorn server: overload answers 503 with Retry-After, a request past its deadline
answers 504, SIGTERM finishes every accepted request before the process exits, and a killed model process costs
only the batches it held."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.process import ServiceProcess

MODEL = "sbpn-r18"


def jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def post_pose(url: str, boxes: list[list[float]]) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=600) as c:
        return c.post("/v1/pose", files={"image": ("x.jpg", jpeg(), "image/jpeg")}, data={"boxes": json.dumps(boxes)})


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One crop per network call and at most 2 crops queued, with a long deadline so the queue stays full."""
    env = {"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": "torch", "BINPOSE_MAX_BATCH_SIZE": "1", "BINPOSE_THREADS": "1",
           "BINPOSE_QUEUE_SIZE": "2", "BINPOSE_REQUEST_TIMEOUT_S": "300"}  # fmt: skip
    with ServiceProcess(env=env, log_path=tmp_path_factory.mktemp("busy") / "server.log") as proc:
        yield proc


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One crop per network call and a 0.25 s deadline: a network call of sbpn-r18 in the float-simulated torch
    backend takes about 0.1 s here (more on a busy machine), so six crops cannot finish in time."""
    env = {"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": "torch", "BINPOSE_MAX_BATCH_SIZE": "1", "BINPOSE_THREADS": "1",
           "BINPOSE_QUEUE_SIZE": "6", "BINPOSE_REQUEST_TIMEOUT_S": "0.25"}  # fmt: skip
    with ServiceProcess(env=env, log_path=tmp_path_factory.mktemp("tight") / "server.log") as proc:
        yield proc


def test_overload_answers_503_with_retry_after(busy_server: ServiceProcess) -> None:
    box = [[100.0, 50.0, 300.0, 450.0]]
    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(lambda _: post_pose(busy_server.url, box), range(24)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"24 concurrent requests against a queue of 2 were all accepted: {statuses}"
    for r in refused:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    assert metric(busy_server.url, "binpose_rejected_requests_total", model=MODEL, reason="overload") >= len(refused)
    assert busy_server.get("/readyz")[0] == 200


def test_deadline_answers_504_and_server_keeps_serving(tight_server: ServiceProcess) -> None:
    boxes = [[10.0 * i, 20.0, 10.0 * i + 200, 420.0] for i in range(6)]
    deadline = time.monotonic() + 30
    while metric(tight_server.url, "binpose_queue_depth", model=MODEL) > 0:  # earlier tests' work drains first
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = post_pose(tight_server.url, boxes)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert metric(tight_server.url, "binpose_rejected_requests_total", model=MODEL, reason="timeout") >= 1
    assert tight_server.get("/healthz")[0] == 200


def child_pids(pid: int) -> list[int]:
    """The live child processes of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def test_sigterm_finishes_accepted_requests(tmp_path: Path) -> None:
    # Generous deadlines: this test is about shutdown, and a busy machine must not turn it into a timeout test.
    env = {"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": "torch", "BINPOSE_MAX_BATCH_SIZE": "2", "BINPOSE_THREADS": "1",
           "BINPOSE_LOG_LEVEL": "info",
           "BINPOSE_REQUEST_TIMEOUT_S": "600", "BINPOSE_SHUTDOWN_TIMEOUT_S": "600"}  # fmt: skip
    server = ServiceProcess(env=env, log_path=tmp_path / "server.log").start()
    try:
        boxes = [[100.0, 50.0, 300.0, 450.0], [300.0, 40.0, 500.0, 470.0]]
        n = 4
        results: list[httpx.Response | BaseException] = []
        lock = threading.Lock()

        def client() -> None:
            try:
                r: httpx.Response | BaseException = post_pose(server.url, boxes)
            except BaseException as exc:  # recorded, then asserted below
                r = exc
            with lock:
                results.append(r)

        threads = [threading.Thread(target=client) for _ in range(n)]
        for t in threads:
            t.start()
        # Wait until the server has accepted all of them (8 crops at 2 per call keep it busy for a while).
        deadline = time.monotonic() + 30
        while metric(server.url, "binpose_requests_in_flight", endpoint="/v1/pose") < n:
            assert time.monotonic() < deadline, "the requests were never all in flight"
            time.sleep(0.02)
        children = child_pids(server.proc.pid)  # type: ignore[union-attr]
        assert children, "the model does not run in a process of its own (BINPOSE_INFER_PROCESS defaults to true)"
        server.proc.send_signal(15)  # type: ignore[union-attr]
        # No new connections once shutdown has begun...
        deadline = time.monotonic() + 60
        while server.get("/healthz", timeout_s=2)[0] != 0:
            assert time.monotonic() < deadline, "the server still accepts connections a minute after SIGTERM"
            time.sleep(0.1)
        for t in threads:
            t.join(timeout=600)
        # ...and every accepted request got its full answer.
        assert len(results) == n
        for r in results:
            assert isinstance(r, httpx.Response), repr(r)
            assert r.status_code == 200, r.text
            persons = r.json()["persons"]
            assert len(persons) == 2 and all(len(p["keypoints"]) == 17 for p in persons)
        # uvicorn re-raises SIGTERM once its graceful shutdown is done, so the exit status is -15 (or 0).
        assert server.terminate(timeout_s=600) in (0, -15)
        log = server.log_text()
        assert "Finished server process" in log and "shutdown complete" in log, log[-3000:]
        # ...and the model's process ended with it.
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, f"inference processes {children} outlived the server"
            time.sleep(0.1)
    finally:
        server.stop()


def test_not_ready_while_models_cannot_load(tmp_path: Path) -> None:
    """Readiness stays 503, with the reason, when a configured model cannot be loaded (no .bnn for the packed
    backend)."""
    server = ServiceProcess(env={"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": "packed",
                                 "BINPOSE_WEIGHTS_DIR": str(tmp_path)}, log_path=tmp_path / "server.log")  # fmt: skip
    with pytest.raises(RuntimeError, match=r"could not load its models.*not_ready.*does not exist"):
        server.start()


def _network_child(server_pid: int) -> int:
    """The pid of the server's model process (a multiprocessing spawn child; the resource tracker is the other)."""
    for task in Path(f"/proc/{server_pid}/task").iterdir():  # each thread lists the children it started
        for child in (task / "children").read_text().split():
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return int(child)
    raise AssertionError("no model process under the server")


def test_killed_model_process_under_load_fails_at_most_its_batches(tmp_path: Path) -> None:
    """The network's process dies (SIGKILL) while concurrent requests keep coming: the batches it held answer 500
    with the JSON error, every other request 200, a new process takes over, and the server stays up."""
    import os
    import signal

    env = {"BINPOSE_MODELS": MODEL, "BINPOSE_BACKEND": "packed", "BINPOSE_THREADS": "1"}
    with ServiceProcess(env=env, log_path=tmp_path / "server.log") as server:
        assert server.proc is not None
        first = _network_child(server.proc.pid)
        statuses: list[int] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                r = post_pose(server.url, [[100, 50, 300, 450]])
                statuses.append(r.status_code)
                if r.status_code != 200:
                    assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed", r.text

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client) for _ in range(4)]
            time.sleep(1.0)
            os.kill(first, signal.SIGKILL)
            time.sleep(2.0)
            stop.set()
            for f in futures:
                f.result()
        second = _network_child(server.proc.pid)
        assert second != first
        failed = [s for s in statuses if s != 200]
        assert len(failed) <= 2 * 4, statuses  # at most the two batches in flight (4 crops each) when it died
        assert statuses[-4:] == [200] * 4 and len(statuses) > 20
        assert post_pose(server.url, [[100, 50, 300, 450]]).status_code == 200
