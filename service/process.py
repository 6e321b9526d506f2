"""Run `binpose serve` in a child process on a free loopback port and wait until it is ready. Used by the service's
tests and benchmarks, which must talk to a real uvicorn server, and handy for scripts."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

logger = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """`with ServiceProcess(env={"BINPOSE_MODELS": "sbpn-r18"}) as server: ... server.url ...`.

    `env` entries are added to this process's environment (BINPOSE_* settings); the server's output goes to
    `log_path` (a temporary file if unset)."""

    def __init__(self, env: dict[str, str] | None = None, args: list[str] | None = None, log_path: Path | None = None):
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("BINPOSE_LOG_LEVEL", "warning")
        self.args = list(args or [])
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 180.0) -> ServiceProcess:
        if self.log_path is None:
            import tempfile

            fd, name = tempfile.mkstemp(prefix="binpose-serve-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "binpose.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            status, body = self.get("/readyz")
            if status == 200:
                return self
            if status == 503 and "failed" in body:
                self.stop()
                raise RuntimeError(f"the server could not load its models: {body}")
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the server was not ready within {ready_timeout_s} s:\n{self.log_text()[-4000:]}")

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, str]:
        """(status, body text); status 0 when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return 0, ""

    def get_json(self, path: str) -> object:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:500]}")
        return json.loads(body)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._close_log()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
