"""Image encoder runtimes side by side: eager PyTorch against ONNX Runtime (ENCODER_RUNTIME=onnx).

    ./run bench encoder_runtime [--engines vit_t vit_b sam2:hiera-tiny sam_hq:vit-base] [--images 4] [--clicks 10]

Per engine (real-size architecture, the bench's region-mask checkpoint; SAM 2.1 / SAM-HQ as `family:size`, random
weights saved with save_pretrained): encoder time per image, median
and p95 over `--images` 1024 px COCO_MVal images (each encoded twice after a warm-up), the ratio against
eager measured in the same run, the lowest cosine similarity of the image embeddings (over every array the
decoder reads: SAM 2.1's high-resolution maps, SAM-HQ's early ViT features too), and the lowest mask
IoU over `--clicks` random clicks per image (float32 embeddings: the runtime's difference alone).
The first ONNX load exports the graph; that one-off time is shown apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from common import bench_images, print_table, region_mask_checkpoint, stats_ms, transformers_checkpoint


def checkpoint_of(name: str, work: Path, image: Path) -> tuple[str, Path]:
    """(SAM_ENGINE, SAM_CHECKPOINT) of a bench engine name: vit_t, vit_b, ... or family:size."""
    if ":" in name:
        family, size = name.split(":")
        return family, transformers_checkpoint(family, size, work)
    return name, region_mask_checkpoint(name, work, image)


def main() -> None:
    from backend.core.settings import Settings
    from backend.segmentation.prompts import Prompt
    from backend.segmentation.registry import load_segmenter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["vit_t", "sam2:hiera-tiny", "vit_b"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=10)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = bench_images(work / "images", args.images, 1024)
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        for engine in args.engines:
            engine_name, checkpoint = checkpoint_of(engine, work, paths[0])
            segmenters, times, export_s = {}, {}, None
            for runtime in ("torch", "onnx"):
                started = time.perf_counter()
                segmenters[runtime] = load_segmenter(Settings(
                    sam_engine=engine_name, sam_checkpoint=str(checkpoint), sam_download=False, model_dir=str(work),
                    encoder_runtime=runtime, embedding_float16=False))
                if runtime == "onnx":
                    export_s = time.perf_counter() - started
                segmenters[runtime].embed(images[0])  # warm-up
                times[runtime] = []
                for image in images * 2:
                    started = time.perf_counter()
                    segmenters[runtime].embed(image)
                    times[runtime].append(time.perf_counter() - started)
            rng = np.random.default_rng(0)
            cosines, ious = [], []
            for image in images:
                a, b = (segmenters[r].embed(image) for r in ("torch", "onnx"))
                for name in a.arrays:
                    x, y = (e.arrays[name].ravel().astype(np.float64) for e in (a, b))
                    cosines.append(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
                for _ in range(args.clicks):
                    point = rng.uniform(0.05, 0.95, 2) * (image.shape[1], image.shape[0])
                    click = Prompt(points=point[None].astype(np.float32), labels=np.array([1]))
                    m1, m2 = segmenters["torch"].decode(a, click).mask, segmenters["onnx"].decode(b, click).mask
                    union = np.logical_or(m1, m2).sum()
                    ious.append(1.0 if union == 0 else float(np.logical_and(m1, m2).sum() / union))
            eager = stats_ms(times["torch"])[0]
            for runtime in ("torch", "onnx"):
                median, p95 = stats_ms(times[runtime])
                rows.append({"engine": engine, "runtime": runtime, "encoder median ms": f"{median:.0f}",
                             "p95 ms": f"{p95:.0f}", "ratio to eager": f"{median / eager:.2f}",
                             "min cosine": "" if runtime == "torch" else f"{min(cosines):.6f}",
                             "min mask IoU": "" if runtime == "torch" else f"{min(ious):.4f} ({len(ious)} clicks)",
                             "one-off export s": "" if runtime == "torch" else f"{export_s:.1f}"})
    print_table(rows, list(rows[0]))


if __name__ == "__main__":
    main()
