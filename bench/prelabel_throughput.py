"""Images per minute for bulk pre-labeling with real-size architectures (random weights), 1 vs 2 RQ workers.

    ./run bench prelabel_throughput [--images 8] [--detections 10] [--detector omdet|owlv2]

Workers table: the default detector (OmDet-Turbo swin-tiny at 640 px, the omlab/omdet-turbo-swin-tiny-hf
architecture; `--detector owlv2` for OWLv2 base/16 at 960 px) and MobileSAM (vit_t), through real RQ workers on
a real redis-server, for RQ's default forking worker and the backend's ModelKeepingWorker (backend/core/worker.py),
1 and 2 workers (with 2, each gets 1 torch thread: 2 cores in all), timed once every worker is warm, with the
workers' peak resident memory. Random weights: the threshold is 0 with `--detections` boxes per image (OWLv2's
box head is scaled down so its boxes are the model's prior boxes), so every image costs one detector pass and
that many box->mask decodes.

A second table times one process per route for 1, 5 and 20 labels (seconds per image, peak memory):
OmDet-Turbo (+ MobileSAM on the default runtime, and on ONNX Runtime) or OWLv2 (+ MobileSAM), OWLv2 with
ENCODER_RUNTIME=torch, Grounding DINO tiny (its architecture,
800 / 1333 px as its card says) and SAM 3 (PRELABEL_DETECTOR=sam3; the facebook/sam3 architecture, 848 M
parameters), whose backbone runs once per image however many labels are asked. `--only workers|labels` runs one
table, `--routes omdet omdet-onnx owlv2 owlv2-eager gdino sam3` some rows of the second. ENCODER_RUNTIME is the
default (auto: OpenVINO for MobileSAM's encoder, ONNX Runtime for OWLv2's vision tower) except in the rows that
name it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, bench_images, print_table, random_checkpoint, redis_server, seconds_row

LABEL_POOL = ["person", "car", "dog", "chair", "bottle", "cat", "bicycle", "bus", "truck", "bird", "horse", "sheep",
              "cow", "boat", "bench", "cup", "laptop", "tv", "plant", "umbrella"]
LABELS = LABEL_POOL[:5]
LABEL_COUNTS = (1, 5, 20)


def config_of(labels: list[str]) -> str:
    return "<View><Image name='image' value='$image'/><BrushLabels name='tag' toName='image'>" + "".join(
        f"<Label value='{label}'/>" for label in labels) + "</BrushLabels></View>"


CONFIG = config_of(LABELS)


def job(path: str) -> int:
    """One image: the production pre-labeling path (read, detect all categories, segment each box)."""
    sys.path.insert(0, str(ROOT))
    from backend.core.label_config import parse_label_config
    from backend.core.settings import get_settings
    from backend.prelabel.run import prelabel_task

    prediction = prelabel_task({"id": 0, "data": {"image": path}}, parse_label_config(CONFIG), get_settings(),
                               project_id="bench")
    return len(prediction["result"])


PARTS = {"detector s": "detector_runs", "encoder s": "encoder_runs", "decoders s": "decoder_runs",
         "concepts s": "concept_runs"}  # per image, from the service's /metrics counters


def measure(images: list[str]) -> dict:
    """In a fresh process: seconds per image of the production path for each label count (a warm-up image
    first, then distinct images per count, so no embedding is reused), the seconds per image spent in each part
    (the service's counters), and the process's peak RSS."""
    sys.path.insert(0, str(ROOT))
    from backend.core.label_config import parse_label_config
    from backend.core.settings import get_settings
    from backend.prelabel.run import prelabel_task
    from backend.segmentation.service import get_segmentation

    def once(path: str, labels: list[str]) -> float:
        started = time.perf_counter()
        prelabel_task({"id": 0, "data": {"image": path}}, parse_label_config(config_of(labels)), get_settings())
        return time.perf_counter() - started

    once(images[0], LABEL_POOL[:1])
    per_count = (len(images) - 1) // len(LABEL_COUNTS)
    seconds, parts = {}, {}
    for i, count in enumerate(LABEL_COUNTS):
        before = get_segmentation().counters.snapshot()["seconds"]
        seconds[count] = [once(path, LABEL_POOL[:count]) for path in images[1 + i * per_count: 1 + (i + 1) * per_count]]
        after = get_segmentation().counters.snapshot()["seconds"]
        parts[count] = {column: round((after.get(key, 0) - before.get(key, 0)) / per_count, 2)
                        for column, key in PARTS.items() if after.get(key, 0) > before.get(key, 0)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "parts": parts, "peak_rss_mb": peak}


def save_sam3_random(folder: Path) -> Path:
    """The facebook/sam3 architecture (Sam3VideoConfig's defaults) with random weights, in its layout."""
    sys.path.insert(0, str(ROOT))
    from safetensors.torch import save_file
    from transformers import Sam3VideoConfig, Sam3VideoModel

    from tests.helpers import offline_clip_tokenizer

    torch.manual_seed(0)
    config = Sam3VideoConfig()
    model = Sam3VideoModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    offline_clip_tokenizer(32)[0].save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    return folder


ROUTES = {  # --routes name: (table name, the settings it changes, made in a temporary folder)
    "omdet": ("OmDet-Turbo swin-tiny @640 + MobileSAM", lambda tmp: {"DETECTOR_MODEL": omdet_turbo_tiny(tmp)}),
    "omdet-onnx": ("OmDet-Turbo swin-tiny @640 + MobileSAM, ENCODER_RUNTIME=onnx",
                   lambda tmp: {"DETECTOR_MODEL": omdet_turbo_tiny(tmp), "ENCODER_RUNTIME": "onnx"}),
    "owlv2": ("OWLv2 base/16 @960 + MobileSAM", lambda tmp: {"DETECTOR_MODEL": owlv2_base(tmp)}),
    "owlv2-eager": ("OWLv2 base/16 @960 + MobileSAM, ENCODER_RUNTIME=torch",
                    lambda tmp: {"DETECTOR_MODEL": owlv2_base(tmp), "ENCODER_RUNTIME": "torch"}),
    "gdino": ("Grounding DINO tiny + MobileSAM",
              lambda tmp: {"DETECTOR_MODEL": str(save_grounding_dino_tiny(tmp / "gdino"))}),
    "sam3": ("SAM 3 (concepts)", lambda tmp: {"SAM_ENGINE": "sam3", "PRELABEL_DETECTOR": "sam3",
                                              "SAM_CHECKPOINT": str(save_sam3_random(tmp / "sam3"))}),
}
WORKER_CLASSES = {"rq default (fork per job)": "rq.worker.Worker",
                  "ModelKeepingWorker": "backend.core.worker.ModelKeepingWorker"}
DETECTORS = {"omdet": "OmDet-Turbo swin-tiny @640", "owlv2": "OWLv2 base/16 @960"}  # --detector: workers table


def labels_table(tmp: Path, base_env: dict, per_count: int, routes: list[str]) -> None:
    images = [str(p) for p in bench_images(tmp / "label-images", 1 + per_count * len(LABEL_COUNTS), 1024)]
    rows = []
    for key in routes:
        name, settings_of = ROUTES[key]
        extra = settings_of(tmp)
        done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(images)], cwd=ROOT / "bench",
                              env={**os.environ, **base_env, **extra, "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"},
                              capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        one = float(np.median(result["seconds"][str(LABEL_COUNTS[0])]))
        rows += [{**seconds_row(f"{name}, {count} labels", result["seconds"][str(count)], one),
                  **result["parts"][str(count)], "peak MiB": round(result["peak_rss_mb"])} for count in LABEL_COUNTS]
    print(f"seconds per 1024 px image by number of labels (MAX_DETECTIONS={base_env['MAX_DETECTIONS']}, threshold 0, "
          f"{per_count} images per row, one process per route, 2 threads; parts: mean seconds per image)")
    parts = [column for column in PARTS if any(column in row for row in rows)]
    print_table(rows, ["what", "median s", "p95 s", "ratio", *parts, "peak MiB"])  # ratio: to the 1-label median


def save_grounding_dino_tiny(folder: Path) -> Path:
    """The IDEA-Research/grounding-dino-tiny architecture (Swin-T, BERT-base text, 900 queries; transformers'
    GroundingDinoConfig defaults) with random weights, its processor at the model card's 800 / 1333 px, and an
    offline word vocabulary holding the labels."""
    sys.path.insert(0, str(ROOT))
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *LABEL_POOL]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    GroundingDinoForObjectDetection(GroundingDinoConfig()).save_pretrained(folder)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                           tokenizer=BertTokenizer(str(folder / "vocab.txt"))).save_pretrained(folder)
    return folder


@functools.cache
def owlv2_base(tmp: Path) -> str:
    return str(save_owlv2_base(tmp / "owlv2"))


@functools.cache
def omdet_turbo_tiny(tmp: Path) -> str:
    return str(save_omdet_turbo_tiny(tmp / "omdet"))


def save_omdet_turbo_tiny(folder: Path) -> Path:
    """The omlab/omdet-turbo-swin-tiny-hf architecture (transformers' OmDetTurboConfig defaults: timm Swin-T at
    640 px, CLIP text tower, 900 queries) with random weights, the DETR image processor at 640 x 640 and an offline
    CLIP tokenizer."""
    sys.path.insert(0, str(ROOT))
    from transformers import DetrImageProcessorPil, OmDetTurboConfig, OmDetTurboForObjectDetection
    from transformers.models.omdet_turbo.processing_omdet_turbo import OmDetTurboProcessor

    from backend.segmentation.compat import provide_timm
    from tests.helpers import offline_clip_tokenizer

    provide_timm()
    torch.manual_seed(0)
    OmDetTurboForObjectDetection(OmDetTurboConfig()).save_pretrained(folder)
    OmDetTurboProcessor(image_processor=DetrImageProcessorPil(size={"height": 640, "width": 640}, do_pad=False),
                        tokenizer=offline_clip_tokenizer(77)[0]).save_pretrained(folder)
    return folder


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


def tree_rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes and their children (work horses), MiB."""
    total = 0
    for pid in pids:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for member in [pid, *map(int, children)]:
                status = Path(f"/proc/{member}/status").read_text()
                total += int(status.split("VmRSS:")[1].split()[0])
        except (OSError, IndexError):
            continue
    return total / 1024


def run(workers: int, images: list[Path], env: dict, redis_url: str, worker_class: str) -> tuple[float, float]:
    """Seconds for all images through `workers` RQ workers of `worker_class` once they are warm, and the peak
    resident memory of the workers (sampled every 0.1 s)."""
    from redis import Redis
    from rq import Queue

    connection = Redis.from_url(redis_url)
    connection.flushdb()
    queue = Queue("backend", connection=connection)
    procs = [subprocess.Popen([str(Path(sys.executable).with_name("rq")), "worker", "backend", "--url", redis_url,
                               "--worker-class", worker_class], cwd=ROOT / "bench",
                              env={**os.environ, **env, "OMP_NUM_THREADS": str(max(1, 2 // workers)),
                                   "PYTHONPATH": f"{ROOT}:{ROOT / 'bench'}"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(workers)]
    peak = 0.0

    def wait_for(jobs) -> None:
        nonlocal peak
        while any(j.get_status(refresh=True).value not in ("finished", "failed") for j in jobs):
            peak = max(peak, tree_rss_mb([p.pid for p in procs]))
            time.sleep(0.1)

    # warm-up: each worker loads the models on its first job; time from the moment all are warm
    wait_for([queue.enqueue("prelabel_throughput.job", str(images[0]), job_timeout=3600) for _ in range(workers)])
    started = time.perf_counter()
    jobs = [queue.enqueue("prelabel_throughput.job", str(path), job_timeout=3600) for path in images]
    wait_for(jobs)
    elapsed = time.perf_counter() - started
    failed = [j for j in jobs if j.get_status().value == "failed"]
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=60)
    if failed:
        raise RuntimeError(f"{len(failed)} jobs failed: {failed[0].latest_result().exc_string[-2000:]}")
    return elapsed, peak


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--detections", type=int, default=10)
    parser.add_argument("--label-images", type=int, default=2, help="images per row of the labels table")
    parser.add_argument("--only", choices=["workers", "labels"])
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES),
                        help="rows of the labels table")
    parser.add_argument("--detector", choices=list(DETECTORS), default="omdet", help="detector of the workers table")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one route's process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"SAM_ENGINE": "vit_t", "SAM_CHECKPOINT": str(random_checkpoint("vit_t", tmp)),
               "SAM_DOWNLOAD": "false",
               "DETECTOR_THRESHOLD": "0", "MAX_DETECTIONS": str(args.detections), "HF_HUB_OFFLINE": "1",
               "LOCAL_FILES_DOCUMENT_ROOT": str(tmp), "MODEL_DIR": str(tmp / "models"),
               "EMBEDDING_CACHE_MB": "64", "EMBEDDING_DISK_MB": "0", "LOG_LEVEL": "WARNING"}
        if args.only != "workers":
            labels_table(tmp, env, args.label_images, args.routes)
        if args.only == "labels":
            return
        env.update(ROUTES[args.detector][1](tmp))
        with redis_server() as redis_url:
            images = bench_images(tmp / "images", args.images, 1024)
            rows = []
            for name, worker_class in WORKER_CLASSES.items():
                for workers in (1, 2):
                    seconds, peak = run(workers, images, env, redis_url, worker_class)
                    rows.append({"worker": name, "workers": workers, "images": len(images),
                                 "seconds": round(seconds, 1), "images/min": round(60 * len(images) / seconds, 2),
                                 "peak MiB": round(peak)})
            for row in rows:  # baseline: RQ's default worker, 1 worker
                row["ratio"] = round(row["images/min"] / rows[0]["images/min"], 2)
        print(f"bulk pre-labeling: {DETECTORS[args.detector]} + MobileSAM, {args.detections} boxes per 1024 px image, "
              f"{len(LABELS)} categories in one detector pass; peak MiB = all workers' resident memory together")
        print_table(rows, ["worker", "workers", "images", "seconds", "images/min", "ratio", "peak MiB"])


if __name__ == "__main__":
    main()
