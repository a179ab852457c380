"""Mask quality on the standard interactive-segmentation benchmarks, through the /predict code path.

    python -m backend evaluate --data ../shared/data/interactive-seg --dataset GrabCut COCO_MVal \\
        [--engine grabcut|vit_t|vit_b|...] [--checkpoint PATH] [--limit N] [--json out.json] [--plot out.png]

Every click is a Label Studio context item (percent coordinates) that goes through prompt parsing,
the engine, and the brush RLE encoding of `SegmentationService.predict`; the mask scored is the
RLE decoded back. So a regression anywhere in the service shows up as a worse score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from backend.core.label_config import parse_label_config
from backend.core.settings import Settings
from backend.evaluation.clicks import keypoint_item, mask_iou, next_click, rectangle_item
from backend.segmentation.masks import bounding_box, rle_to_mask
from backend.segmentation.service import SegmentationService

LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="Object" smart="true"/></RectangleLabels>
</View>"""
THRESHOLDS = (0.85, 0.90)


@dataclass(frozen=True)
class Sample:
    name: str
    image: Path
    truth: Path


@dataclass
class SampleScore:
    name: str
    ious: list[float]  # IoU after click 1, 2, ... (filled with the last value after an early stop)
    box_iou: float
    seconds_per_click: list[float] = field(default_factory=list)


def load_dataset(root: Path, name: str) -> list[Sample]:
    """The samples of GrabCut (data_GT + boundary_GT) or COCO_MVal (img + gt), sorted by name."""
    folder = root / name
    if name == "GrabCut":
        images, truths, suffix = folder / "data_GT", folder / "boundary_GT", ".bmp"
    elif name == "COCO_MVal":
        images, truths, suffix = folder / "img", folder / "gt", ".png"
    else:
        raise ValueError(f"unknown data set {name!r}: GrabCut or COCO_MVal")
    if not images.is_dir():
        raise FileNotFoundError(f"{images} not found: pass --data pointing at the interactive-seg folder")
    samples = []
    for image in sorted(images.iterdir()):
        truth = truths / (image.stem + suffix)
        if image.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp") and truth.exists():
            samples.append(Sample(image.stem, image, truth))
    return samples


def read_truth(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Object mask and ignore mask (GrabCut's 128 band; None for binary sets)."""
    raw = np.asarray(Image.open(path).convert("L"))
    ignore = raw == 128
    return raw > 128, (ignore if ignore.any() else None)


class Evaluator:
    """Runs the click protocol on one engine through `SegmentationService.predict`."""

    def __init__(self, settings: Settings, max_clicks: int = 20, stop_iou: float = max(THRESHOLDS)):
        self.service = SegmentationService(settings)
        self.config = parse_label_config(LABEL_CONFIG)
        self.max_clicks = max_clicks
        self.stop_iou = stop_iou

    def _predict(self, sample: Sample, items: list[dict], size: tuple[int, int]) -> tuple[np.ndarray, float]:
        task = {"id": 0, "data": {"image": str(sample.image.resolve())}}
        started = time.perf_counter()
        prediction = self.service.predict(task, {"result": items}, self.config, "evaluate")
        took = time.perf_counter() - started
        height, width = size
        [item] = prediction["result"]
        return rle_to_mask(item["value"]["rle"], height, width), took

    def score(self, sample: Sample) -> SampleScore:
        truth, ignore = read_truth(sample.truth)
        height, width = truth.shape
        box = rectangle_item(bounding_box(truth), width, height, "Object")
        box_mask, _ = self._predict(sample, [box], (height, width))
        items: list[dict] = []
        prediction, ious, seconds = None, [], []
        for number in range(1, self.max_clicks + 1):
            click = next_click(prediction, truth, ignore)
            if click is None:
                break
            items.append(keypoint_item(click, width, height, "Object"))
            prediction, took = self._predict(sample, items, (height, width))
            ious.append(mask_iou(prediction, truth, ignore))
            seconds.append(took)
            if number >= 5 and ious[-1] >= self.stop_iou:
                break
        ious += [ious[-1] if ious else 1.0] * (self.max_clicks - len(ious))
        return SampleScore(sample.name, ious, mask_iou(box_mask, truth, ignore), seconds)


def noc(ious: list[float], threshold: float, max_clicks: int) -> int:
    """Number of clicks to reach `threshold` IoU (max_clicks when never reached)."""
    return next((i + 1 for i, value in enumerate(ious) if value >= threshold), max_clicks)


def summarize(scores: list[SampleScore], max_clicks: int) -> dict:
    curves = np.array([s.ious for s in scores])
    seconds = [t for s in scores for t in s.seconds_per_click]
    summary = {
        "images": len(scores),
        "miou": {str(k): round(float(curves[:, k - 1].mean()), 4) for k in (1, 3, 5) if k <= curves.shape[1]},
        "box_miou": round(float(np.mean([s.box_iou for s in scores])), 4),
        "ms_per_click_median": round(1000 * float(np.median(seconds)), 1) if seconds else None,
        "curve": [round(float(v), 4) for v in curves.mean(axis=0)],
    }
    for threshold in THRESHOLDS:
        clicks = [noc(s.ious, threshold, max_clicks) for s in scores]
        summary[f"noc@{round(threshold * 100)}"] = round(float(np.mean(clicks)), 2)
        summary[f"failures@{round(threshold * 100)}"] = sum(
            1 for s in scores if max(s.ious) < threshold
        )
    return summary


def table(results: dict[str, dict], engine: str) -> str:
    head = ("data set", "images", "mIoU@1", "mIoU@3", "mIoU@5", "NoC@85", "NoC@90", ">20@90", "box mIoU", "ms/click")
    rows = [" | ".join(head), " | ".join("---" for _ in head)]
    for name, s in results.items():
        rows.append(" | ".join(str(v) for v in (
            f"{name} ({engine})", s["images"], *(s["miou"].get(k, "-") for k in ("1", "3", "5")), s["noc@85"],
            s["noc@90"], s["failures@90"], s["box_miou"], s["ms_per_click_median"])))
    return "\n".join(rows)


def plot(results: dict[str, dict], path: Path, title: str) -> None:
    """mIoU-vs-clicks curves as a PNG (drawn with Pillow: no plotting dependency)."""
    from PIL import ImageDraw

    width, height, margin = 640, 420, 50
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = margin, height - margin, width - 20, 30
    draw.line([(x0, y0), (x1, y0)], fill="black")
    draw.line([(x0, y0), (x0, y1)], fill="black")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e"]
    longest = max(len(s["curve"]) for s in results.values())
    to_x = lambda k: x0 + (k - 1) * (x1 - x0) / max(1, longest - 1)  # noqa: E731
    to_y = lambda v: y0 - v * (y0 - y1)  # noqa: E731
    for value in (0.0, 0.25, 0.5, 0.75, 0.85, 0.9, 1.0):
        draw.line([(x0 - 4, to_y(value)), (x1, to_y(value))], fill="#dddddd")
        draw.text((8, to_y(value) - 6), f"{value:.2f}", fill="black")
    for k in range(1, longest + 1, max(1, longest // 10)):
        draw.text((to_x(k) - 4, y0 + 6), str(k), fill="black")
    draw.text((width // 2 - 40, height - 20), "clicks", fill="black")
    draw.text((x0, 8), title, fill="black")
    for index, (name, summary) in enumerate(results.items()):
        colour = colours[index % len(colours)]
        points = [(to_x(k + 1), to_y(v)) for k, v in enumerate(summary["curve"])]
        draw.line(points, fill=colour, width=2)
        draw.text((x1 - 160, y0 - 20 - 14 * index), f"{name}", fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def evaluate(settings: Settings, data: Path, datasets: list[str], limit: int | None = None,
             max_clicks: int = 20, progress=None, stride: int = 1) -> dict[str, dict]:
    """Summaries per data set (see `summarize`): every `stride`-th image, at most `limit` of them."""
    evaluator = Evaluator(settings, max_clicks=max_clicks)
    results = {}
    for name in datasets:
        samples = load_dataset(data, name)[::stride][:limit]
        scores = []
        for index, sample in enumerate(samples, 1):
            scores.append(evaluator.score(sample))
            if progress:
                progress(f"{name}: {index}/{len(samples)} {sample.name} IoU@1={scores[-1].ious[0]:.3f}")
        results[name] = summarize(scores, max_clicks)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/interactive-seg"))
    parser.add_argument("--dataset", nargs="+", default=["GrabCut", "COCO_MVal"])
    parser.add_argument("--engine", help="SAM_ENGINE for this run (default: the environment's)")
    parser.add_argument("--checkpoint", help="SAM_CHECKPOINT for this run")
    parser.add_argument("--limit", type=int, help="first N images of each set")
    parser.add_argument("--stride", type=int, default=1, help="every Nth image (COCO_MVal: 10 per class, sorted)")
    parser.add_argument("--max-clicks", type=int, default=20)
    parser.add_argument("--json", type=Path, help="write the summaries here")
    parser.add_argument("--plot", type=Path, help="write IoU-vs-clicks curves here (PNG)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    if args.engine:
        env["SAM_ENGINE"] = args.engine
    if args.checkpoint:
        env["SAM_CHECKPOINT"] = args.checkpoint
    settings = dataclasses.replace(Settings.from_env(env), local_files_document_root=str(args.data.resolve()))
    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    results = evaluate(settings, args.data, args.dataset, args.limit, args.max_clicks, report, args.stride)
    print(table(results, settings.sam_engine))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"engine": settings.sam_engine, "results": results}, indent=2))
    if args.plot:
        plot(results, args.plot, f"mIoU vs clicks, engine {settings.sam_engine}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
