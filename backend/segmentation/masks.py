"""Masks as Label Studio results: BrushLabels RLE (label-studio-sdk's format) or simplified polygons."""

from __future__ import annotations

import uuid

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from backend.core.label_config import OutputControl
from backend.segmentation import brush_rle

MIN_POLYGON_AREA = 16  # pixels; smaller specks are left out of polygon output


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The tight box (x0, y0, x1, y1) of a non-empty mask, x1/y1 exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def padded_low_res_target(mask: np.ndarray, input_size: tuple[int, int], frame: int) -> np.ndarray:
    """A mask in SAM's 256x256 decoder output frame: resized like the image (long side to `frame`), padded at
    the bottom right, quartered. Float in [0, 1]: the fine-tuning target of SAM and SAM-HQ."""
    height, width = input_size
    resized = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((frame, frame), np.float32)
    padded[:height, :width] = resized
    return cv2.resize(padded, (frame // 4, frame // 4), interpolation=cv2.INTER_AREA)


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE of a 2-D mask (any truthy pixel is inside): label-studio-sdk's `mask2rle`
    bytes, packed with numpy (brush_rle.py; tested equal)."""
    return brush_rle.encode(mask)


def rle_to_mask(rle: list[int], height: int, width: int) -> np.ndarray:
    """The bool mask a brush RLE encodes (inverse of mask_to_rle)."""
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3] > 0


def mask_to_polygons(mask: np.ndarray, epsilon: float) -> list[list[list[float]]]:
    """Outer outlines of the mask's parts, simplified by `epsilon` pixels, as [[x %, y %], ...], largest first.

    The outline runs along the pixels' outer edges (corner coordinates), not through the edge pixels'
    centres, so a polygon covers the mask's full width (half a pixel more on each side). Label Studio's
    polygons have no holes: a hole inside a part is filled (brush output keeps holes)."""
    height, width = mask.shape
    padded = np.pad(mask.astype(bool), 1)
    corners = padded[:-1, :-1] | padded[1:, :-1] | padded[:-1, 1:] | padded[1:, 1:]  # (H+1, W+1) pixel corners
    contours, _ = cv2.findContours(corners.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        if cv2.contourArea(contour) < MIN_POLYGON_AREA:
            continue
        simplified = cv2.approxPolyDP(contour, epsilon, closed=True).reshape(-1, 2)
        if len(simplified) < 3:
            continue
        polygons.append([[float(x) * 100.0 / width, float(y) * 100.0 / height] for x, y in simplified])
    return polygons


def centre_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The outer outline of every part of a mask through its edge pixels' centres (pixel i's centre is i + 0.5),
    as N x 2 float pixel coordinates, largest part first, unsimplified. A loader that scales them and fills the
    polygon with integer (truncated) vertices, as Ultralytics and supervision do, gets the part's pixels back
    exactly (holes filled). A part of one pixel, or one pixel wide, is a degenerate outline, kept."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    outlines = []
    for contour in sorted(contours, key=lambda c: (cv2.contourArea(c), len(c)), reverse=True):
        points = contour.reshape(-1, 2).astype(np.float64) + 0.5
        while len(points) < 3:  # a point or a line: repeat its vertices (formats want three points)
            points = np.concatenate([points, points[:1]])
        outlines.append(points)
    return outlines


def polygon_to_mask(points: np.ndarray, height: int, width: int, supersample: int = 4) -> np.ndarray:
    """The pixels a polygon ([[x %, y %], ...]) covers at least half of (the inverse of mask_to_polygons)."""
    canvas = np.zeros((height * supersample, width * supersample), np.uint8)
    scaled = np.round(points * (width * supersample / 100, height * supersample / 100)).astype(np.int32)
    cv2.fillPoly(canvas, [scaled], 1)
    return canvas.reshape(height, supersample, width, supersample).mean((1, 3)) >= 0.5


def mask_results(
    mask: np.ndarray, score: float, control: OutputControl, label: str, polygon_epsilon: float = 1.5
) -> list[dict]:
    """The result items (regions) of one mask: one brush region, or one polygon region per part."""
    height, width = mask.shape
    base = {
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "readonly": False,
        "score": float(score),
    }
    if control.tag == "BrushLabels":
        value = {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}
        return [{"id": uuid.uuid4().hex[:10], **base, "value": value}]
    return [
        {"id": uuid.uuid4().hex[:10], **base, "value": {"points": points, "closed": True, "polygonlabels": [label]}}
        for points in mask_to_polygons(mask, polygon_epsilon)
    ]


def region_mask(result: dict, height: int, width: int) -> np.ndarray:
    """The mask of one brush (RLE) or polygon result (the inverse of `mask_results`); ValueError saying
    why it cannot be used."""
    value = result.get("value") or {}
    size = (result.get("original_height"), result.get("original_width"))
    if size != (height, width):
        raise ValueError(f"annotated at {size[1]}x{size[0]} but the image is {width}x{height}")
    if result.get("type") == "brushlabels" and value.get("format") == "rle":
        try:
            mask = rle_to_mask(value["rle"], height, width)
        except Exception as exc:  # the SDK decoder raises plain errors on a truncated RLE
            raise ValueError(f"undecodable RLE ({exc})")
    elif result.get("type") == "polygonlabels":
        points = np.array(value.get("points") or [], np.float64)
        if points.ndim != 2 or len(points) < 3:
            raise ValueError("polygon with fewer than 3 points")
        mask = polygon_to_mask(points, height, width)
    else:
        raise ValueError(f"not a brush or polygon region ({result.get('type')})")
    if not mask.any():
        raise ValueError("empty mask")
    return mask
