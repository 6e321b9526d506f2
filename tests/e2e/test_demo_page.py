"""The demo page in headless Chromium against a real server: it lists the model with its OPs, runs the built-in
synthetic sample through /v1/pose, draws the result and shows the latency. The screenshot is kept in the test's tmp
folder and its path printed."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from system_deps import missing
from websockets.sync.client import connect

from service.process import ServiceProcess, free_port

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        missing("headless Chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    env = {"BINPOSE_MODELS": "sbpn-r18,resnet18-small", "BINPOSE_BACKEND": "torch", "BINPOSE_MAX_BATCH_SIZE": "4",
           "BINPOSE_THREADS": "1"}  # fmt: skip
    with ServiceProcess(env=env, log_path=tmp_path_factory.mktemp("demo") / "server.log") as proc:
        yield proc


class DevTools:
    """One headless Chromium driven over the DevTools protocol (a websocket to its page): the test waits in real time
    for the page's own status, instead of trusting headless virtual time, which dumped the DOM before the page's
    fetches had come back in up to four loads out of five here."""

    def __init__(self, binary: str, tmp_path: Path) -> None:
        port = free_port()
        self.log = (tmp_path / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--remote-debugging-port={port}",
             "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    pages = [t for t in json.loads(resp.read()) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, "Chromium exited at start: " + (tmp_path / "chromium.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Chromium's DevTools endpoint never answered"
            time.sleep(0.1)
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30))
        self.next_id = 0

    def call(self, method: str, **params: object) -> dict[str, object]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # events arrive in between; the answer carries our id
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                result: dict[str, object] = msg["result"]
                return result

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")  # type: ignore[attr-defined]

    def close(self) -> None:
        self.stack.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def status_of(html: str) -> str:
    found = re.search(r'<div id="status"[^>]*>[^<]*</div>', html)
    return found.group(0) if found else "no status element"


def page_after_run(binary: str, tmp_path: Path, url: str, screenshot: Path | None = None) -> str:
    """The page's DOM once its sample has run (status "done" or "error", waited for in real time, at most 60 s), and
    when asked a screenshot of that state."""
    browser = DevTools(binary, tmp_path)
    try:
        browser.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline:
            state = browser.evaluate("document.getElementById('status')?.dataset.state ?? null")
            if state in ("done", "error"):
                break
            time.sleep(0.1)
        html = str(browser.evaluate("document.documentElement.outerHTML"))
        print(f"demo page state after load: {state}")
        if screenshot is not None:
            shot = browser.call("Page.captureScreenshot", format="png")
            screenshot.write_bytes(base64.b64decode(str(shot["data"])))
        return html
    finally:
        browser.close()


def test_demo_page_classifies_the_sample(server: ServiceProcess, tmp_path: Path) -> None:
    html = page_after_run(chromium(), tmp_path, f"{server.url}/?model=resnet18-small&sample=1")
    assert 'data-state="done">Top class: ' in html, status_of(html)
    assert html.count("%</li>") == 5  # the top-5 classes with their probabilities
    assert 'id="pose-options" style="display: none;"' in html


def test_demo_page_runs_the_sample_in_chromium(server: ServiceProcess, tmp_path: Path) -> None:
    shot = tmp_path / "demo-page.png"
    html = page_after_run(chromium(), tmp_path, f"{server.url}/?sample=1", screenshot=shot)
    assert 'data-state="done"' in html, status_of(html)
    assert "1 person(s), 17 keypoints each" in html
    ops = server.get_json("/v1/models/sbpn-r18")["ops"]  # type: ignore[index]
    shown = f"{ops / 1e9:.2f} G" if ops >= 1e9 else f"{ops / 1e6:.1f} M"
    assert "sbpn-r18 (pose)" in html and f"OPs {shown}" in html  # the model and its OPs
    assert "server total" in html and "ms</td>" in html  # the latency

    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"demo page screenshot: {shot}")
