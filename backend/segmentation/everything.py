"""Everything mode on a cached embedding: SAM's point grid, filtered and de-duplicated.

The engine-neutral form of segment_anything's automatic mask generator (one crop, no crop layers): every
grid point is a single positive click; of its three candidates those whose predicted IoU and stability
pass the thresholds are kept, and overlapping masks are reduced greedily by score. Any engine with
`point_candidates` and `upscale` serves it (SAM 2.1, SAM-HQ)."""

from __future__ import annotations

import numpy as np
import torch

from backend.core.settings import Settings
from backend.segmentation import compat
from backend.segmentation.segmenter import Embedding

compat.install()

from segment_anything.utils.amg import calculate_stability_score  # noqa: E402

POINTS_PER_BATCH = 64
DUPLICATE_IOU = 0.7  # a mask overlapping a better one this much is a duplicate (SAM's box NMS threshold)
STABILITY_OFFSET = 1.0  # logit offset of SAM's stability score (its automatic mask generator's default)
MIN_AREA_FRACTION = 1e-4  # specks smaller than this share of the image are dropped


def grid_points(per_side: int, height: int, width: int) -> np.ndarray:
    """The centres of a per_side x per_side grid over the image, in pixels (N x 2, x then y)."""
    offsets = (np.arange(per_side) + 0.5) / per_side
    xs, ys = np.meshgrid(offsets * width, offsets * height)
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)


def grid_masks(segmenter, embedding: Embedding, settings: Settings) -> list[tuple[np.ndarray, float]]:
    """Masks (original size, bool) with their predicted IoU, best first, at most MAX_DETECTIONS."""
    height, width = embedding.original_size
    points = grid_points(settings.everything_points_per_side, height, width)
    kept_logits, kept_scores = [], []
    for start in range(0, len(points), POINTS_PER_BATCH):
        logits, scores = segmenter.point_candidates(embedding, points[start:start + POINTS_PER_BATCH])
        logits, scores = logits.flatten(0, 1), scores.flatten()
        good = (scores >= settings.everything_iou_threshold) & (
            calculate_stability_score(logits, 0.0, STABILITY_OFFSET) >= settings.everything_stability_threshold)
        kept_logits.append(logits[good])
        kept_scores.append(scores[good])
    logits, scores = torch.cat(kept_logits), torch.cat(kept_scores)
    order = torch.argsort(scores, descending=True)
    found: list[tuple[np.ndarray, float]] = []
    min_area = MIN_AREA_FRACTION * height * width
    with torch.inference_mode():
        for index in order.tolist():
            mask = (segmenter.upscale(logits[index][None, None], embedding)[0, 0] > 0).cpu().numpy()
            area = int(mask.sum())
            if area < min_area or any(_iou(mask, area, other) > DUPLICATE_IOU for other, _ in found):
                continue
            found.append((mask, float(scores[index])))
            if len(found) >= settings.max_detections:
                break
    return found


def _iou(mask: np.ndarray, area: int, other: np.ndarray) -> float:
    inter = int(np.logical_and(mask, other).sum())
    return inter / max(1, area + int(other.sum()) - inter)
