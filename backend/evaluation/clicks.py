"""The standard automatic click protocol (RITM / SAM papers) and the prompts it becomes in Label Studio.

First click: the interior point farthest from the object boundary. Each next click: the point farthest
from the boundary of the larger error (false negatives -> a positive click, false positives -> a
negative click). Pixels marked `ignore` (GrabCut's uncertain band) count neither way.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Click:
    x: int
    y: int
    positive: bool


def _farthest_inside(region: np.ndarray) -> tuple[int, int, float]:
    """The pixel of `region` farthest from its border (padded so the image edge counts as border)."""
    padded = np.pad(region.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x), int(y), float(distance[y, x])


def next_click(prediction: np.ndarray | None, truth: np.ndarray, ignore: np.ndarray | None = None) -> Click | None:
    """The next click for `prediction` against `truth`; None when there is no error left."""
    valid = ~ignore if ignore is not None else np.ones_like(truth, bool)
    if prediction is None:
        prediction = np.zeros_like(truth, bool)
    false_negative = truth & ~prediction & valid
    false_positive = prediction & ~truth & valid
    fn_x, fn_y, fn_depth = _farthest_inside(false_negative)
    fp_x, fp_y, fp_depth = _farthest_inside(false_positive)
    if max(fn_depth, fp_depth) <= 0:
        return None
    if fn_depth >= fp_depth:
        return Click(fn_x, fn_y, True)
    return Click(fp_x, fp_y, False)


def mask_iou(prediction: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None) -> float:
    valid = ~ignore if ignore is not None else np.ones_like(truth, bool)
    union = ((prediction | truth) & valid).sum()
    return float(((prediction & truth) & valid).sum() / union) if union else 1.0


def keypoint_item(click: Click, width: int, height: int, label: str, from_name: str = "kp") -> dict:
    """A click as Label Studio sends it in an interactive context (percent coordinates of the pixel centre)."""
    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": (click.x + 0.5) * 100 / width, "y": (click.y + 0.5) * 100 / height, "width": 0.5,
                  "keypointlabels": [label]},
        "is_positive": click.positive, "from_name": from_name, "to_name": "image", "type": "keypointlabels",
    }


def rectangle_item(box: tuple[int, int, int, int], width: int, height: int, label: str,
                   from_name: str = "rect") -> dict:
    x0, y0, x1, y1 = box
    return {
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": x0 * 100 / width, "y": y0 * 100 / height, "width": (x1 - x0) * 100 / width,
                  "height": (y1 - y0) * 100 / height, "rotation": 0, "rectanglelabels": [label]},
        "from_name": from_name, "to_name": "image", "type": "rectanglelabels",
    }
