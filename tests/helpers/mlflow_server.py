"""A private MLflow tracking server for tests: `mlflow server` listening on 127.0.0.1 only, at a free port, with a
SQLite backend and an artefact root in a folder of its own; started and stopped by PID (its process group: the
server forks its uvicorn worker). MLflow's job runner is off: a tracking server needs none, and it starts faster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helpers.pg_server import free_port


@dataclass
class Server:
    folder: Path
    uri: str
    process: subprocess.Popen

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the server's process group (by its PID), SIGKILL if it has not ended in `timeout` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue


def answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def start(folder: Path, timeout: float = 180.0) -> Server:
    """The server on a fresh SQLite file in `folder`, once it answers /health (it creates its tables first)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(folder / "server.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--default-artifact-root", str(folder / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=log, cwd=folder, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    server = Server(folder, f"http://127.0.0.1:{port}", proc)
    deadline = time.monotonic() + timeout
    while not answers(server.uri):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.2)
    return server
