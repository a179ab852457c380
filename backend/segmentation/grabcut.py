"""OpenCV GrabCut seeded by clicks and/or a box: the engine that needs no weights (and the quality baseline)."""

from __future__ import annotations

import cv2
import numpy as np

from backend.segmentation.prompts import Prompt
from backend.segmentation.segmenter import Embedding, MaskResult


class GrabCutSegmenter:
    """Classical colour-model segmentation. Its "embedding" is the image scaled to `max_side`.

    A box marks everything outside it as background; a positive click marks a small disk as sure
    foreground and a wider disk around it as probable foreground; a negative click a small disk as
    sure background. The result keeps the connected parts that hold a positive seed. GrabCut has no
    confidence of its own: the score is `boundary_contrast` (how different the mask's colours are from a
    ring around it), near 1 for an object that stands out, near 0 for a cut through one uniform region.
    """

    name = "grabcut"
    fingerprint = "grabcut-opencv"

    def __init__(self, max_side: int = 512, iterations: int = 5):
        self.max_side = max_side
        self.iterations = iterations

    def embed(self, image: np.ndarray) -> Embedding:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image.copy()
        return Embedding(np.ascontiguousarray(small), original_size=(height, width), input_size=small.shape[:2])

    def _seeds(self, embedding: Embedding, prompt: Prompt) -> np.ndarray:
        h, w = embedding.input_size
        scale = h / embedding.original_size[0]
        seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        if prompt.box is not None:
            x0, y0, x1, y1 = np.round(prompt.box * scale).astype(int)
            seeds[:] = cv2.GC_BGD
            seeds[max(y0, 0) : max(y1, y0 + 1), max(x0, 0) : max(x1, x0 + 1)] = cv2.GC_PR_FGD
        near, sure = max(3, round(0.15 * min(h, w))), max(2, round(0.02 * min(h, w)))
        clicks = list(zip(np.round(prompt.points * scale).astype(int), prompt.labels, strict=True))
        for (x, y), positive in clicks:
            if positive and prompt.box is None:
                cv2.circle(seeds, (int(x), int(y)), near, cv2.GC_PR_FGD, -1)
        for (x, y), positive in clicks:
            cv2.circle(seeds, (int(x), int(y)), sure, cv2.GC_FGD if positive else cv2.GC_BGD, -1)
        return seeds

    def decode(self, embedding: Embedding, prompt: Prompt, mask_input: np.ndarray | None = None) -> MaskResult:
        seeds = self._seeds(embedding, prompt)
        labels = seeds.copy()
        if (labels == cv2.GC_BGD).all() or not np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).any():
            small = np.zeros(labels.shape, bool)
        else:
            bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
            try:
                cv2.grabCut(embedding.features, labels, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
            except cv2.error:  # a degenerate colour model (e.g. a flat image): keep the seeds
                pass
            small = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD))
            small = self._keep_seeded_components(small, seeds)
        score = boundary_contrast(embedding.features, small)
        height, width = embedding.original_size
        mask = cv2.resize(small.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
        return MaskResult(mask=mask, score=score)

    @staticmethod
    def _keep_seeded_components(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        count, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        sure = components[(seeds == cv2.GC_FGD) & mask]
        if count <= 2 or sure.size == 0:
            return mask
        return np.isin(components, np.unique(sure[sure > 0]))


def boundary_contrast(image: np.ndarray, mask: np.ndarray, bins: int = 8) -> float:
    """1 - the Bhattacharyya overlap of the colour histograms inside `mask` and in a ring just outside it
    (as wide as 5 % of the mask's size): 0 for no mask or identical colours, 1 for disjoint colours."""
    if not mask.any() or mask.all():
        return 0.0
    ys, xs = np.nonzero(mask)
    width = max(2, round(0.05 * max(np.ptp(ys), np.ptp(xs))))
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((2 * width + 1, 2 * width + 1), np.uint8)).astype(bool) & ~mask
    if not ring.any():
        return 0.0
    ranges, sizes = [0, 256] * 3, [bins] * 3
    inside = cv2.calcHist([image], [0, 1, 2], mask.astype(np.uint8), sizes, ranges)
    around = cv2.calcHist([image], [0, 1, 2], ring.astype(np.uint8), sizes, ranges)
    return float(np.clip(cv2.compareHist(inside, around, cv2.HISTCMP_BHATTACHARYYA), 0.0, 1.0))
