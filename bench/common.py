"""Shared pieces of the benchmarks: random-weight real-size checkpoints, a served backend, real images."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "interactive-seg" / "COCO_MVal" / "img"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def random_checkpoint(engine: str, folder: Path) -> Path:
    """A real-size architecture with random weights, saved as an official checkpoint (speed does not
    depend on weight values)."""
    from backend.segmentation.registry import build_sam

    path = folder / f"random_{engine}.pth"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(build_sam(engine).state_dict(), path)
    return path


def _sam2_config(size: str):
    from transformers import Sam2Config
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    if size == "hiera-tiny":
        return Sam2Config()  # transformers' default is SAM 2.1 Hiera tiny
    backbone = Sam2HieraDetConfig(  # SAM 2.1 Hiera base-plus (sam2.1_hiera_b+.yaml)
        hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
        embed_dim_per_stage=[112, 224, 448, 896], num_attention_heads_per_stage=[2, 4, 8, 16],
        global_attention_blocks=[12, 16, 20], window_positional_embedding_background_size=[14, 14])
    return Sam2Config(vision_config=Sam2VisionConfig(backbone_config=backbone,
                                                     backbone_channel_list=[896, 448, 224, 112]))


def _sam_hq_config(size: str):
    from transformers import SamHQConfig

    return SamHQConfig()  # transformers' default is SAM-HQ ViT-B


TRANSFORMERS_SIZES = {"sam2": (_sam2_config, "hiera-tiny"), "sam_hq": (_sam_hq_config, "vit-base")}


def transformers_checkpoint(family: str, size: str, folder: Path) -> Path:
    """A real-size SAM 2.1 / SAM-HQ with random weights, saved with save_pretrained. The mask upscalers'
    transposed-convolution taps are tied (as in `region_mask_checkpoint`), so masks are regions, not a
    4-px checkerboard whose run count would make the brush RLE encoder the bottleneck."""
    from transformers import AutoModel

    target = folder / f"random-{family}-{size}"
    if target.exists():
        return target
    torch.manual_seed(0)
    config = TRANSFORMERS_SIZES[family][0](size)
    model = AutoModel.from_config(config).eval()
    with torch.no_grad():
        for layer in (model.mask_decoder.upscale_conv1, model.mask_decoder.upscale_conv2):
            layer.weight.copy_(layer.weight[:, :, :1, :1].expand_as(layer.weight))
    model.save_pretrained(target)
    return target


def region_mask_checkpoint(engine: str, folder: Path, image_path: Path) -> Path:
    """The random checkpoint with its masks made regions instead of pixel noise over `image_path`, at the same
    compute (tests.helpers.make_region_masks): label-studio-sdk's RLE encoder walks runs in Python, so only
    masks with a realistic run count (hundreds to a few thousand here) give a realistic end-to-end click time."""
    from backend.segmentation.registry import build_sam
    from tests.helpers import make_region_masks

    path = folder / f"regions_{engine}.pth"
    if path.exists():
        return path
    sam = build_sam(engine)
    sam.load_state_dict(torch.load(random_checkpoint(engine, folder), map_location="cpu"))
    make_region_masks(sam, np.asarray(Image.open(image_path).convert("RGB")))
    torch.save(sam.state_dict(), path)
    return path


def distinct_files(paths: list[Path]) -> list[Path]:
    """`paths` without files whose bytes an earlier one has (COCO_MVal repeats photos across instances)."""
    seen, distinct = set(), []
    for path in paths:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            distinct.append(path)
    return distinct


def bench_images(folder: Path, count: int, long_side: int) -> list[Path]:
    """`count` distinct JPEGs made from the COCO_MVal photos (or synthetic ones), resized to `long_side`."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(SHARED_IMAGES.glob("*.jpg")) if SHARED_IMAGES.is_dir() else []
    sources = distinct_files(sources)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        if sources:
            image = Image.open(sources[index % len(sources)]).convert("RGB")
        else:
            image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
        if index >= len(sources) and sources:  # make repeats distinct images
            image = Image.fromarray(np.asarray(image)[:, ::-1].copy())
        path = folder / f"img{index:03d}_{long_side}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


@contextmanager
def static_server(folder: Path):
    """Serve `folder` over loopback HTTP (as Label Studio serves uploads); yields the base URL."""
    handler = lambda *a, **k: SimpleHTTPRequestHandler(*a, directory=str(folder), **k)  # noqa: E731
    SimpleHTTPRequestHandler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextmanager
def redis_server():
    """A throw-away redis-server on a free loopback port (no persistence); yields its URL."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def backend_server(env: dict[str, str], workdir: Path, workers: int = 1, threads: int = 4):
    """The backend under gunicorn; yields (url, gunicorn master pid)."""
    port = free_port()
    log = open(workdir / f"gunicorn-{port}.log", "w")
    full_env = {**os.environ, "LOG_LEVEL": "WARNING", "MODEL_DIR": str(workdir / "models"),
                "IMAGE_CACHE_DIR": str(workdir / f"cache-{port}"), "SAM_DOWNLOAD": "false",
                "IMAGE_URL_HOSTS": "127.0.0.1", **env}  # the loopback static server stands in for Label Studio
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--threads", str(threads), "--timeout", "0", "_wsgi:app"],
        cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):  # until the engine is loaded: /health is up while it loads in the background
            try:
                health = requests.get(url + "/health", timeout=5)
                if health.ok and health.json().get("engine", {}).get("loaded", True):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("backend did not start; see " + log.name)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def worker_peak_rss_mb(master_pid: int) -> float:
    """Peak resident memory (VmHWM) of the gunicorn worker processes under `master_pid`, in MiB."""
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    peak = 0.0
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def stats_ms(seconds: list[float]) -> tuple[float, float]:
    values = np.array(seconds) * 1000
    return float(np.median(values)), float(np.percentile(values, 95))


def seconds_row(what: str, seconds: list[float], baseline: float | None = None, digits: int = 2) -> dict:
    """A table row: median and p95 in seconds, and the median's ratio to `baseline` (a median, in s)."""
    median, p95 = (value / 1000 for value in stats_ms(seconds))
    return {"what": what, "median s": round(median, digits), "p95 s": round(p95, digits),
            "ratio": 1.0 if baseline is None else round(median / baseline, digits)}


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-|-".join("-" * widths[c] for c in columns))
    for row in rows:
        print(" | ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def click_body(url: str, width: int, height: int, x: float, y: float) -> dict:
    from tests.helpers import LABEL_CONFIG, keypoint

    item = keypoint(x, y, width=width, height=height)
    return {"tasks": [{"id": 1, "data": {"image": url}}], "project": "1.1", "label_config": LABEL_CONFIG,
            "params": {"context": {"result": [item]}}}


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size

