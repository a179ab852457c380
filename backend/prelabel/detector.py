"""Text-grounded detection (OWLv2 or Grounding DINO from transformers): category prompts in, boxes out.

All prompts of an image go through one forward pass (OWLv2 takes them as a list of queries,
Grounding DINO as one "a. b. c." caption). The model comes from DETECTOR_MODEL: a hub id or a
folder saved with save_pretrained.
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


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels
    score: float
    prompt: int  # index into the prompts asked for


class _VisionOutputs(torch.nn.Module):
    """What the ONNX export of an OWL vision tower computes: its last hidden state and pooled output."""

    def __init__(self, vision: torch.nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.vision(pixel_values=pixels)
        return output.last_hidden_state, output.pooler_output


def vision_runtime(model, runtime: str, folder: Path, device) -> str:
    """OWLv2 / OWL-ViT: run the vision tower (almost all of a detection's cost) through ENCODER_RUNTIME; the text
    tower and the box / class heads stay in PyTorch. Returns the runtime in use ("onnx" or "torch")."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    from backend.segmentation.encoder_runtime import ExportShape, choose_encoder
    from backend.segmentation.sam import weights_fingerprint

    vision = model.base_model.vision_model
    size = int(model.config.vision_config.image_size)
    shape = ExportShape((1, 3, size, size), ("last_hidden_state", "pooler_output"))
    fingerprint = f"{model.config.model_type}-vision-{weights_fingerprint(vision)}"
    runner = choose_encoder(_VisionOutputs(vision), fingerprint, runtime, folder, device, shape)
    if isinstance(runner, torch.nn.Module):
        return "torch"
    eager = vision.forward

    def forward(pixel_values=None, output_attentions=None, output_hidden_states=None, interpolate_pos_encoding=False,
                return_dict=None, **kwargs):
        if output_attentions or output_hidden_states or interpolate_pos_encoding or \
                tuple(pixel_values.shape) != shape.input:  # what the export does not cover
            return eager(pixel_values=pixel_values, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_dict=return_dict, **kwargs)
        hidden, pooled = runner(pixel_values)
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=pooled)

    vision.forward = forward
    return "onnx"


class TextDetector:
    def __init__(self, name: str, device: str = "cpu", runtime: str = "torch", onnx_dir: str = ""):
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
        self.runtime = "torch"
        if self.kind.startswith("owl") and runtime != "torch":
            self.runtime = vision_runtime(self.model, runtime, Path(onnx_dir), self.device)
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
