"""Export speed: tasks per second and peak memory of `python -m backend export` per format.

    ./run bench export_speed [--tasks 500] [--regions 5]

A project of `--tasks` 1024 px JPEG images (made from the COCO_MVal photos, kept as local files below
LOCAL_FILES_DOCUMENT_ROOT as Label Studio's local storage serves them) with `--regions` brush regions
each, exported in every format by `backend.export.run.export_tasks` (what the CLI runs after reading the
project through the SDK). Each format runs in its own process, so its peak RSS is its own. The baseline
row is the same loop writing only the image files (read, decode, copy, regions decoded: the part no format
can skip).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import bench_images, print_table, stats_ms

ROOT = Path(__file__).resolve().parents[1]


def make_tasks(folder: Path, count: int, regions: int) -> list[dict]:
    from backend.segmentation.masks import mask_to_rle

    paths = bench_images(folder / "files", count, 1024)
    rng = np.random.default_rng(0)
    tasks = []
    for task_id, path in enumerate(paths, start=1):
        from PIL import Image

        width, height = Image.open(path).size
        yy, xx = np.mgrid[:height, :width]
        result = []
        for _ in range(regions):
            cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
            rx, ry = rng.uniform(0.03, 0.2) * width, rng.uniform(0.03, 0.2) * height
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
            result.append({"type": "brushlabels", "from_name": "tag", "to_name": "image",
                           "original_width": width, "original_height": height,
                           "value": {"format": "rle", "rle": mask_to_rle(mask),
                                     "brushlabels": [["Disk", "Background"][int(rng.integers(2))]]}})
        url = f"/data/local-files/?d=files/{path.name}"
        tasks.append({"id": task_id, "data": {"image": url}, "annotations": [{"id": task_id, "result": result}]})
    return tasks


def run_format(fmt: str, tasks_file: Path, root: Path) -> dict:
    """In this process: export the tasks as `fmt` ("images" = the baseline); per-task seconds and peak RSS."""
    from backend.core.label_config import parse_label_config
    from backend.core.settings import Settings
    from backend.export import run
    from backend.export.samples import Options
    from tests.helpers import LABEL_CONFIG

    if fmt == "images":  # the baseline: a writer that only writes the image files
        class ImagesOnly:
            name = "images"

            def __init__(self, out, classes):
                self.out = out

            def add(self, split, image_id, image, instances):
                image.write(self.out / "images" / split, str(image_id))

            def finish(self):
                pass

        run.FORMATS["images"] = ImagesOnly
    tasks = json.loads(tasks_file.read_text())
    settings = Settings(local_files_document_root=str(root), model_dir=str(root / "models"),
                        image_cache_dir=str(root / "cache"))
    stamps = [time.perf_counter()]
    run.export_tasks(tasks, parse_label_config(LABEL_CONFIG), fmt, root / f"out-{fmt}", Options(), settings,
                     progress=lambda done, total: stamps.append(time.perf_counter()))
    return {"seconds": np.diff(stamps).tolist(), "total": stamps[-1] - stamps[0],
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--regions", type=int, default=5)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # FORMAT TASKS_FILE ROOT
    args = parser.parse_args()
    if args.worker:
        fmt, tasks_file, root = args.worker
        print(json.dumps(run_format(fmt, Path(tasks_file), Path(root))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tasks_file = root / "tasks.json"
        tasks_file.write_text(json.dumps(make_tasks(root, args.tasks, args.regions)))
        rows, baseline = [], None
        for fmt in ("images", "coco", "yolo", "masks"):
            done = subprocess.run([sys.executable, __file__, "--worker", fmt, str(tasks_file), str(root)],
                                  cwd=ROOT, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            median, p95 = stats_ms(result["seconds"])
            rate = args.tasks / result["total"]
            baseline = baseline or rate
            rows.append({"format": "baseline: images + regions decoded" if fmt == "images" else fmt,
                         "tasks/s": f"{rate:.1f}", "ms/task median": f"{median:.1f}", "ms/task p95": f"{p95:.1f}",
                         "time vs baseline": f"{baseline / rate:.2f}", "peak RSS MiB": round(result["peak_mb"])})
    print(f"{args.tasks} tasks, 1024 px JPEG, {args.regions} brush regions each")
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
