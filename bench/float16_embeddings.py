"""Masks from float16 embeddings (EMBEDDING_FLOAT16, the default) against float32, on the real-size MobileSAM
architecture with the bench's region-mask checkpoint (random weights whose decoder paints regions).

    ./run bench float16_embeddings [--images 4] [--clicks 10] [--engine vit_t]

Clicks are spread over each image on a fixed grid; each one is decoded from the float32 embedding and from
the same embedding stored as float16. The table gives the mask IoU (float16 vs float32: median, minimum)
and the embedding's size and cosine similarity.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import ROOT, bench_images, print_table, region_mask_checkpoint

assert ROOT.is_dir()
from backend.core.settings import Settings  # noqa: E402
from backend.segmentation.prompts import Prompt  # noqa: E402
from backend.segmentation.registry import load_segmenter  # noqa: E402
from backend.segmentation.segmenter import Embedding  # noqa: E402


def grid_clicks(width: int, height: int, count: int) -> list[tuple[float, float]]:
    side = int(np.ceil(np.sqrt(count)))
    points = [((i + 0.5) / side * width, (j + 0.5) / side * height) for j in range(side) for i in range(side)]
    return points[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=10, help="per image")
    parser.add_argument("--engine", default="vit_t")
    args = parser.parse_args()
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="bench-f16-"))
    paths = bench_images(workdir / "images", args.images, 1024)
    checkpoint = region_mask_checkpoint(args.engine, workdir, paths[0])
    settings = Settings(sam_engine=args.engine, sam_checkpoint=str(checkpoint), sam_download=False,
                        embedding_float16=False, model_dir=str(workdir))
    segmenter = load_segmenter(settings)
    ious, cosines, empty = [], [], 0
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        full = segmenter.embed(image)
        half = Embedding(full.features.astype(np.float16), full.original_size, full.input_size)
        a, b = full.features.ravel().astype(np.float64), half.features.ravel().astype(np.float64)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        for x, y in grid_clicks(image.shape[1], image.shape[0], args.clicks):
            prompt = Prompt(points=np.array([[x, y]], np.float32), labels=np.array([1]))
            m32, m16 = segmenter.decode(full, prompt).mask, segmenter.decode(half, prompt).mask
            union = np.logical_or(m32, m16).sum()
            empty += int(union == 0)
            ious.append(float(np.logical_and(m32, m16).sum() / union) if union else 1.0)
    print(f"{args.engine}, {len(paths)} images at 1024 px, {len(ious)} clicks ({empty} empty in both)")
    print_table([
        {"what": "mask IoU float16 vs float32", "median": round(float(np.median(ious)), 5),
         "min": round(min(ious), 5)},
        {"what": "embedding cosine similarity", "median": round(float(np.median(cosines)), 7),
         "min": round(min(cosines), 7)},
        {"what": "embedding MiB (float32 -> float16)", "median": f"{full.features.nbytes / 2**20:.1f} -> "
                                                                 f"{half.features.nbytes / 2**20:.1f}", "min": ""},
    ], ["what", "median", "min"])


if __name__ == "__main__":
    main()
