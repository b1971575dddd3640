"""`recsys serve` as a child process on a free 127.0.0.1 port, with freshly generated API keys (scopes admin and
write) in a keys file beside its log: what the demo loop and the experiments benchmark run their traffic against."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from recsys_core.serving.auth import hash_key


def wait_port(port_file: Path, exited: Callable[[], bool], timeout_s: float) -> int:
    """The port a service started with `--port 0 --port-file` listens on, once it has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_file.exists():
            return int(port_file.read_text())
        if exited():
            raise RuntimeError("the service exited")
        time.sleep(0.1)
    raise TimeoutError(f"the service did not listen within {timeout_s:.0f} s")


def spawn_serve(
    args: list[str], port_file: Path, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> tuple[subprocess.Popen, int]:
    """`recsys serve *args` in a subprocess, appending to `log_path`, that writes the port it listens on to
    `port_file` (`--port 0` in `args`: one the OS picks, no race); -> (process, port) once it listens. Killed when it
    does not listen within `timeout_s` (TimeoutError); RuntimeError when it exits first."""
    port_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "recsys_core.serving.serve", *args, "--port-file", str(port_file)]
    with log_path.open("a") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        return process, wait_port(port_file, lambda: process.poll() is not None, timeout_s)
    except TimeoutError:
        process.kill()
        raise


def wait_ready(client: httpx.Client, exited: Callable[[], bool], timeout_s: float, path: str = "/health/ready") -> None:
    """Polls `path` until it answers 200; raises RuntimeError once `exited()` and TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if exited():
            raise RuntimeError("the service exited")
        try:
            if client.get(path).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the service was not ready within {timeout_s:.0f} s")


class ServiceProcess:
    def __init__(self, args: list[str], log_path: str | Path, env: dict[str, str] | None = None) -> None:
        """`args`: `recsys serve` options besides --port and --api-keys (e.g. --registry-alias champion)."""
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.admin_key, self.write_key = secrets.token_hex(16), secrets.token_hex(16)
        keys = self.log_path.with_suffix(".keys.json")
        keys.write_text(json.dumps({"keys": [{"name": "admin", "sha256": hash_key(self.admin_key), "scopes": ["admin"]},
                                             {"name": "writer", "sha256": hash_key(self.write_key), "scopes": ["write"]}]}))  # fmt: skip
        self.port_file = self.log_path.with_suffix(".port")
        self.port, self.url = 0, ""
        self.args = [*args, "--port", "0", "--api-keys", str(keys)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        """Starts the service and waits until /health/ready answers 200 (raises with the log's tail if it exits)."""
        started = time.monotonic()
        try:
            self.process, self.port = spawn_serve(self.args, self.port_file, self.log_path, self.env, timeout_s)
            self.url = f"http://127.0.0.1:{self.port}"
            with httpx.Client(base_url=self.url, timeout=5) as client:
                wait_ready(client, self.exited, timeout_s - (time.monotonic() - started))
        except RuntimeError as error:
            raise RuntimeError(f"{error}: {self.log_path.read_text()[-2000:]}") from None
        except TimeoutError as error:
            self.stop()
            raise TimeoutError(f"{error}; see {self.log_path}") from None
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def client(self, key: str = "", timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout_s, headers={"X-API-Key": key} if key else None)

    def stop(self) -> None:
        """SIGTERM: the service's shutdown flushes its exposure queue into the event store before it exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
