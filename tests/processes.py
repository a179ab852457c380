"""Real server processes for the tests: start, wait until they answer over HTTP, stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


class ServerStartError(RuntimeError):
    pass


def start_server(cmd: list[str], env: dict, log_path: Path, health_url: str, timeout: float = 60.0,
                 cwd: Path = ROOT) -> subprocess.Popen:
    """Start `cmd` with output to `log_path`; return once `health_url` answers 2xx (else kill it and raise)."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if requests.get(health_url, timeout=5).ok:
                return proc
        except requests.RequestException:  # refused, or accepted while still importing
            pass
        time.sleep(0.3)
    stop(proc)
    tail = log_path.read_text()[-4000:]
    raise ServerStartError(f"{cmd[0]} did not answer {health_url} within {timeout:.0f} s:\n{tail}")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_gunicorn(env: dict, folder: Path, port: int, workers: int = 2) -> subprocess.Popen:
    """The backend as in production: gunicorn serving `_wsgi:app` from the repository root."""
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
           "--threads", "4", "--timeout", "120", "_wsgi:app"]
    env = {"MODEL_DIR": str(folder / "models"), "IMAGE_CACHE_DIR": str(folder / "images"), **env}
    return start_server(cmd, env, folder / "gunicorn.log", f"http://127.0.0.1:{port}/health")


WORKER_CLASS = "backend.core.worker.ModelKeepingWorker"  # docker-compose's


def start_rq_worker(env: dict, folder: Path, redis_url: str) -> subprocess.Popen:
    """An `rq worker` for the backend's queue, as docker-compose's worker service runs it."""
    rq = Path(sys.executable).with_name("rq")
    env = {"MODEL_DIR": str(folder / "models"), "IMAGE_CACHE_DIR": str(folder / "images"), **env}
    log = open(folder / "rq-worker.log", "w")
    return subprocess.Popen([str(rq), "worker", "backend", "--url", redis_url, "--worker-class", WORKER_CLASS],
                            cwd=ROOT, env={**os.environ, **env},
                            stdout=log, stderr=subprocess.STDOUT)
