"""The recommendation service for tests, started on a free 127.0.0.1 port and always stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from recsys_core.events.redis_process import free_port

@contextmanager
def recsys_service(model_dir: Path, log_path: Path, *args: str, ready_path: str = "/health") -> Iterator[httpx.Client]:
    """`recsys serve` (uvicorn) in a subprocess on a free port, serving `model_dir`; yields a client once `ready_path`
    answers 200, and stops the server after."""
    port = free_port()
    command = [sys.executable, "-m", "recsys_core.serving.serve", "--model-dir", str(model_dir), "--port", str(port),
               "--providers", "cpu", *args]  # fmt: skip
    with log_path.open("w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RECSYS_HOME": str(log_path.parent)})
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
            try:
                if client.get(ready_path).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not answer {ready_path} within 60 s")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=20)
