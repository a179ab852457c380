"""Images per minute for bulk pre-labeling with real-size architectures (random weights), 1 vs 2 RQ workers.

    ./run bench prelabel_throughput [--images 8] [--detections 10]

Detector: OWLv2 base/16 at 960 px (the google/owlv2-base-patch16-ensemble architecture); segmenter:
MobileSAM (vit_t). Random weights: the box head is scaled down so boxes are the model's prior boxes
(a random head gives zero-size boxes), and the threshold is 0 with `--detections` boxes per image,
so every image costs one detector pass and that many box->mask decodes. Work goes through real RQ
workers on a real redis-server; with 2 workers each gets 1 torch thread (2 cores in all).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, bench_images, print_table, random_checkpoint, redis_server

LABELS = ["person", "car", "dog", "chair", "bottle"]
CONFIG = "<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>" + "".join(
    f"<Label value='{label}'/>" for label in LABELS) + "</BrushLabels></View>"


def job(path: str) -> int:
    """One image: the production pre-labeling path (read, detect all categories, segment each box)."""
    sys.path.insert(0, str(ROOT))
    from backend.core.label_config import parse_label_config
    from backend.core.settings import get_settings
    from backend.prelabel.run import prelabel_task

    prediction = prelabel_task({"id": 0, "data": {"image": path}}, parse_label_config(CONFIG), get_settings(), "bench")
    return len(prediction["result"])


def save_owlv2_base(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from tests.helpers import save_tiny_owlv2

    save_tiny_owlv2(folder)  # its offline tokenizer and processor files; the model is replaced below
    torch.manual_seed(0)
    config = Owlv2Config(text_config={"vocab_size": 49408}, vision_config={"image_size": 960, "patch_size": 16})
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():
        model.box_head.dense2.weight.mul_(0.01)
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    processor = Owlv2Processor.from_pretrained(folder)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 960, "width": 960}),
                   tokenizer=processor.tokenizer).save_pretrained(folder)
    return folder


def run(workers: int, images: list[Path], env: dict, redis_url: str) -> float:
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(redis_url)
    connection.flushdb()
    queue = Queue("backend", connection=connection)
    procs = [subprocess.Popen([str(Path(sys.executable).with_name("rq")), "worker", "backend", "--url",
                               redis_url], cwd=ROOT / "bench",
                              env={**os.environ, **env, "OMP_NUM_THREADS": str(max(1, 2 // workers)),
                                   "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    # warm-up: each worker loads the models on its first job; time from the moment all are warm
    warm = [queue.enqueue("prelabel_throughput.job", str(images[0]), job_timeout=3600) for _ in range(workers)]
    while any(j.get_status(refresh=True).value not in ("finished", "failed") for j in warm):
        time.sleep(0.1)
    started = time.perf_counter()
    jobs = [queue.enqueue("prelabel_throughput.job", str(path), job_timeout=3600) for path in images]
    while any(j.get_status(refresh=True).value not in ("finished", "failed") for j in jobs):
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    failed = [j for j in jobs if j.get_status().value == "failed"]
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=60)
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed: {failed[0].latest_result().exc_string[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--detections", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with redis_server() as redis_url:
            images = bench_images(tmp / "images", args.images, 1024)
            env = {"SAM_ENGINE": "vit_t", "SAM_CHECKPOINT": str(random_checkpoint("vit_t", tmp)),
                   "SAM_DOWNLOAD": "false", "DETECTOR_MODEL": str(save_owlv2_base(tmp / "owlv2")),
                   "DETECTOR_THRESHOLD": "0", "MAX_DETECTIONS": str(args.detections), "HF_HUB_OFFLINE": "1",
                   "LOCAL_FILES_DOCUMENT_ROOT": str(tmp), "MODEL_DIR": str(tmp / "models"),
                   "EMBEDDING_CACHE_MB": "64", "LOG_LEVEL": "WARNING"}
            rows = []
            for workers in (1, 2):
                seconds = run(workers, images, env, redis_url)
                rows.append({"workers": workers, "images": len(images), "seconds": round(seconds, 1),
                             "images/min": round(60 * len(images) / seconds, 2)})
            for row in rows:
                row["ratio"] = round(row["images/min"] / rows[0]["images/min"], 2)
        print(f"bulk pre-labeling: OWLv2 base/16 @960 + MobileSAM, {args.detections} boxes per 1024 px image, "
              f"{len(LABELS)} categories in one detector pass")
        print_table(rows, ["workers", "images", "seconds", "images/min", "ratio"])


if __name__ == "__main__":
    main()
