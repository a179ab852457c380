"""Interactive click latency over HTTP against the bare SAM decoder, with real-size random-weight models.

    ./run bench interactive_latency [--engines vit_t vit_t@onnx vit_b sam2:hiera-tiny sam2:hiera-base-plus ...]
                                    [--sizes 1024 2048] [--clicks 40] [--cached 100] [--no-redis]

Per engine and image size: warm click (embedding cached) median and p95 over HTTP to gunicorn, the
bare decoder median measured in the same run (SAM / MobileSAM: segment_anything's SamPredictor.predict
after set_image; SAM 2.1 / SAM-HQ: the transformers model's forward on the same cached embedding, one
click, three masks), their ratio, and the cold click (new image: download, encoder, decode) median. Then the
peak memory of the server worker after `--cached` distinct images have been embedded. A last row
serves MobileSAM from the Redis cache with 2 workers and no per-worker front LRU, so every warm click
fetches its embedding from Redis (what a click costs on a worker that has not seen the image).

The server loads `region_mask_checkpoint` (bench/common.py): random weights whose decoder paints
regions (hundreds to a few thousand runs per mask) instead of salt-and-pepper noise (~100k runs at 1 MP), because
the brush RLE encoder (label-studio-sdk) and the JSON cost grow with the run count and a real object
mask has a few hundred. The second table measures that step for the three kinds of mask: fully random
weights, the bench checkpoint's, and a real COCO object mask.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image

from common import (
    TRANSFORMERS_SIZES,
    backend_server,
    bench_images,
    click_body,
    image_size,
    print_table,
    random_checkpoint,
    redis_server,
    region_mask_checkpoint,
    static_server,
    stats_ms,
    transformers_checkpoint,
    worker_peak_rss_mb,
)


def sam_predictor_click(segmenter, image: np.ndarray, embedding):
    """segment_anything's SamPredictor after set_image: one click, three masks."""
    from backend.segmentation import compat

    compat.install()
    from segment_anything import SamPredictor

    predictor = SamPredictor(segmenter.model)
    predictor.set_image(image)
    return lambda point: predictor.predict(point_coords=point[None], point_labels=np.array([1]), multimask_output=True)


def transformers_click(segmenter, image: np.ndarray, embedding):
    """The transformers model's own forward on the cached embedding: one click, three masks."""
    arrays = segmenter._arrays(embedding)
    cached = {"sam2": lambda a: {"image_embeddings": [a["high_res_s0"], a["high_res_s1"], a["features"]]},
              "sam_hq": lambda a: {"image_embeddings": a["features"], "intermediate_embeddings": [a["vit_early"]]}}
    inputs = cached[segmenter.family](arrays)

    def click(point):
        frame = segmenter.to_model_frame(point[None].astype(np.float32), embedding)
        with torch.inference_mode():
            segmenter.model(input_points=torch.tensor(frame)[None, None], input_labels=torch.tensor([[[1]]]),
                            multimask_output=True, **inputs)
    return click


def bare_decoder_ms(engine: str, checkpoint: Path, image_path: Path, clicks: int) -> tuple[float, float]:
    """Median of the bare decoder (one click, multimask) and of our engine's decode, in-process."""
    from backend.core.settings import Settings
    from backend.segmentation.prompts import Prompt
    from backend.segmentation.registry import load_segmenter

    segmenter = load_segmenter(Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                                        encoder_runtime="torch"))
    image = np.asarray(Image.open(image_path).convert("RGB"))
    embedding = segmenter.embed(image)
    bare_click = (transformers_click if engine in TRANSFORMERS_SIZES else sam_predictor_click)(
        segmenter, image, embedding)
    rng = np.random.default_rng(1)
    bare, ours = [], []
    for i in range(clicks + 3):
        point = rng.uniform(0.1, 0.9, 2) * (image.shape[1], image.shape[0])
        started = time.perf_counter()
        bare_click(point)
        middle = time.perf_counter()
        segmenter.decode(embedding, Prompt(points=point[None].astype(np.float32), labels=np.array([1])))
        if i >= 3:  # warm-up
            bare.append(middle - started)
            ours.append(time.perf_counter() - middle)
    return stats_ms(bare)[0], stats_ms(ours)[0]


def encoding_ms(mask: np.ndarray) -> float:
    """Median time of the brush result for one mask: SDK RLE encoding plus JSON serialisation."""
    from backend.core.label_config import parse_label_config
    from backend.segmentation.masks import mask_results
    from tests.helpers import LABEL_CONFIG

    control, label = parse_label_config(LABEL_CONFIG).output_for("Disk")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        json.dumps(mask_results(mask, 0.5, control, label))
        times.append(time.perf_counter() - started)
    return stats_ms(times)[0]


def mask_encoding_rows(engine: str, checkpoints: dict[str, Path], image_path: Path) -> dict:
    """Run count and encoding cost of a click's mask from each checkpoint and of a real COCO object mask."""
    from backend.core.settings import Settings
    from backend.segmentation.prompts import Prompt
    from backend.segmentation.registry import load_segmenter
    from common import SHARED_IMAGES

    image = np.asarray(Image.open(image_path).convert("RGB"))
    height, width = image.shape[:2]
    masks = {}
    for kind, checkpoint in checkpoints.items():
        segmenter = load_segmenter(Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                                        encoder_runtime="torch"))
        prompt = Prompt(points=np.array([[width / 2, height / 2]], np.float32), labels=np.array([1]))
        masks[kind] = segmenter.decode(segmenter.embed(image), prompt).mask
    gt_files = sorted((SHARED_IMAGES.parent / "gt").glob("*.png"))
    if gt_files:
        masks["object"] = np.asarray(Image.open(gt_files[0]).resize((width, height), Image.NEAREST)) > 127
    else:
        yy, xx = np.mgrid[:height, :width]
        masks["object"] = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 4) ** 2

    def runs(mask):
        flat = mask.ravel()
        return int((flat[1:] != flat[:-1]).sum()) + 1

    return {f"{kind} mask runs / encode ms": f"{runs(mask)} / {encoding_ms(mask):.1f}" for kind, mask in masks.items()}


def click_latencies(url: str, base_url: str, paths: list[Path], clicks: int) -> tuple[tuple, tuple]:
    """(median, p95) of a first click on each image (cold), then of `clicks` clicks on the first (warm)."""
    width, height = image_size(paths[0])
    rng = np.random.default_rng(0)
    cold, warm = [], []
    for index in range(len(paths) + clicks):
        path, x, y = (paths[index], 50, 50) if index < len(paths) else (paths[0], *rng.uniform(10, 90, 2))
        body = click_body(f"{base_url}/{path.name}", width, height, x, y)
        started = time.perf_counter()
        response = requests.post(url + "/predict", json=body, timeout=600)
        (cold if index < len(paths) else warm).append(time.perf_counter() - started)
        response.raise_for_status()
    return stats_ms(warm), stats_ms(cold)


def redis_row(args, workdir: Path, images_dir: Path, base_url: str) -> dict:
    """MobileSAM at 1024 px with the Redis cache, 2 workers and no per-worker front LRU: every click
    fetches its embedding from Redis (a click landing on a worker that has not seen the image)."""
    checkpoint = region_mask_checkpoint("vit_t", workdir, images_dir / "img000_1024.jpg")
    with redis_server() as redis_url:
        env = {"SAM_ENGINE": "vit_t", "SAM_CHECKPOINT": str(checkpoint), "REDIS_URL": redis_url,
               "EMBEDDING_CACHE_LOCAL_MB": "0"}
        with backend_server(env, workdir, workers=2, threads=2) as (url, _):
            paths = bench_images(images_dir, 2, 1024)
            warm, cold = click_latencies(url, base_url, paths, args.clicks)
    width, height = image_size(paths[0])
    return {"engine": "vit_t, Redis, 2 workers", "image": f"{width}x{height}", "warm median ms": f"{warm[0]:.1f}",
            "warm p95 ms": f"{warm[1]:.1f}", "cold median ms": f"{cold[0]:.0f}"}


def run_engine(name: str, args, workdir: Path, images_dir: Path, base_url: str) -> tuple[list[dict], dict | None]:
    """`name`: a SAM_ENGINE (vit_t, vit_b, ...) or family:size of a transformers family (sam2:hiera-tiny),
    optionally @runtime for the image encoder (vit_t@onnx: ENCODER_RUNTIME=onnx)."""
    rows, memory = [], None
    name_and_size, _, runtime = name.partition("@")
    engine, _, size = name_and_size.partition(":")
    cold_count = 5 if name_and_size in ("vit_t", "sam2:hiera-tiny") else 2
    bench_images(images_dir, 1, 1024)
    if engine in TRANSFORMERS_SIZES:  # random weights with tied upscaler taps
        checkpoint = transformers_checkpoint(engine, size or TRANSFORMERS_SIZES[engine][1], workdir)
        checkpoints = {"region": checkpoint}
    else:
        checkpoint = region_mask_checkpoint(engine, workdir, images_dir / "img000_1024.jpg")
        checkpoints = {"noise": random_checkpoint(engine, workdir), "region": checkpoint}
    env = {"SAM_ENGINE": engine, "SAM_CHECKPOINT": str(checkpoint), "ENCODER_RUNTIME": runtime or "torch",
           "EMBEDDING_DISK_DIR": str(workdir / f"embeddings-{name}")}  # rows of one checkpoint: cold is cold
    if runtime:  # the one-off ONNX export happens here, not in the first timed click
        from backend.core.settings import Settings
        from backend.segmentation.registry import load_segmenter

        load_segmenter(Settings(sam_engine=engine, sam_checkpoint=str(checkpoint), sam_download=False,
                                model_dir=str(workdir / "models"), encoder_runtime=runtime))
    with backend_server(env, workdir) as (url, pid):
        for size in args.sizes:
            paths = bench_images(images_dir, cold_count, size)
            warm, cold = click_latencies(url, base_url, paths, args.clicks)
            width, height = image_size(paths[0])
            rows.append({"engine": name, "image": f"{width}x{height}", "warm": warm, "cold": cold,
                         "path": paths[0]})
        if name == "vit_t" and args.cached:
            paths = bench_images(images_dir / "many", args.cached, 1024)
            for path in paths:
                width, height = image_size(path)
                requests.post(url + "/predict", json=click_body(f"{base_url}/many/{path.name}", width, height, 50, 50),
                              timeout=600).raise_for_status()
            cache = requests.get(url + "/metrics", timeout=10).json()["cache"]
            cache = cache.get("local", cache)  # the in-process LRU (in front of the disk folder)
            memory = {"engine": engine, "cached embeddings": cache["items"],
                      "cache MiB": round(cache["bytes"] / 2**20), "worker peak RSS MiB": round(worker_peak_rss_mb(pid))}
    encoding_rows = []
    for row in rows:
        path = row.pop("path")
        bare, ours = bare_decoder_ms(engine, checkpoint, path, args.clicks)
        warm_median, warm_p95 = row.pop("warm")
        row.update({"warm median ms": f"{warm_median:.1f}", "warm p95 ms": f"{warm_p95:.1f}",
                    "bare decoder ms": f"{bare:.1f}", "ratio warm/bare": f"{warm_median / bare:.2f}",
                    "engine decode ms": f"{ours:.1f}", "cold median ms": f"{row.pop('cold')[0]:.0f}"})
        encoding_rows.append({"engine": name, "image": row["image"],
                              **mask_encoding_rows(engine, checkpoints, path)})
    return rows, encoding_rows, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["vit_t", "vit_b"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048])
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--cached", type=int, default=100, help="distinct images embedded for the memory figure")
    parser.add_argument("--no-redis", dest="redis", action="store_false", help="skip the Redis-cache row")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        images_dir = workdir / "images"
        images_dir.mkdir()
        rows, encodings, memories = [], [], []
        with static_server(images_dir) as base_url:
            for engine in args.engines:
                engine_rows, encoding_rows, memory = run_engine(engine, args, workdir, images_dir, base_url)
                rows += engine_rows
                encodings += encoding_rows
                memories += [memory] if memory else []
            if "vit_t" in args.engines and args.redis:
                rows.append(redis_row(args, workdir, images_dir, base_url))
        print()
        print_table(rows, ["engine", "image", "warm median ms", "warm p95 ms", "bare decoder ms", "ratio warm/bare",
                           "engine decode ms", "cold median ms"])
        print()
        print_table(encodings, list(dict.fromkeys(key for row in encodings for key in row)))
        if memories:
            print()
            print_table(memories, list(memories[0]))


if __name__ == "__main__":
    main()
