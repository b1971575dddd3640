"""The recommendation service for tests, started on a free 127.0.0.1 port and always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from recsys_core.events.redis_process import free_port
from recsys_core.serving.process import spawn_serve, wait_ready


@contextmanager
def recsys_service(model_dir: Path, log_path: Path, *args: str, ready_path: str = "/health") -> Iterator[httpx.Client]:
    """`recsys serve` (uvicorn) in a subprocess on a port the OS picks (`--port-file`), serving `model_dir`; yields a
    client once `ready_path` answers 200, and stops the server after."""
    args = ["--model-dir", str(model_dir), "--port", "0", "--providers", "cpu", *args]
    server, client = None, None
    try:
        try:
            server, port = spawn_serve(args, log_path.with_suffix(".port"), log_path,
                                       {**os.environ, "RECSYS_HOME": str(log_path.parent)})  # fmt: skip
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
            wait_ready(client, lambda: server.poll() is not None, 60.0, ready_path)
        except RuntimeError as error:
            raise RuntimeError(f"{error}: {log_path.read_text()[-2000:]}") from None
        yield client
    finally:
        if client is not None:
            client.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=20)


class Processes:
    """Long-running child processes of one test, each logging to a file, all stopped (SIGTERM, then SIGKILL) at exit."""

    def __init__(self, directory: Path, env: dict[str, str], cwd: Path) -> None:
        self.directory, self.env, self.cwd = directory, env, cwd
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.directory / f"{name}.log").open("w") as log:
            process = subprocess.Popen(args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
        self.started[name] = process
        return process

    def exited(self) -> list[str]:
        return [name for name, process in self.started.items() if process.poll() is not None]

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text()[-4000:]

    def stop(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.started.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
