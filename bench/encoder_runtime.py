"""Image encoder runtimes side by side: what ENCODER_RUNTIME ships (torch, onnx, openvino) and the other
candidates a CPU inference engineer would try (bench-only): bfloat16 autocast, channels-last, torch.compile,
ONNX Runtime int8 dynamic quantization of the MatMuls, OpenVINO forced to float32.

    ./run bench encoder_runtime [--engines vit_t vit_b sam2:hiera-tiny sam_hq:vit-base] [--images 4] [--clicks 10]
                                [--compile] [--shipped-only]

Per engine (real-size architecture, the bench's region-mask checkpoint; SAM 2.1 / SAM-HQ as `family:size`, random
weights saved with save_pretrained, shipped runtimes only): encoder time per image, median and p95 over
`--images` 1024 px COCO_MVal images (each encoded twice after a warm-up), the ratio against eager float32
measured in the same run, the lowest cosine similarity of the image embeddings (over every array the decoder
reads: SAM 2.1's high-resolution maps, SAM-HQ's early ViT features too), and the lowest mask IoU over `--clicks`
random clicks per image (float32 embeddings: the runtime's difference alone). The issue's bar for a fast path:
cosine >= 0.999 and IoU >= 0.99 on 40 clicks. The one-off set-up (export, check, compilation) is shown apart.
`--compile` adds torch.compile (about 80 s of compilation per engine here).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import bench_images, print_table, region_mask_checkpoint, stats_ms, transformers_checkpoint

SHIPPED = ("torch", "onnx", "openvino")


def checkpoint_of(name: str, work: Path, image: Path) -> tuple[str, Path]:
    """(SAM_ENGINE, SAM_CHECKPOINT) of a bench engine name: vit_t, vit_b, ... or family:size."""
    if ":" in name:
        family, size = name.split(":")
        return family, transformers_checkpoint(family, size, work)
    return name, region_mask_checkpoint(name, work, image)


# ------------------------------------------------------------------ bench-only candidates (SAM / MobileSAM)
def bf16_autocast(segmenter) -> Callable:
    encoder = segmenter.model.image_encoder

    def run(pixels):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder(pixels).float()

    return run


def channels_last(segmenter) -> Callable:
    encoder = copy.deepcopy(segmenter.model.image_encoder).to(memory_format=torch.channels_last)
    return lambda pixels: encoder(pixels.contiguous(memory_format=torch.channels_last))


def compiled(segmenter) -> Callable:
    encoder = torch.compile(copy.deepcopy(segmenter.model.image_encoder))
    encoder(torch.zeros(1, 3, 1024, 1024))  # compiles
    return encoder


def onnx_int8(segmenter) -> Callable:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from backend.segmentation.encoder_runtime import GraphEncoder
    from backend.segmentation.graph_runtimes import GRAPH_RUNTIMES

    graph = segmenter.encoder.path
    quantized = graph.with_name(graph.stem + "-int8.onnx")
    quantize_dynamic(str(graph), str(quantized), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    return GraphEncoder(GRAPH_RUNTIMES["onnx"].load(quantized, torch.get_num_threads()), quantized, "onnx-int8")


def openvino_f32(segmenter) -> Callable:
    from backend.segmentation.encoder_runtime import GraphEncoder
    from backend.segmentation.graph_runtimes import openvino_runtime

    openvino_runtime.PRECISION = "f32"
    try:
        run = openvino_runtime.load(segmenter.encoder.path, torch.get_num_threads())
    finally:
        openvino_runtime.PRECISION = None
    return GraphEncoder(run, segmenter.encoder.path, "openvino-f32")


EXTRA: dict[str, tuple[str, Callable]] = {  # name -> (the shipped runtime it starts from, how)
    "torch bf16 autocast": ("torch", bf16_autocast),
    "torch channels-last": ("torch", channels_last),
    "onnx int8 dynamic": ("onnx", onnx_int8),
    "openvino f32": ("openvino", openvino_f32),
}


def main() -> None:
    from backend.core.settings import Settings
    from backend.segmentation.prompts import Prompt
    from backend.segmentation.registry import load_segmenter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", nargs="+", default=["vit_t", "sam2:hiera-tiny", "vit_b"])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="add torch.compile (long compilation)")
    parser.add_argument("--shipped-only", action="store_true", help="only torch, onnx and openvino")
    args = parser.parse_args()
    extra = {} if args.shipped_only else dict(EXTRA)
    if args.compile:
        extra["torch.compile"] = ("torch", compiled)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths = bench_images(work / "images", args.images, 1024)
        images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        for engine in args.engines:
            engine_name, checkpoint = checkpoint_of(engine, work, paths[0])
            segmenters, setup_s = {}, {}
            for runtime in SHIPPED:
                started = time.perf_counter()
                segmenters[runtime] = load_segmenter(Settings(
                    sam_engine=engine_name, sam_checkpoint=str(checkpoint), sam_download=False, model_dir=str(work),
                    encoder_runtime=runtime, embedding_float16=False))
                setup_s[runtime] = time.perf_counter() - started
            if ":" not in engine:  # the bench-only candidates swap SamSegmenter.encoder
                for name, (base, make) in extra.items():
                    started = time.perf_counter()
                    candidate = copy.copy(segmenters[base])
                    candidate.encoder = make(segmenters[base])
                    setup_s[name] = time.perf_counter() - started
                    segmenters[name] = candidate
            rows += measure(engine, segmenters, setup_s, images, args.clicks, Prompt)
            print_table(rows, list(rows[0]))  # so far: a long run shows its progress
    print()
    print_table(rows, list(rows[0]))


def measure(engine: str, segmenters: dict, setup_s: dict, images: list, clicks: int, prompt_type) -> list[dict]:
    times = {}
    for name, segmenter in segmenters.items():
        segmenter.embed(images[0])  # warm-up
        times[name] = []
        for image in images * 2:
            started = time.perf_counter()
            segmenter.embed(image)
            times[name].append(time.perf_counter() - started)
    eager = stats_ms(times["torch"])[0]
    rows = []
    for name, segmenter in segmenters.items():
        rng = np.random.default_rng(0)
        cosines, ious = [], []
        for image in images:
            a, b = segmenters["torch"].embed(image), segmenter.embed(image)
            for array in a.arrays:
                x, y = (e.arrays[array].ravel().astype(np.float64) for e in (a, b))
                cosines.append(float(x @ y / np.linalg.norm(x) / np.linalg.norm(y)))
            for _ in range(clicks):
                point = rng.uniform(0.05, 0.95, 2) * (image.shape[1], image.shape[0])
                click = prompt_type(points=point[None].astype(np.float32), labels=np.array([1]))
                m1, m2 = segmenters["torch"].decode(a, click).mask, segmenter.decode(b, click).mask
                union = np.logical_or(m1, m2).sum()
                ious.append(1.0 if union == 0 else float(np.logical_and(m1, m2).sum() / union))
        median, p95 = stats_ms(times[name])
        keeps = min(cosines) >= 0.999 and min(ious) >= 0.99
        rows.append({"engine": engine, "candidate": name, "encoder median ms": f"{median:.0f}", "p95 ms": f"{p95:.0f}",
                     "ratio to eager": f"{median / eager:.2f}",
                     "min cosine": "" if name == "torch" else f"{min(cosines):.6f}",
                     "min mask IoU": "" if name == "torch" else f"{min(ious):.4f} ({len(ious)} clicks)",
                     "keeps masks": "" if name == "torch" else ("yes" if keeps else "NO"),
                     "one-off set-up s": "" if name == "torch" else f"{setup_s[name]:.1f}"})
    return rows


if __name__ == "__main__":
    main()
