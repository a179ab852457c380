from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import TRANSFORMERS_FAMILIES, free_port, sam_env, save_tiny_sam, save_tiny_sam3  # noqa: E402


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture(scope="session", autouse=True)
def confined_to_temporary_folders(tmp_path_factory):
    """Every folder setting defaults to a temporary one for the whole session (subprocesses inherit it), and
    the session fails if anything was written into the repository's own data/ folder."""
    folder = tmp_path_factory.mktemp("backend-defaults")
    defaults = {"MODEL_DIR": folder / "models", "IMAGE_CACHE_DIR": folder / "images", "OUTPUT_DIR": folder / "outputs"}
    saved = {key: os.environ.get(key) for key in defaults}
    for key, value in defaults.items():
        os.environ.setdefault(key, str(value))
    before = _snapshot(ROOT / "data")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    written = sorted(set(_snapshot(ROOT / "data").items()) - set(before.items()))
    assert not written, f"tests wrote into the repository's data/ folder: {written[:5]}"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {engine: save_tiny_sam(engine, folder / f"tiny_{engine}.pth") for engine in ("vit_b", "vit_t")}


@pytest.fixture(scope="session")
def tiny_families(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight SAM 2.1 and SAM-HQ, saved with save_pretrained (folder names tiny-sam2, tiny-sam_hq)."""
    folder = tmp_path_factory.mktemp("transformers-sam")
    return {family: save(folder / f"tiny-{family}") for family, save in TRANSFORMERS_FAMILIES.items()}


@pytest.fixture(scope="session")
def tiny_sam3(tmp_path_factory) -> Path:
    """A tiny random-weight SAM 3 in facebook/sam3's layout (folder name tiny-sam3)."""
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3") / "tiny-sam3")


@pytest.fixture
def configure(monkeypatch, tmp_path):
    """Set backend settings for one test (environment variables) and reset the process-wide service."""
    from backend.segmentation.service import reset_segmentation

    def apply(**env: str) -> None:
        base = {"MODEL_DIR": str(tmp_path / "models"), "IMAGE_CACHE_DIR": str(tmp_path / "images"),
                "SAM_DOWNLOAD": "false"}
        for key, value in {**base, **env}.items():
            monkeypatch.setenv(key, str(value))
        reset_segmentation()

    for key in ("REDIS_URL", "SAM_CHECKPOINT", "DETECTOR_MODEL", "PRELABEL_MODE", "CATEGORY_ALIASES",
                "PRELABEL_DETECTOR", "SAM3_CHECKPOINT",
                "SAM_ENGINE", "SAM_ARCH_OVERRIDES", "BASIC_AUTH_USER",
                "BASIC_AUTH_PASS", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "LOCAL_FILES_DOCUMENT_ROOT"):
        monkeypatch.delenv(key, raising=False)
    yield apply
    reset_segmentation()


@pytest.fixture
def sam_client(configure, tiny_checkpoints):
    """A Flask test client of the real app on the tiny MobileSAM-architecture checkpoint."""
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]))
    import _wsgi

    return _wsgi.app.test_client()


@pytest.fixture
def grabcut_client(configure):
    configure(SAM_ENGINE="grabcut")
    import _wsgi

    return _wsgi.app.test_client()


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on a free loopback port for the test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run ./run test (it installs it) or apt-get install redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _quiet_env():
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["HF_HUB_OFFLINE"] = "1"  # no hub here: fail at once instead of retrying a download


@pytest.fixture
def file_server():
    """A loopback HTTP server: `serve(path, body, token=None)` registers a file; returns its base URL.

    A file registered with a token answers 401 unless the request has `Authorization: Token <token>`,
    as Label Studio does for uploads.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files: dict[str, tuple[bytes, str | None]] = {}
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            entry = files.get(self.path)
            if entry is None:
                self.send_response(404)
                self.end_headers()
                return
            body, token = entry
            if token and self.headers.get("Authorization") != f"Token {token}":
                self.send_response(401)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    class Served:
        url = base
        requests = seen

        @staticmethod
        def serve(path: str, body: bytes, token: str | None = None) -> str:
            files[path] = (body, token)
            return base + path

    yield Served
    server.shutdown()
