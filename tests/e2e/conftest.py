"""A real Label Studio server (own virtual environment), the backend under gunicorn, and Redis.

`./run test` installs Label Studio into `.venv-ls`; these fixtures start it on a free loopback port
with a fresh database and a user + API token made at start, and stop everything afterwards.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from tests.helpers import (
    disk_grid,
    disk_image,
    encode_image,
    free_port,
    save_tiny_depth_anything,
    save_tiny_inpainting,
    save_tiny_owlv2,
)
from tests.processes import ROOT, start_gunicorn, start_rq_worker, start_server, stop

LABEL_STUDIO = ROOT / ".venv-ls" / "bin" / "label-studio"
LABEL_CONFIG = (ROOT / "label_config.xml").read_text()
BROWSER_DIR = ROOT / "tests" / "e2e" / "browser"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the browser checks


def in_browser(script: str, label_studio, *args: str, env: dict | None = None, timeout: float = 300) -> dict:
    """Run a browser check (tests/e2e/browser/<script>, headless Chromium logged in to `label_studio`); the JSON
    report it prints last. Fails with its output when it exits non-zero."""
    import json
    import os
    import shutil
    import subprocess

    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir() or not shutil.which("chromium"):
        pytest.fail("playwright-core or chromium is missing: run ./run test (it installs both)")
    ARTIFACTS.mkdir(exist_ok=True)
    run = subprocess.run(["node", script, label_studio.url, label_studio.email, label_studio.password, *map(str, args)],
                         cwd=BROWSER_DIR, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@dataclass
class LabelStudioServer:
    url: str
    token: str
    email: str
    password: str
    client: LabelStudio
    files_root: Path  # LOCAL_FILES_DOCUMENT_ROOT: files below it are served at /data/local-files/?d=...


@dataclass
class Backend:
    url: str
    model_dir: Path
    env: dict  # the backend's settings (for CLI runs against the same Label Studio)


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> LabelStudioServer:
    if not LABEL_STUDIO.exists():
        pytest.fail(f"Label Studio is not installed in {LABEL_STUDIO.parent.parent}: run ./run test (it installs it)")
    folder = tmp_path_factory.mktemp("label-studio")
    files_root = folder / "files"
    files_root.mkdir()
    port, token = free_port(), secrets.token_hex(20)
    email, password = "annotator@example.com", secrets.token_urlsafe(12)
    env = {
        "LABEL_STUDIO_USERNAME": email, "LABEL_STUDIO_PASSWORD": password, "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_BASE_DATA_DIR": str(folder),
        "ML_BLOCK_LOCAL_IP": "false", "SSRF_PROTECTION_ENABLED": "false", "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "", "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
        "LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(files_root),
    }
    cmd = [str(LABEL_STUDIO), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, env, folder / "label-studio.log", url + "/health", timeout=240, cwd=folder)
    yield LabelStudioServer(url, token, email, password, LabelStudio(base_url=url, api_key=token), files_root)
    stop(proc)


@pytest.fixture(scope="session")
def backend(label_studio, redis_url, tmp_path_factory) -> Backend:
    """The backend under gunicorn (2 workers sharing Redis) on the weight-free GrabCut engine, with a tiny
    random-weight Depth Anything, and its output folder inside Label Studio's local-files root.

    GrabCut is the engine whose masks are right without downloaded weights, so the tests can check
    that a click really gives the object's region; the SAM path itself is covered by tests/test_*.
    """
    folder = tmp_path_factory.mktemp("backend")
    port = free_port()
    redis_url = redis_url.rsplit("/", 1)[0] + "/1"  # its own database: other tests' RQ jobs stay theirs
    env = {"SAM_ENGINE": "grabcut", "REDIS_URL": redis_url, "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": label_studio.token, "LOG_LEVEL": "INFO",
           "DEPTH_MODEL": str(save_tiny_depth_anything(folder / "depth-model")),
           "LOCAL_FILES_DOCUMENT_ROOT": str(label_studio.files_root),
           "OUTPUT_DIR": str(label_studio.files_root / "outputs"),
           "DETECTOR_MODEL": str(save_tiny_owlv2(folder / "detector")), "DETECTOR_THRESHOLD": "0",
           "MAX_DETECTIONS": "2", "HF_HUB_OFFLINE": "1", "MODEL_DIR": str(folder / "models"),
           "SYNTHESIS_STEPS": "2", "SYNTHESIS_SIZE": "64",
           **{key: str(path) for key, path in save_tiny_inpainting(folder / "inpainting").items()}}
    proc = start_gunicorn(env, folder, port)
    worker = start_rq_worker(env, folder, redis_url)
    yield Backend(f"http://127.0.0.1:{port}", folder / "models", env)
    stop(worker)
    stop(proc)


@contextlib.contextmanager
def embedded_backend(label_studio, folder: Path, engine: str, checkpoint: Path, **env: str):
    """The backend on SAM_ENGINE=`engine` with a local `checkpoint` under one gunicorn worker, with the embedded
    in-process cache and queue (no Redis), as `./run serve` starts it; yields its URL."""
    port = free_port()
    env = {"SAM_ENGINE": engine, "SAM_CHECKPOINT": str(checkpoint), "SAM_DOWNLOAD": "false", "HF_HUB_OFFLINE": "1",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, "REDIS_URL": "", **env}
    proc = start_gunicorn(env, folder, port, workers=1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def upload_images(server, project_id: int, images: list[tuple[str, np.ndarray]]) -> None:
    """Upload PNG files the way a user drops them into the import dialog."""
    files = [(f"file{i}", (name, encode_image(image), "image/png")) for i, (name, image) in enumerate(images)]
    response = requests.post(f"{server.url}/api/projects/{project_id}/import", files=files,
                             headers={"Authorization": f"Token {server.token}"}, timeout=60)
    assert response.status_code == 201, response.text


def make_project(label_studio, backend=None, label_config: str = LABEL_CONFIG, grid: bool = False):
    """A project (default: the repository's label_config.xml) with two uploaded images; `backend` connected.
    `grid`: images of many disks (`disk_grid`), on which the tiny detector's boxes always hold an object."""
    client = label_studio.client
    project = client.projects.create(title="SAM backend e2e", label_config=label_config)
    truths = {}
    for index, center in enumerate([(0.4, 0.5), (0.62, 0.45)]):
        image, mask = disk_image(width=320, height=240, center=center, seed=index)
        if grid:
            image, mask = disk_grid(seed=index), None
        upload_images(label_studio, project.id, [(f"disk{index}.png", image)])
        truths[f"disk{index}.png"] = mask
    tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    masks = {t.id: next((m for name, m in truths.items() if t.data["image"].endswith(name)), None) for t in tasks}
    ml = None
    if backend is not None:
        ml = client.ml.create(url=backend.url, project=project.id, is_interactive=True, title="SAM")
        assert ml.readable_state == "Connected", ml
    return project, tasks, masks, ml


@pytest.fixture
def project(label_studio, backend):
    """A project with this backend connected as its (interactive) ML model."""
    made = make_project(label_studio, backend)
    yield made
    label_studio.client.projects.delete(id=made[0].id)


@pytest.fixture
def grid_project(label_studio, backend):
    """A connected project whose images the tiny detector always finds objects in."""
    made = make_project(label_studio, backend, grid=True)
    yield made
    label_studio.client.projects.delete(id=made[0].id)


@pytest.fixture
def unconnected_project(label_studio):
    """A project no ML backend is connected to (the CLI pre-labels any project through the API)."""
    made = make_project(label_studio, grid=True)
    yield made
    label_studio.client.projects.delete(id=made[0].id)
