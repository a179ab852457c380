"""OWLv2: OWL-ViT's prompting, but boxes are relative to the image padded to a square."""

from __future__ import annotations

from . import owl
from .owl import accelerate, inputs

MODEL_TYPES = ("owlv2",)
__all__ = ["MODEL_TYPES", "accelerate", "boxes", "inputs"]


def boxes(processor, output, model_inputs, prompts: list[str], threshold: float, size: tuple[int, int]):
    return owl.boxes(processor, output, model_inputs, prompts, threshold, (max(size),) * 2)
