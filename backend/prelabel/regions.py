"""What every pre-labeling route returns: labeled, scored masks, and the prediction they make."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.core.label_config import OutputControl
from backend.segmentation.masks import mask_results


@dataclass
class Region:
    control: OutputControl  # the BrushLabels / PolygonLabels control the region belongs to
    label: str
    mask: np.ndarray  # (height, width) bool, the image as displayed
    score: float


def prediction(regions: list[Region], model_version: str, polygon_epsilon: float) -> dict:
    """A Label Studio prediction: one brush region (or one polygon per part) per non-empty mask, and the mean
    score."""
    regions = [region for region in regions if region.mask.any()]
    items = [item for r in regions for item in mask_results(r.mask, r.score, r.control, r.label, polygon_epsilon)]
    return {"result": items, "score": float(np.mean([r.score for r in regions])) if regions else 0.0,
            "model_version": model_version}
