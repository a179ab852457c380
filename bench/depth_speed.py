"""Seconds per 1024 px image for the real-size Depth Anything V2 Small architecture (random weights).

    ./run bench depth_speed [--images 5]

Rows: the bare model forward (baseline), and the whole per-task path of the backend (decode image,
pre-process, forward, post-process to full size, 16-bit PNG + preview written).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, bench_images, print_table, seconds_row

assert ROOT.is_dir()
from backend.core.settings import Settings  # noqa: E402
from backend.depth import estimate as depth_module  # noqa: E402


def save_v2_small(folder: Path) -> Path:
    """Depth-Anything-V2-Small-hf's architecture and image processor, with random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                            patch_size=14, image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False,
                            apply_layernorm=True)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=384,
                                 neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
                                 depth_estimation_type="relative")
    DepthAnythingForDepthEstimation(config).save_pretrained(folder)
    DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      do_pad=False, resample=3).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_v2_small(tmp / "model")
        settings = Settings(depth_model=str(model), output_dir=str(tmp / "out"), output_url="http://bench",
                            local_files_document_root=str(tmp))
        estimator = depth_module.get_estimator(settings)
        params = sum(p.numel() for p in estimator.model.parameters()) / 1e6
        images = bench_images(tmp / "images", args.images, 1024)
        depth_module.depth_for_task({"id": 0, "data": {"image": str(images[0])}}, settings)  # warm-up
        forward, whole = [], []
        for index, path in enumerate(images):
            from PIL import Image

            pixels = np.asarray(Image.open(path).convert("RGB"))
            inputs = estimator.processor(images=pixels, return_tensors="pt")
            started = time.perf_counter()
            with torch.inference_mode():
                estimator.model(**inputs)
            forward.append(time.perf_counter() - started)
            started = time.perf_counter()
            depth_module.depth_for_task({"id": index + 1, "data": {"image": str(path)}}, settings)
            whole.append(time.perf_counter() - started)
        print(f"Depth Anything V2 Small architecture ({params:.1f} M parameters), {args.images} images of 1024 px "
              f"long side, input {tuple(inputs['pixel_values'].shape[-2:])}, torch threads {torch.get_num_threads()}")
        baseline = seconds_row("model forward (baseline)", forward)
        print_table([baseline, seconds_row("whole task (read, infer, write PNGs)", whole, float(np.median(forward)))],
                    ["what", "median s", "p95 s", "ratio"])
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
