"""Text-grounded detection (OWLv2, OmDet-Turbo or Grounding DINO from transformers): category prompts in, boxes
out. All prompts of an image go through one forward pass; how each family is prompted lives in
`prelabel/detectors/`. The model comes from DETECTOR_MODEL: a hub id or a folder saved with save_pretrained.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, resolve_device
from backend.prelabel.detectors import family_for


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    prompt: int  # index into the prompts asked for


class TextDetector:
    """A detector of DETECTOR_MODEL's family (prelabel/detectors/): all prompts of an image in one forward pass."""

    def __init__(self, name: str, device: str = "cpu", runtime: str = "torch", onnx_dir: str = ""):
        def load(path: str):
            from transformers import AutoConfig

            family = family_for(AutoConfig.from_pretrained(path).model_type)
            return (family, *family.load(path))

        self.family, self.processor, self.model = from_pretrained(
            load, name, "detector", "DETECTOR_MODEL",
            "google/owlv2-base-patch16-ensemble, omlab/omdet-turbo-swin-tiny-hf or IDEA-Research/grounding-dino-tiny")
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.name = name
        self.kind = self.model.config.model_type  # "owlv2", "omdet-turbo", "grounding-dino", ...
        self.runtime = "torch"
        if self.family.accelerate is not None and runtime != "torch":
            self.runtime = self.family.accelerate(self.model, runtime, Path(onnx_dir), self.device)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, prompts: list[str], threshold: float) -> list[Detection]:
        """Detections of any prompt with score >= threshold, boxes clipped to the image."""
        if not prompts:
            return []
        height, width = image.shape[:2]
        inputs = self.family.inputs(self.processor, image, prompts)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with self._lock, torch.inference_mode():
            output = self.model(**inputs)
        found = self.family.boxes(self.processor, output, inputs, prompts, threshold, (height, width))
        detections = []
        for box, score, index in found:
            x0, y0, x1, y1 = (min(max(v, 0.0), limit) for v, limit in zip(box, (width, height) * 2, strict=True))
            if index is None or x1 - x0 < 1 or y1 - y0 < 1:
                continue
            detections.append(Detection((x0, y0, x1, y1), float(score), int(index)))
        return detections


_detectors: ModelCache[TextDetector] = ModelCache(TextDetector)


def get_detector(name: str, device: str = "cpu", runtime: str = "torch", onnx_dir: str = "") -> TextDetector:
    """The detector, loaded once per process; `runtime` (ENCODER_RUNTIME) for OWL vision towers, whose ONNX
    exports go to `onnx_dir` (MODEL_DIR/onnx)."""
    return _detectors.get(name, device, runtime, onnx_dir)


def non_max_suppression(detections: list[Detection], iou_threshold: float = 0.5,
                        group: Callable[[Detection], object] = lambda d: d.prompt) -> list[Detection]:
    """Greedy NMS within each group (default: per prompt; pre-labeling groups by label), best score first."""
    kept: list[Detection] = []
    for detection in sorted(detections, key=lambda d: -d.score):
        if all(group(d) != group(detection) or box_iou(d.box, detection.box) < iou_threshold for d in kept):
            kept.append(detection)
    return kept


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
