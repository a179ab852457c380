"""Time and memory of one fine-tuning epoch of the real-size MobileSAM mask decoder, per 100 annotations.

    ./run bench fit_epoch [--annotations 100] [--prompts 4]

Random encoder features stand in for embeddings (the decoder's cost does not depend on their values);
masks are disks of varied size. Baseline in the same run: serving-path decodes of the same prompts.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from common import ROOT, print_table, stats_ms  # common puts the repository on sys.path

assert ROOT.is_dir()
from backend.learning.training import Example, TrainingConfig, simulate_prompts, train_step  # noqa: E402
from backend.segmentation.registry import build_sam  # noqa: E402
from backend.segmentation.sam import SamSegmenter  # noqa: E402
from backend.segmentation.segmenter import Embedding  # noqa: E402


def examples(count: int, rng: np.random.Generator) -> list[Example]:
    found = []
    for index in range(count):
        height, width = 768, 1024
        yy, xx = np.mgrid[:height, :width]
        cx, cy, r = rng.uniform(300, 700), rng.uniform(250, 500), rng.uniform(60, 240)
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        features = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
        found.append(Example(f"{index}/0", Embedding(features, (height, width), (768, 1024)), mask))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--annotations", type=int, default=100)
    parser.add_argument("--prompts", type=int, default=TrainingConfig.prompts_per_step)
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    segmenter = SamSegmenter(build_sam("vit_t"), "vit_t", torch.device("cpu"))
    data = examples(args.annotations, rng)
    prompts = [simulate_prompts(e.mask, rng, args.prompts) for e in data]
    targets = [segmenter.logits_target(e.mask, e.embedding) for e in data]

    decode_times = []
    for example, batch in zip(data, prompts, strict=True):
        for prompt in batch:
            started = time.perf_counter()
            segmenter.decode(example.embedding, prompt)
            decode_times.append(time.perf_counter() - started)

    decoder = segmenter.model.mask_decoder
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=5e-5)
    decoder.train()
    step_times = []
    epoch_started = time.perf_counter()
    for example, batch, target in zip(data, prompts, targets, strict=True):
        started = time.perf_counter()
        loss = train_step(segmenter, decoder, example, batch, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_times.append(time.perf_counter() - started)
    epoch = time.perf_counter() - epoch_started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    decode_median, decode_p95 = stats_ms(decode_times)
    step_median, step_p95 = stats_ms(step_times)
    per_prompt = step_median / args.prompts
    print(f"MobileSAM (vit_t) mask decoder, {args.annotations} annotations x {args.prompts} prompts, "
          f"torch threads {torch.get_num_threads()}")
    print_table([
        {"what": "serving decode (baseline)", "median ms": round(decode_median, 1), "p95 ms": round(decode_p95, 1),
         "ratio": 1.0},
        {"what": "training step (per image)", "median ms": round(step_median, 1), "p95 ms": round(step_p95, 1),
         "ratio": round(per_prompt / decode_median, 2)},
        {"what": f"epoch of {args.annotations} annotations", "median ms": round(epoch * 1000, 1), "p95 ms": "",
         "ratio": ""},
    ], ["what", "median ms", "p95 ms", "ratio"])
    print(f"peak RSS {peak_mb:.0f} MiB; ratio = training time per prompt / serving decode per prompt")


if __name__ == "__main__":
    main()
