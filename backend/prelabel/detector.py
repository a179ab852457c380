"""Text-grounded detection (OWLv2 or Grounding DINO from transformers): category prompts in, boxes out.

All prompts of an image go through one forward pass (OWLv2 takes them as a list of queries,
Grounding DINO as one "a. b. c." caption). The model comes from DETECTOR_MODEL: a hub id or a
folder saved with save_pretrained.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, resolve_device


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    prompt: int  # index into the prompts asked for


class TextDetector:
    def __init__(self, name: str, device: str = "cpu"):
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        def load(path: str):
            return AutoProcessor.from_pretrained(path), AutoModelForZeroShotObjectDetection.from_pretrained(path).eval()

        self.processor, self.model = from_pretrained(
            load, name, "detector", "DETECTOR_MODEL",
            "google/owlv2-base-patch16-ensemble or IDEA-Research/grounding-dino-tiny")
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.name = name
        self.kind = self.model.config.model_type  # "owlv2", "owlvit", "grounding-dino", ...
        self._lock = threading.Lock()

    def _inputs(self, image: np.ndarray, prompts: list[str]):
        if self.kind.startswith("owl"):
            return self.processor(text=[prompts], images=image, return_tensors="pt", padding="max_length",
                                  truncation=True)
        caption = " ".join(p.rstrip(".").lower() + "." for p in prompts)
        return self.processor(text=caption, images=image, return_tensors="pt")

    def _prompt_index(self, label, prompts: list[str]) -> int | None:
        if isinstance(label, str):  # Grounding DINO answers the matched phrase
            text = label.strip().lower()
            for index, prompt in enumerate(prompts):
                if prompt.rstrip(".").lower() == text:
                    return index
            for index, prompt in enumerate(prompts):
                if text and (text in prompt.lower() or prompt.lower() in text):
                    return index
            return None
        return int(label)

    def detect(self, image: np.ndarray, prompts: list[str], threshold: float) -> list[Detection]:
        """Detections of any prompt with score >= threshold, boxes clipped to the image."""
        import torch

        if not prompts:
            return []
        height, width = image.shape[:2]
        inputs = self._inputs(image, prompts).to(self.device)
        with self._lock, torch.inference_mode():
            output = self.model(**inputs)
        # OWLv2 pads images to a square before predicting: its boxes are relative to that square
        size = (max(height, width),) * 2 if self.kind == "owlv2" else (height, width)
        if self.kind.startswith("owl"):
            found = self.processor.post_process_grounded_object_detection(
                output, threshold=threshold, target_sizes=[size], text_labels=[prompts])[0]
            labels = found["labels"].tolist()
        else:
            found = self.processor.post_process_grounded_object_detection(
                output, inputs.input_ids, threshold=threshold, text_threshold=threshold, target_sizes=[size])[0]
            labels = found.get("text_labels") or found["labels"]
        detections = []
        for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), labels, strict=True):
            index = self._prompt_index(label, prompts)
            x0, y0, x1, y1 = (min(max(v, 0.0), limit) for v, limit in zip(box, (width, height) * 2, strict=True))
            if index is None or x1 - x0 < 1 or y1 - y0 < 1:
                continue
            detections.append(Detection((x0, y0, x1, y1), float(score), index))
        return detections


_detectors: ModelCache[TextDetector] = ModelCache(TextDetector)


def get_detector(name: str, device: str = "cpu") -> TextDetector:
    return _detectors.get(name, device)


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
